//! The 8250 UART on COM1 (vm-superio's model) with its interrupt delivered through an
//! irqfd, so the guest's serial driver runs interrupt-driven.

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::console::ConsoleSink;
use crate::devices::bus::BusDevice;

/// Raises a guest interrupt by writing to an eventfd registered as a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// COM1, with its output going to a [`ConsoleSink`].
pub struct Serial {
    inner: vm_superio::Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl Serial {
    pub fn new(irq: EventFd, out: ConsoleSink) -> Self {
        Self {
            inner: vm_superio::Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Writes out what the guest printed last without a newline.
    pub fn finish(&mut self) {
        let _ = self.inner.writer_mut().finish();
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn save(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in a saved state, writing to a new console (the restored pod's log). A
    /// pending interrupt is raised again.
    pub fn restore(
        saved: &SerialSnapshot,
        irq: EventFd,
        out: ConsoleSink,
    ) -> Result<Self, SerialRestoreError> {
        let state = SerialState {
            baud_divisor_low: saved.baud_divisor_low,
            baud_divisor_high: saved.baud_divisor_high,
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        let inner = vm_superio::Serial::from_state(
            &state,
            IrqTrigger(irq),
            vm_superio::serial::NoEvents,
            out,
        )
        .map_err(|e| SerialRestoreError(format!("{e:?}")))?;
        Ok(Self { inner })
    }
}

/// The 8250's state (vm-superio's `SerialState`, which is not serde, field for field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Bytes received and not yet read by the guest (at most the 64-byte FIFO).
    pub in_buffer: Vec<u8>,
}

/// A saved UART state vm-superio refuses (a receive FIFO over 64 bytes).
#[derive(Debug, thiserror::Error)]
#[error("Invalid saved serial port state: {0}")]
pub struct SerialRestoreError(String);

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(offset)) => data[0] = self.inner.read(offset),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            if let Err(e) = self.inner.write(offset, *byte) {
                tracing::debug!("serial write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::GuestPanic;

    #[test]
    fn transmit_raises_interrupt_when_enabled() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(
            irq.try_clone().unwrap(),
            ConsoleSink::new(None, GuestPanic::default()),
        );
        // IER: enable THR-empty interrupts.
        s.write(1, &[0x02]);
        // The driver acknowledges by reading IIR; then a transmit raises a new interrupt.
        let mut iir = [0u8];
        s.read(2, &mut iir);
        irq.read().ok();
        s.write(0, b"A");
        assert_eq!(irq.read().unwrap(), 1);
        // LSR reports the transmitter empty.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Multi-byte accesses are not UART accesses.
        let mut two = [0u8; 2];
        s.read(0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
    }

    #[test]
    fn state_survives_a_snapshot() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = || ConsoleSink::new(None, GuestPanic::default());
        let mut s = Serial::new(irq.try_clone().unwrap(), sink());
        // Divisor latch on, divisor 3, latch off with 8N1; scratch; THR interrupt on.
        s.write(3, &[0x80]);
        s.write(0, &[3]);
        s.write(3, &[0x03]);
        s.write(7, &[0x5a]);
        s.write(1, &[0x02]);
        let saved = s.save();
        let json = serde_json::to_string(&saved).unwrap();
        let back: SerialSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, saved);
        irq.read().ok();
        let new_irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut r = Serial::restore(&back, new_irq.try_clone().unwrap(), sink()).unwrap();
        let reg = |r: &mut Serial, off| {
            let mut b = [0u8];
            r.read(off, &mut b);
            b[0]
        };
        assert_eq!(reg(&mut r, 7), 0x5a);
        assert_eq!(reg(&mut r, 3), 0x03);
        assert_eq!(reg(&mut r, 1), 0x02);
        // The THR-empty interrupt that was pending is raised again on the new line.
        assert_eq!(new_irq.read().unwrap(), 1);
        // A FIFO longer than the hardware's is refused.
        let mut bad = saved;
        bad.in_buffer = vec![0; 65];
        assert!(Serial::restore(&bad, new_irq, sink()).is_err());
    }
}
