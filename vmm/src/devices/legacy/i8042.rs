//! The i8042 controller's CPU reset line: the guest kernel (booted with `reboot=k`) resets
//! the machine by writing 0xfe to port 0x64, which is how a husk guest powers off.

use std::sync::mpsc::Sender;

use vm_superio::Trigger;

use crate::devices::bus::BusDevice;
use crate::vm::VmEvent;

/// Sends [`VmEvent::Reset`] to the VM's run loop.
pub struct ResetTrigger(pub Sender<VmEvent>);

impl Trigger for ResetTrigger {
    type E = std::sync::mpsc::SendError<VmEvent>;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.send(VmEvent::Reset)
    }
}

pub struct I8042 {
    inner: vm_superio::I8042Device<ResetTrigger>,
}

impl I8042 {
    pub fn new(events: Sender<VmEvent>) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(ResetTrigger(events)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |o| self.inner.read(o));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            // A send fails only if the run loop is gone, i.e. the VM is already stopping.
            let _ = self.inner.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut dev = I8042::new(tx);
        dev.write(0, &[0xfe]);
        assert!(rx.try_recv().is_err(), "data port write is not a reset");
        dev.write(4, &[0xaa]);
        assert!(rx.try_recv().is_err());
        dev.write(4, &[0xfe]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Reset)));
    }
}
