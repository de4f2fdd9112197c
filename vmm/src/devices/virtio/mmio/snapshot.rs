//! Saving and restoring one transport with its device: the registers the driver
//! programmed, and for an active device the queues as the device left them. A restore
//! activates the device again with those queues, without the driver's involvement: the
//! guest does not know it was snapshotted.

use virtio_queue::{Queue, QueueT};

use super::MmioTransport;
use crate::devices::virtio::state::{DeviceIdentity, QueueSnapshot, TransportSnapshot};
use crate::devices::virtio::{
    status, ActivateContext, ActivateError, INT_CONFIG, VIRTIO_F_VERSION_1,
};

/// Why a saved transport does not fit the device it is restored onto.
#[derive(Debug, thiserror::Error)]
pub enum TransportRestoreError {
    #[error("The snapshot has device type {saved} here, the configuration type {found}")]
    DeviceType { saved: u32, found: u32 },
    #[error("The snapshot has {saved} queues for this device, it has {found}")]
    QueueCount { saved: usize, found: usize },
    #[error("Saved queue {index} is invalid: {reason}")]
    BadQueue { index: usize, reason: String },
    #[error("The driver acked features {acked:#x}; this device offers only {offered:#x}")]
    Features { acked: u64, offered: u64 },
    #[error("The saved device is active without FEATURES_OK and DRIVER_OK (status {0:#x})")]
    Status(u32),
    #[error("The device cannot start with its saved queues")]
    Activate(#[source] ActivateError),
}

impl MmioTransport {
    /// Which device sits behind this transport.
    pub fn identity(&self) -> DeviceIdentity {
        self.device().identity()
    }

    /// After [`MmioTransport::restore`]: a device restored with other properties than the
    /// saved one (a disk of another size, another CID or MAC) raises a configuration
    /// change interrupt, so a driver that watches its config space re-reads it.
    pub fn after_restore(&mut self, saved: &DeviceIdentity) {
        if self.activated && self.identity() != *saved {
            self.irq.trigger(INT_CONFIG);
        }
    }

    /// The transport's state with the VM paused; for an active device its live queues
    /// (an error says why the device cannot be saved now).
    pub fn save(&self) -> Result<TransportSnapshot, String> {
        let queues = if self.activated {
            self.device().snapshot_queues()?
        } else {
            self.queues.iter().map(|q| q.state()).collect()
        };
        Ok(TransportSnapshot {
            device_type: self.device_type,
            status: self.status,
            features_sel: self.features_sel,
            acked_features_sel: self.acked_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.irq.status(),
            activated: self.activated,
            queues: queues.into_iter().map(QueueSnapshot::from).collect(),
        })
    }

    /// Puts a saved state onto this fresh transport (its device built from the restore's
    /// configuration, its guest memory restored). Everything is checked before anything
    /// changes: the device type, the queue count and sizes, each queue against guest
    /// memory, the acked features against what this device offers.
    pub fn restore(&mut self, saved: &TransportSnapshot) -> Result<(), TransportRestoreError> {
        if saved.device_type != self.device_type {
            return Err(TransportRestoreError::DeviceType {
                saved: saved.device_type,
                found: self.device_type,
            });
        }
        if saved.queues.len() != self.queues.len() {
            return Err(TransportRestoreError::QueueCount {
                saved: saved.queues.len(),
                found: self.queues.len(),
            });
        }
        let queues = |check_memory: bool| {
            saved
                .queues
                .iter()
                .zip(&self.queues)
                .enumerate()
                .map(|(index, (q, fresh))| {
                    let bad = |reason: String| TransportRestoreError::BadQueue { index, reason };
                    if q.max_size != fresh.max_size() {
                        return Err(bad(format!(
                            "maximum size {}, this device's is {}",
                            q.max_size,
                            fresh.max_size()
                        )));
                    }
                    let queue = q.to_queue().map_err(|e| bad(e.to_string()))?;
                    if check_memory && queue.ready() && !queue.is_valid(&self.mem) {
                        return Err(bad("its rings are outside guest memory".into()));
                    }
                    Ok(queue)
                })
                .collect::<Result<Vec<Queue>, _>>()
        };
        let registers = queues(false)?;
        if saved.activated {
            if saved.acked_features & !self.avail_features != 0
                || saved.acked_features & VIRTIO_F_VERSION_1 == 0
            {
                return Err(TransportRestoreError::Features {
                    acked: saved.acked_features,
                    offered: self.avail_features,
                });
            }
            let ok = status::FEATURES_OK | status::DRIVER_OK;
            if saved.status & ok != ok {
                return Err(TransportRestoreError::Status(saved.status));
            }
            let live = queues(true)?;
            self.device()
                .activate(ActivateContext {
                    mem: self.mem.clone(),
                    queues: live,
                    irq: self.irq.clone(),
                    acked_features: saved.acked_features,
                })
                .map_err(TransportRestoreError::Activate)?;
            self.device().restored();
        }
        self.queues = registers;
        self.status = saved.status;
        self.features_sel = saved.features_sel;
        self.acked_features_sel = saved.acked_features_sel;
        self.acked_features = saved.acked_features;
        self.queue_sel = saved.queue_sel;
        self.activated = saved.activated;
        self.irq.restore_status(saved.interrupt_status);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_OUT;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::tempfile::TempFile;

    use super::super::reg;
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::block::request::tests::{desc, desc_next, header, R, W};
    use crate::devices::virtio::block::{Block, BlockConfig};
    use crate::devices::virtio::{IrqTrigger, VirtioDevice, INT_VRING};

    const QUEUE_BASE: u64 = 0x1000;
    const QLEN: u16 = 16;

    struct Rig {
        _image: TempFile,
        mem: GuestMemoryMmap,
        block: Arc<Mutex<Block>>,
        transport: MmioTransport,
    }

    fn rig(mem: &GuestMemoryMmap, read_only: bool) -> Rig {
        let image = TempFile::new().unwrap();
        image.as_file().set_len(8 * 512).unwrap();
        let block = Arc::new(Mutex::new(
            Block::new(&BlockConfig {
                path: image.as_path().to_path_buf(),
                read_only,
                id: None,
            })
            .unwrap(),
        ));
        let transport = MmioTransport::new(block.clone(), mem.clone(), IrqTrigger::for_tests());
        Rig {
            _image: image,
            mem: mem.clone(),
            block,
            transport,
        }
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// The driver's side of the handshake, with the mock queue's rings.
    fn drive_to_ok(t: &mut MmioTransport, vq: &MockSplitQueue<GuestMemoryMmap>, features: u64) {
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, features as u32);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        w(t, reg::STATUS, 0b1011);
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_NUM, u32::from(QLEN));
        let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
        let (lo, hi) = split(vq.desc_table_addr());
        w(t, reg::QUEUE_DESC_LOW, lo);
        w(t, reg::QUEUE_DESC_HIGH, hi);
        let (lo, hi) = split(vq.avail_addr());
        w(t, reg::QUEUE_DRIVER_LOW, lo);
        w(t, reg::QUEUE_DRIVER_HIGH, hi);
        let (lo, hi) = split(vq.used_addr());
        w(t, reg::QUEUE_DEVICE_LOW, lo);
        w(t, reg::QUEUE_DEVICE_HIGH, hi);
        w(t, reg::QUEUE_READY, 1);
        w(t, reg::STATUS, 0b1111);
    }

    /// A one-sector write request at descriptors `at..at + 3`.
    fn write_request(m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, at: u16, fill: u8) {
        let base = 0x4_0000 + u64::from(at) * 0x1000;
        m.write_slice(&header(VIRTIO_BLK_T_OUT, 1), GuestAddress(base))
            .unwrap();
        m.write_slice(&[fill; 512], GuestAddress(base + 0x100))
            .unwrap();
        let descs: [RawDescriptor; 3] = [
            desc_next(base, 16, R, at + 1),
            desc_next(base + 0x100, 512, R, at + 2),
            desc(base + 0x400, 1, W),
        ];
        vq.add_desc_chains(&descs, at).unwrap();
    }

    #[test]
    fn an_active_block_device_goes_on_from_its_saved_queue() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), QLEN);
        let mut a = rig(&mem, false);
        let features = a.block.lock().unwrap().avail_features();
        drive_to_ok(&mut a.transport, &vq, features);
        write_request(&mem, &vq, 0, 0x11);
        a.block.lock().unwrap().process_queue_event();
        assert_eq!(vq.used().idx().load(), 1);
        let saved = a.transport.save().unwrap();
        assert!(saved.activated);
        assert_eq!(saved.queues[0].next_avail, 1);
        assert_eq!(saved.queues[0].next_used, 1);
        assert_eq!(saved.interrupt_status, INT_VRING);
        // Through JSON, as in a snapshot file.
        let saved: TransportSnapshot =
            serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();

        // A new device on the same guest memory: it serves the next request, not the
        // first one again.
        let mut b = rig(&a.mem, false);
        b.transport.restore(&saved).unwrap();
        assert!(b.block.lock().unwrap().is_activated());
        assert_eq!(r(&mut b.transport, reg::STATUS), 0b1111);
        assert_eq!(r(&mut b.transport, reg::INTERRUPT_STATUS), INT_VRING);
        write_request(&mem, &vq, 3, 0x22);
        b.block.lock().unwrap().process_queue_event();
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!(vq.used().ring().ref_at(1).unwrap().load().id(), 3);
        // The restored device's queue was notified (buffers made available before).
        assert!(b.block.lock().unwrap().queue_events()[0].read().unwrap() >= 1);
        assert_eq!(b.transport.save().unwrap().queues[0].next_avail, 2);
        // Same disk size: no configuration change to report.
        let before = b.transport.irq.status();
        b.transport.after_restore(&b.transport.identity());
        assert_eq!(b.transport.irq.status(), before);
        b.transport.after_restore(&DeviceIdentity::Block {
            capacity: 1,
            read_only: false,
        });
        assert_ne!(b.transport.irq.status() & INT_CONFIG, 0);
    }

    #[test]
    fn an_inactive_transport_keeps_its_registers() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut a = rig(&mem, false);
        w(&mut a.transport, reg::STATUS, status::ACKNOWLEDGE);
        w(&mut a.transport, reg::QUEUE_SEL, 0);
        w(&mut a.transport, reg::QUEUE_NUM, 64);
        let saved = a.transport.save().unwrap();
        assert!(!saved.activated);
        let mut b = rig(&mem, false);
        b.transport.restore(&saved).unwrap();
        assert!(!b.block.lock().unwrap().is_activated());
        assert_eq!(r(&mut b.transport, reg::STATUS), status::ACKNOWLEDGE);
        assert_eq!(b.transport.save().unwrap(), saved);
    }

    #[test]
    fn mismatches_are_refused_before_anything_changes() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), QLEN);
        let mut a = rig(&mem, false);
        let features = a.block.lock().unwrap().avail_features();
        drive_to_ok(&mut a.transport, &vq, features);
        let saved = a.transport.save().unwrap();

        let refused = |s: &TransportSnapshot, read_only: bool| {
            let mut b = rig(&mem, read_only);
            let e = b.transport.restore(s).unwrap_err();
            assert!(!b.block.lock().unwrap().is_activated(), "{e}");
            assert_eq!(r(&mut b.transport, reg::STATUS), 0);
            e
        };
        let mut s = saved.clone();
        s.device_type = 19;
        assert!(matches!(
            refused(&s, false),
            TransportRestoreError::DeviceType {
                saved: 19,
                found: 2
            }
        ));
        let mut s = saved.clone();
        s.queues.push(s.queues[0]);
        assert!(matches!(
            refused(&s, false),
            TransportRestoreError::QueueCount { saved: 2, found: 1 }
        ));
        let mut s = saved.clone();
        s.queues[0].max_size = 1024;
        assert!(matches!(
            refused(&s, false),
            TransportRestoreError::BadQueue { index: 0, .. }
        ));
        let mut s = saved.clone();
        s.queues[0].size = 7;
        assert!(matches!(
            refused(&s, false),
            TransportRestoreError::BadQueue { .. }
        ));
        let mut s = saved.clone();
        s.queues[0].used_ring = 0x20_0000;
        assert!(matches!(
            refused(&s, false),
            TransportRestoreError::BadQueue { .. }
        ));
        let mut s = saved.clone();
        s.acked_features |= 1 << 40;
        assert!(matches!(
            refused(&s, false),
            TransportRestoreError::Features { .. }
        ));
        let mut s = saved.clone();
        s.status = status::ACKNOWLEDGE;
        assert!(matches!(
            refused(&s, false),
            TransportRestoreError::Status(_)
        ));
        // A read-write device's driver did not ack RO; a read-only device is accepted by
        // the feature check (identity checks catch the difference).
        let mut b = rig(&mem, true);
        b.transport.restore(&saved).unwrap();
    }
}
