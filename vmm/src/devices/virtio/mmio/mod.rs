//! The virtio-mmio transport (virtio 1.2 section 4.2, version 2 "modern" register layout).
//!
//! One [`MmioTransport`] per device sits on the MMIO bus. It keeps the registers the driver
//! programs (features, queue addresses and sizes, status), hands the configured queues to
//! the device when the driver sets DRIVER_OK, and reports the device's interrupt status.
//! Queue notifications normally never reach it: KVM turns writes to QueueNotify into the
//! device's queue eventfds (ioeventfd, datamatch = queue index).

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{status, ActivateContext, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;

mod snapshot;

pub use snapshot::TransportRestoreError;

/// Size of one device's register window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of QueueNotify, where KVM's ioeventfds are registered.
pub const NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x6b73_7568; // "husk"
const CONFIG_OFFSET: u64 = 0x100;

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// One virtio device's register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    device_type: u32,
    avail_features: u64,
    features_sel: u32,
    acked_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    status: u32,
    activated: bool,
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        irq: Arc<IrqTrigger>,
    ) -> Self {
        let (device_type, avail_features, queues) = {
            let d = device.lock().unwrap_or_else(|e| e.into_inner());
            let queues = d
                .queue_max_sizes()
                .iter()
                // A max size that is not a power of two is a bug in the device, not the
                // guest's doing; such a queue is offered with size 0 (unusable).
                .map(|&max| Queue::new(max).unwrap_or_else(|_| Queue::new(1).expect("size 1")))
                .collect();
            (
                d.device_type(),
                d.avail_features() | VIRTIO_F_VERSION_1,
                queues,
            )
        };
        Self {
            device,
            mem,
            irq,
            device_type,
            avail_features,
            features_sel: 0,
            acked_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            activated: false,
        }
    }

    fn device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may only change before the driver is done setting the device up.
    fn queue_writable(&self) -> bool {
        self.status & status::DRIVER_OK == 0 && self.status & status::FAILED == 0
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.queue_writable() {
            crate::guest_warn!(
                device = self.device_type,
                "virtio-mmio: queue register written after DRIVER_OK; ignored"
            );
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.irq.status(),
            reg::STATUS => self.status,
            // No shared memory regions: length all ones means "none".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.acked_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    return;
                }
                match self.acked_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => self.update_queue(|q| q.set_size(v as u16)),
            reg::QUEUE_READY => self.update_queue(|q| q.set_ready(v == 1)),
            reg::QUEUE_DESC_LOW => self.update_queue(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.update_queue(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_DRIVER_LOW => self.update_queue(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_DRIVER_HIGH => {
                self.update_queue(|q| q.set_avail_ring_address(None, Some(v)))
            }
            reg::QUEUE_DEVICE_LOW => self.update_queue(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_DEVICE_HIGH => self.update_queue(|q| q.set_used_ring_address(None, Some(v))),
            reg::QUEUE_NOTIFY => {
                // Normally KVM's ioeventfd catches this write before it reaches us.
                if let Some(evt) = self.device().queue_events().get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            reg::INTERRUPT_ACK => self.irq.ack(v),
            reg::STATUS => self.write_status(v),
            reg::SHM_SEL => {}
            _ => crate::guest_debug!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let new_bits = v & !self.status;
        // The driver may only add bits (spec 3.1.1); clearing any but by reset is ignored.
        if v & self.status != self.status {
            crate::guest_warn!(
                device = self.device_type,
                "virtio-mmio: driver cleared status bits without a reset; ignored"
            );
            return;
        }
        let mut v = v;
        if new_bits & status::FEATURES_OK != 0 && !self.features_ok() {
            // Leaving FEATURES_OK unset tells the driver we refuse its feature set.
            v &= !status::FEATURES_OK;
        }
        self.status = v;
        if new_bits & status::DRIVER_OK != 0 && v & status::FEATURES_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn features_ok(&self) -> bool {
        self.acked_features & !self.avail_features == 0
            && self.acked_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() || !q.is_valid(&self.mem) {
                crate::guest_warn!(
                    device = self.device_type,
                    "virtio-mmio: queue {i} is not ready or not valid at DRIVER_OK"
                );
                self.status |= status::DEVICE_NEEDS_RESET;
                return;
            }
        }
        // The device gets its own copies; the transport keeps the registers' view.
        let queues = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>();
        let Ok(queues) = queues else {
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            irq: self.irq.clone(),
            acked_features: self.acked_features,
        };
        let result = self.device().activate(ctx);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                crate::guest_error!(device = self.device_type, "cannot activate the device: {e}");
                self.status |= status::DEVICE_NEEDS_RESET;
                self.irq.trigger(super::INT_CONFIG);
            }
        }
    }

    fn reset(&mut self) {
        if self.activated && !self.device().reset() {
            crate::guest_warn!(
                device = self.device_type,
                "virtio-mmio: the device cannot be reset once active"
            );
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.features_sel = 0;
        self.acked_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.irq.ack(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device().read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            crate::guest_debug!("virtio-mmio: {}-byte read at {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device().write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            crate::guest_debug!("virtio-mmio: {}-byte write at {offset:#x}", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::virtio::{ActivateError, INT_VRING};

    struct Dummy {
        evts: Vec<EventFd>,
        activations: Arc<AtomicUsize>,
        queues_seen: Arc<AtomicUsize>,
        fail: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1 << 3
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa, 0xbb, 0xcc, 0xdd], offset, data);
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::Backend("no".into()));
            }
            self.activations.fetch_add(1, Ordering::SeqCst);
            self.queues_seen.store(ctx.queues.len(), Ordering::SeqCst);
            Ok(())
        }
        fn identity(&self) -> crate::devices::virtio::state::DeviceIdentity {
            crate::devices::virtio::state::DeviceIdentity::Vsock { guest_cid: 42 }
        }
        fn snapshot_queues(&self) -> Result<Vec<virtio_queue::QueueState>, String> {
            Err("a dummy".into())
        }
    }

    fn transport(fail: bool) -> (MmioTransport, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let activations = Arc::new(AtomicUsize::new(0));
        let queues_seen = Arc::new(AtomicUsize::new(0));
        let dev = Dummy {
            evts: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ],
            activations: activations.clone(),
            queues_seen: queues_seen.clone(),
            fail,
        };
        let t = MmioTransport::new(Arc::new(Mutex::new(dev)), mem, IrqTrigger::for_tests());
        (t, activations, queues_seen)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn setup_queues(t: &mut MmioTransport) {
        for (i, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
            w(t, reg::QUEUE_SEL, i);
            w(t, reg::QUEUE_NUM, 8);
            w(t, reg::QUEUE_DESC_LOW, base);
            w(t, reg::QUEUE_DRIVER_LOW, base + 0x1000);
            w(t, reg::QUEUE_DEVICE_LOW, base + 0x2000);
            w(t, reg::QUEUE_READY, 1);
        }
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        w(t, reg::STATUS, status::ACKNOWLEDGE);
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, features as u32);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        w(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    #[test]
    fn identity_registers() {
        let (mut t, ..) = transport(false);
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1 << 3);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        w(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 8);
        w(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        let mut b = [0u8; 2];
        t.read(CONFIG_OFFSET + 1, &mut b);
        assert_eq!(b, [0xbb, 0xcc]);
    }

    #[test]
    fn full_handshake_activates_once() {
        let (mut t, activations, queues) = transport(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        assert_ne!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        setup_queues(&mut t);
        let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        w(&mut t, reg::STATUS, ok);
        assert_eq!(activations.load(Ordering::SeqCst), 1);
        assert_eq!(queues.load(Ordering::SeqCst), 2);
        assert_eq!(r(&mut t, reg::STATUS), ok);
        // Writing DRIVER_OK again does nothing more; queue registers are frozen.
        w(&mut t, reg::STATUS, ok);
        assert_eq!(activations.load(Ordering::SeqCst), 1);
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    }

    #[test]
    fn refuses_unknown_or_legacy_features() {
        let (mut t, ..) = transport(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 5);
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        let (mut t, ..) = transport(false);
        negotiate(&mut t, 1 << 3);
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_with_bad_queue_needs_reset() {
        let (mut t, activations, _) = transport(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        // Only queue 0 is set up; queue 1 is not ready.
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_NUM, 8);
        w(&mut t, reg::QUEUE_READY, 1);
        w(&mut t, reg::STATUS, 0xf);
        assert_eq!(activations.load(Ordering::SeqCst), 0);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn queue_outside_memory_is_not_activated() {
        let (mut t, activations, _) = transport(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queues(&mut t);
        w(&mut t, reg::QUEUE_SEL, 1);
        // Reconfigure queue 1's rings far outside the 1 MiB of memory.
        w(&mut t, reg::QUEUE_DESC_HIGH, 0x10);
        w(&mut t, reg::STATUS, 0xf);
        assert_eq!(activations.load(Ordering::SeqCst), 0);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn activation_failure_is_reported() {
        let (mut t, ..) = transport(true);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queues(&mut t);
        w(&mut t, reg::STATUS, 0xf);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn reset_before_activation_clears_state() {
        let (mut t, ..) = transport(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queues(&mut t);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, ..) = transport(false);
        t.irq.trigger(INT_VRING);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
        w(&mut t, reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn odd_sized_register_accesses_are_ignored() {
        let (mut t, ..) = transport(false);
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(reg::STATUS, &[1]);
        assert_eq!(r(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn notify_register_signals_the_queue_event() {
        let (mut t, ..) = transport(false);
        w(&mut t, reg::QUEUE_NOTIFY, 1);
        let d = t.device();
        assert_eq!(d.queue_events()[1].read().unwrap(), 1);
        // A notify for a queue that does not exist is ignored.
        drop(d);
        w(&mut t, reg::QUEUE_NOTIFY, 9);
    }
}
