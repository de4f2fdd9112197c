//! Placing virtio devices: one 4 KiB MMIO window and one IOAPIC pin each, their queue
//! notifications wired to KVM ioeventfds and their interrupt to a KVM irqfd, announced to
//! the guest on the kernel command line (`virtio_mmio.device=4K@<base>:<irq>`), and their
//! event handling added to the VMM's event loop. The n-th device always gets the same
//! window and pin ([`placement`]), which is what lets a snapshot's devices be put back.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::bus::{Bus, BusError};
use super::virtio::mmio::{MmioTransport, TransportRestoreError, MMIO_LEN, NOTIFY_OFFSET};
use super::virtio::state::DeviceSnapshot;
use super::virtio::{IrqTrigger, VirtioDevice};
use crate::arch::x86_64::layout;

/// The event loop's subscriber type: every device, behind its mutex.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// First IOAPIC pin for virtio devices (0-4 are the PIT, keyboard, cascade and COM ports).
const FIRST_IRQ: u32 = 5;
/// Most virtio devices: one per IOAPIC pin left.
pub const MAX_VIRTIO_DEVICES: usize = (layout::IOAPIC_PINS as u32 - FIRST_IRQ) as usize;

/// The MMIO window base and IOAPIC pin of the `index`-th virtio device.
pub fn placement(index: usize) -> (u64, u32) {
    (
        layout::MMIO_GAP_START + index as u64 * MMIO_LEN,
        FIRST_IRQ + index as u32,
    )
}

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

/// Errors putting a snapshot's devices back.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRestoreError {
    #[error("The snapshot has {saved} virtio devices, the configuration {configured}")]
    Count { saved: usize, configured: usize },
    #[error("Virtio device {index}: {reason}")]
    Mismatch { index: usize, reason: String },
    #[error("Virtio device {index} ({kind})")]
    Transport {
        index: usize,
        kind: &'static str,
        #[source]
        source: TransportRestoreError,
    },
}

/// A device placed on the bus.
struct Placed {
    base: u64,
    irq: u32,
    transport: Arc<Mutex<MmioTransport>>,
}

/// Places devices one after another from the start of the MMIO gap.
pub struct DeviceManager {
    placed: Vec<Placed>,
    cmdline: Vec<String>,
    pub mmio: Bus,
    pub event_manager: EventManager<Subscriber>,
}

impl DeviceManager {
    pub fn new() -> Result<Self, DeviceManagerError> {
        Ok(Self {
            placed: Vec::new(),
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
        if self.placed.len() >= MAX_VIRTIO_DEVICES {
            return Err(DeviceManagerError::NoIrq);
        }
        let (base, irq) = placement(self.placed.len());
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
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device.clone(),
            mem.clone(),
            Arc::new(IrqTrigger::new(irq_evt)),
        )));
        self.mmio.insert(transport.clone(), base, MMIO_LEN)?;
        self.event_manager.add_subscriber(device);
        self.cmdline.push(mmio_cmdline(base, irq));
        self.placed.push(Placed {
            base,
            irq,
            transport,
        });
        Ok(())
    }

    /// The command line fragment announcing every device placed so far.
    pub fn cmdline(&self) -> String {
        self.cmdline.join(" ")
    }

    /// Handles on the placed devices, for snapshots while the VM runs.
    pub fn devices(&self) -> PlacedDevices {
        PlacedDevices(
            self.placed
                .iter()
                .map(|p| (p.base, p.irq, p.transport.clone()))
                .collect(),
        )
    }

    /// Puts a snapshot's device states onto the devices placed from the restore's
    /// configuration, in order: the same kinds, each one able to stand in for the saved
    /// one (see `DeviceIdentity::mismatch`), then each transport restored (which
    /// activates the devices the guest had started).
    pub fn restore(&self, saved: &[DeviceSnapshot]) -> Result<(), DeviceRestoreError> {
        if saved.len() != self.placed.len() {
            return Err(DeviceRestoreError::Count {
                saved: saved.len(),
                configured: self.placed.len(),
            });
        }
        for (index, (s, p)) in saved.iter().zip(&self.placed).enumerate() {
            let identity = lock(&p.transport).identity();
            if let Some(reason) = identity.mismatch(&s.identity) {
                return Err(DeviceRestoreError::Mismatch { index, reason });
            }
            if (s.mmio_base, s.irq) != (p.base, p.irq) {
                return Err(DeviceRestoreError::Mismatch {
                    index,
                    reason: format!("saved at {:#x} irq {}", s.mmio_base, s.irq),
                });
            }
        }
        for (index, (s, p)) in saved.iter().zip(&self.placed).enumerate() {
            let mut t = lock(&p.transport);
            t.restore(&s.transport)
                .map_err(|source| DeviceRestoreError::Transport {
                    index,
                    kind: s.identity.kind(),
                    source,
                })?;
            t.after_restore(&s.identity);
        }
        Ok(())
    }
}

/// The placed devices, shared with the bus.
pub struct PlacedDevices(Vec<(u64, u32, Arc<Mutex<MmioTransport>>)>);

impl PlacedDevices {
    /// Every device's state, with the VM paused; an error names the device that cannot be
    /// saved now and why.
    pub fn save(&self) -> Result<Vec<DeviceSnapshot>, String> {
        self.0
            .iter()
            .enumerate()
            .map(|(index, (base, irq, t))| {
                let t = lock(t);
                let identity = t.identity();
                let transport = t
                    .save()
                    .map_err(|e| format!("virtio device {index} ({}): {e}", identity.kind()))?;
                Ok(DeviceSnapshot {
                    identity,
                    mmio_base: *base,
                    irq: *irq,
                    transport,
                })
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn lock(t: &Arc<Mutex<MmioTransport>>) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|e| e.into_inner())
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

    #[test]
    fn placement_is_fixed_per_index() {
        assert_eq!(placement(0), (layout::MMIO_GAP_START, 5));
        assert_eq!(placement(2), (layout::MMIO_GAP_START + 0x2000, 7));
        let (_, last) = placement(MAX_VIRTIO_DEVICES - 1);
        assert_eq!(last, u32::from(layout::IOAPIC_PINS) - 1);
    }
}
