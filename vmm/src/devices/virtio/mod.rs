//! virtio devices over the virtio-mmio transport (virtio 1.x, modern only).
//!
//! Each device implements [`VirtioDevice`] (what the transport needs: identity, features,
//! config space, activation) and `event_manager::MutEventSubscriber` (its work on the
//! VMM's event-loop thread). Queue processing is kept in pure functions over
//! `virtio_queue::Queue` and guest memory so it is unit-tested with mock queues.
//!
//! Threads: a device lives in an `Arc<Mutex<_>>` shared by the MMIO transport (called on
//! vCPU threads for register accesses and [`VirtioDevice::activate`]) and the event loop
//! (one `vmm-events` thread running `event_manager::EventManager`). In `init` a device
//! registers its queue eventfds ([`VirtioDevice::queue_events`]; KVM signals them through
//! ioeventfds on QueueNotify, with the queue index as datamatch) and its backend fds; it
//! ignores queue events until activated. A device that must register more fds once active
//! keeps an activation eventfd of its own, written by `activate` and handled in `process`.
//! Every device serves its guest queues here, virtio-fs too (its [`fs::relay`] hands
//! virtiofsd copies, so no other process maps guest memory). No device offers
//! VIRTIO_RING_F_EVENT_IDX: every used buffer batch raises the interrupt with
//! [`IrqTrigger::trigger`]`(INT_VRING)`.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod ratelimit;
pub mod state;
#[cfg(test)]
pub(crate) mod test_queue;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// The device conforms to virtio 1.x (the only mode husk offers).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device types (virtio spec 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Device status bits (virtio spec 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits of the virtio-mmio transport.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("Queue {0} is not ready or its rings are outside guest memory")]
    BadQueue(usize),
    #[error("The device expects {expected} queues, the driver set up {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("Cannot signal the event loop")]
    EventFd(#[source] std::io::Error),
    #[error("The device backend failed: {0}")]
    Backend(String),
}

/// The interrupt line of one device: an irqfd registered with KVM on the device's GSI,
/// and the InterruptStatus register it reports (virtio-mmio interrupts are edge-triggered:
/// the guest reads the status, handles it and acknowledges the bits).
pub struct IrqTrigger {
    status: Arc<AtomicU32>,
    evt: EventFd,
}

impl IrqTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            evt,
        }
    }

    /// Sets `bit` in InterruptStatus and raises the line.
    pub fn trigger(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // The irqfd's counter cannot overflow in practice (KVM drains it); a failed write
        // would only lose an interrupt, which the next one recovers.
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("cannot raise a virtio interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// After a restore: the InterruptStatus the guest had not acknowledged, raised again
    /// (an interrupt the guest already took shows up as a spurious one, which drivers
    /// tolerate; one it had not taken is not lost).
    pub fn restore_status(&self, bits: u32) {
        if bits != 0 {
            self.trigger(bits);
        }
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.evt
    }

    /// A trigger whose eventfd nobody listens to (unit tests).
    #[cfg(test)]
    pub fn for_tests() -> Arc<Self> {
        Arc::new(Self::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
    }
}

/// A queue's state in guest memory, for the SIGUSR1 dumps: the driver's and the device's
/// ring indices, flags and event indices (an entry that cannot be read shows its error).
pub fn describe_queue(mem: &GuestMemoryMmap, q: &Queue) -> String {
    let size = u64::from(q.size());
    let word = |addr: u64| {
        mem.read_obj::<u16>(GuestAddress(addr))
            .map_or_else(|e| format!("({e})"), |v| v.to_string())
    };
    format!(
        "avail_idx={} used_idx={} avail_flags={} used_event={} used_flags={} avail_event={}",
        word(q.avail_ring() + 2),
        word(q.used_ring() + 2),
        word(q.avail_ring()),
        word(q.avail_ring() + 4 + 2 * size),
        word(q.used_ring()),
        word(q.used_ring() + 4 + 8 * size)
    )
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    /// One per queue the device declared, configured by the driver.
    pub queues: Vec<Queue>,
    pub irq: Arc<IrqTrigger>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device as the transport sees it.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Features offered (always including [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;
    /// The largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue, signalled when the driver notifies that queue (KVM signals it
    /// directly through an ioeventfd on the QueueNotify register).
    fn queue_events(&self) -> &[EventFd];
    /// Reads the device-specific config space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the config space (most husk devices have a read-only one).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the queues the driver configured.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the device after the driver reset it. Returns false if the device cannot be
    /// reset once active (the transport then reports DEVICE_NEEDS_RESET).
    fn reset(&mut self) -> bool {
        false
    }

    /// Which device this is, as a snapshot records it.
    fn identity(&self) -> state::DeviceIdentity;

    /// For a snapshot of the paused VM (no vCPU runs, the event loop is parked): the
    /// queues as the active device has advanced them (the transport's copies stay as the
    /// driver configured them). An error says why the device cannot be saved now.
    fn snapshot_queues(&self) -> Result<Vec<QueueState>, String>;

    /// After a restore activated the device with its saved queues: what a fresh
    /// activation does not do. By default, one notification per queue, so that buffers the
    /// guest made available before the snapshot are seen.
    fn restored(&mut self) {
        for evt in self.queue_events() {
            if let Err(e) = evt.write(1) {
                tracing::warn!("cannot notify a restored queue: {e}");
            }
        }
    }
}

/// Copies `data` (a little-endian config structure) into `out` from `offset`, zero past
/// its end: the common shape of `read_config`.
pub fn read_config_bytes(config: &[u8], offset: u64, out: &mut [u8]) {
    out.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = out.len().min(config.len() - start);
    out[..n].copy_from_slice(&config[start..start + n]);
}

/// Checks the queues handed to `activate` against what the device declared.
pub fn check_queues(ctx: &ActivateContext, expected: usize) -> Result<(), ActivateError> {
    if ctx.queues.len() != expected {
        return Err(ActivateError::QueueCount {
            expected,
            got: ctx.queues.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;

    #[test]
    fn describe_queue_reads_the_rings_where_the_spec_puts_them() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let q: Queue = mock.create_queue().unwrap();
        let put = |addr: u64, v: u16| mem.write_obj(v, GuestAddress(addr)).unwrap();
        put(q.avail_ring(), 1);
        put(q.avail_ring() + 2, 7);
        put(q.avail_ring() + 4 + 2 * 16, 6);
        put(q.used_ring(), 1);
        put(q.used_ring() + 2, 5);
        put(q.used_ring() + 4 + 8 * 16, 7);
        assert_eq!(
            describe_queue(&mem, &q),
            "avail_idx=7 used_idx=5 avail_flags=1 used_event=6 used_flags=1 avail_event=7"
        );
    }

    #[test]
    fn config_bytes() {
        let cfg = [1u8, 2, 3, 4];
        let mut out = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 10, &mut out);
        assert_eq!(out, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }

    #[test]
    fn irq_status_and_ack() {
        let irq = IrqTrigger::for_tests();
        irq.trigger(INT_VRING);
        irq.trigger(INT_CONFIG);
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
    }
}
