//! The 8250 UART on COM1 (vm-superio's model) with its interrupt delivered through an
//! irqfd, so the guest's serial driver runs interrupt-driven.

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
}

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
}
