//! Placing virtio devices: one 4 KiB MMIO window and one IOAPIC pin each, their queue
//! notifications wired to KVM ioeventfds and their interrupt to a KVM irqfd, announced to
//! the guest on the kernel command line (`virtio_mmio.device=4K@<base>:<irq>`), and their
//! event handling added to the VMM's event loop.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::bus::{Bus, BusError};
use super::virtio::mmio::{MmioTransport, MMIO_LEN, NOTIFY_OFFSET};
use super::virtio::{IrqTrigger, VirtioDevice};
use crate::arch::x86_64::layout;

/// The event loop's subscriber type: every device, behind its mutex.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// First IOAPIC pin for virtio devices (0-4 are the PIT, keyboard, cascade and COM ports).
const FIRST_IRQ: u32 = 5;

/// Errors placing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("Too many devices: no IOAPIC pin is left")]
    NoIrq,
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("Cannot register an irqfd with KVM")]
    Irqfd(#[source] kvm_ioctls::Error),
    #[error("Cannot register an ioeventfd with KVM")]
    Ioeventfd(#[source] kvm_ioctls::Error),
    #[error("Cannot place the device on the MMIO bus")]
    Bus(#[from] BusError),
    #[error("Cannot start the event loop")]
    EventManager(#[source] event_manager::Error),
}

/// Places devices one after another from the start of the MMIO gap.
pub struct DeviceManager {
    next_base: u64,
    next_irq: u32,
    cmdline: Vec<String>,
    pub mmio: Bus,
    pub event_manager: EventManager<Subscriber>,
}

impl DeviceManager {
    pub fn new() -> Result<Self, DeviceManagerError> {
        Ok(Self {
            next_base: layout::MMIO_GAP_START,
            next_irq: FIRST_IRQ,
            cmdline: Vec::new(),
            mmio: Bus::new(),
            event_manager: EventManager::new().map_err(DeviceManagerError::EventManager)?,
        })
    }

    /// Adds one virtio device: MMIO window, interrupt, ioeventfds, event-loop subscription.
    pub fn add_virtio<D>(
        &mut self,
        vm_fd: &VmFd,
        mem: &GuestMemoryMmap,
        device: D,
    ) -> Result<(), DeviceManagerError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        if self.next_irq >= u32::from(layout::IOAPIC_PINS) {
            return Err(DeviceManagerError::NoIrq);
        }
        let (base, irq) = (self.next_base, self.next_irq);
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm_fd
            .register_irqfd(&irq_evt, irq)
            .map_err(DeviceManagerError::Irqfd)?;
        for (i, evt) in device.queue_events().iter().enumerate() {
            vm_fd
                .register_ioevent(evt, &IoEventAddress::Mmio(base + NOTIFY_OFFSET), i as u32)
                .map_err(DeviceManagerError::Ioeventfd)?;
        }
        let device = Arc::new(Mutex::new(device));
        let transport = MmioTransport::new(
            device.clone(),
            mem.clone(),
            Arc::new(IrqTrigger::new(irq_evt)),
        );
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_LEN)?;
        self.event_manager.add_subscriber(device);
        self.cmdline.push(mmio_cmdline(base, irq));
        self.next_base += MMIO_LEN;
        self.next_irq += 1;
        Ok(())
    }

    /// The command line fragment announcing every device placed so far.
    pub fn cmdline(&self) -> String {
        self.cmdline.join(" ")
    }
}

fn mmio_cmdline(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_format() {
        assert_eq!(
            mmio_cmdline(0xc000_1000, 6),
            "virtio_mmio.device=4K@0xc0001000:6"
        );
    }
}
