//! What a snapshot keeps of a virtio device: the virtio-mmio transport's registers, the
//! queues as the device has advanced them, and which device it is, so that a restore can
//! refuse a device set that is not the one the guest knows.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// One virtqueue (`virtio_queue::QueueState`, which is not serde, field for field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl QueueSnapshot {
    /// A queue from the saved state, checked as virtio-queue checks a driver's settings
    /// (a power-of-two size within the maximum, aligned ring addresses).
    pub fn to_queue(&self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }
}

/// The transport's registers; once the device is active, its live queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSnapshot {
    pub device_type: u32,
    pub status: u32,
    pub features_sel: u32,
    pub acked_features_sel: u32,
    pub acked_features: u64,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub activated: bool,
    pub queues: Vec<QueueSnapshot>,
}

/// Which device sits in a slot, with what the guest learnt from it at probe time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceIdentity {
    /// A restored block device may differ in size (the driver is told to re-read it), not
    /// in being read-only (a negotiated feature).
    Block { capacity: u64, read_only: bool },
    /// The CID may differ: the guest re-reads it at the transport reset a restore sends.
    Vsock { guest_cid: u32 },
    /// The tag must not differ: the guest mounts by the tag it read at probe time.
    Fs { tag: String, request_queues: u16 },
    /// The MAC may differ: the config space shows the new one, but the guest's interface
    /// keeps the old address until the agent sets it.
    Net { mac: String },
}

impl DeviceIdentity {
    /// Whether a device restored as `self` can stand in for the saved `saved`.
    pub fn mismatch(&self, saved: &DeviceIdentity) -> Option<String> {
        match (saved, self) {
            (
                DeviceIdentity::Block { read_only: a, .. },
                DeviceIdentity::Block { read_only: b, .. },
            ) if a != b => Some(format!(
                "the snapshot's block device is {}, this one {}",
                if *a { "read-only" } else { "read-write" },
                if *b { "read-only" } else { "read-write" }
            )),
            (
                DeviceIdentity::Fs {
                    tag: a,
                    request_queues: qa,
                },
                DeviceIdentity::Fs {
                    tag: b,
                    request_queues: qb,
                },
            ) if a != b || qa != qb => Some(format!(
                "the snapshot's virtio-fs device is tag {a:?} with {qa} request queue(s), \
                 this one tag {b:?} with {qb}"
            )),
            (DeviceIdentity::Block { .. }, DeviceIdentity::Block { .. })
            | (DeviceIdentity::Vsock { .. }, DeviceIdentity::Vsock { .. })
            | (DeviceIdentity::Fs { .. }, DeviceIdentity::Fs { .. })
            | (DeviceIdentity::Net { .. }, DeviceIdentity::Net { .. }) => None,
            (a, b) => Some(format!(
                "the snapshot has a {} device here, the configuration a {} device",
                a.kind(),
                b.kind()
            )),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            DeviceIdentity::Block { .. } => "block",
            DeviceIdentity::Vsock { .. } => "vsock",
            DeviceIdentity::Fs { .. } => "virtio-fs",
            DeviceIdentity::Net { .. } => "net",
        }
    }
}

/// One virtio device of a snapshot: where it sits and its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSnapshot {
    pub identity: DeviceIdentity,
    pub mmio_base: u64,
    pub irq: u32,
    pub transport: TransportSnapshot,
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueT;

    use super::*;

    #[test]
    fn queue_round_trip_and_checks() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(64);
        q.set_ready(true);
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x2000), Some(0));
        q.set_used_ring_address(Some(0x3000), Some(0));
        q.set_next_avail(17);
        q.set_next_used(15);
        let snap = QueueSnapshot::from(q.state());
        let json = serde_json::to_string(&snap).unwrap();
        let back: QueueSnapshot = serde_json::from_str(&json).unwrap();
        let q2 = back.to_queue().unwrap();
        assert_eq!(q2.state(), q.state());

        let mut bad = snap;
        bad.size = 100; // not a power of two
        assert!(bad.to_queue().is_err());
        let mut bad = snap;
        bad.size = 512; // above the maximum
        assert!(bad.to_queue().is_err());
        let mut bad = snap;
        bad.used_ring = 0x3001; // misaligned
        assert!(bad.to_queue().is_err());
    }

    #[test]
    fn identities() {
        let blk = |capacity, read_only| DeviceIdentity::Block {
            capacity,
            read_only,
        };
        assert_eq!(blk(8, false).mismatch(&blk(16, false)), None);
        assert!(blk(8, true).mismatch(&blk(8, false)).is_some());
        let fs = |tag: &str| DeviceIdentity::Fs {
            tag: tag.into(),
            request_queues: 1,
        };
        assert_eq!(fs("a").mismatch(&fs("a")), None);
        assert!(fs("a").mismatch(&fs("b")).is_some());
        let vsock = DeviceIdentity::Vsock { guest_cid: 3 };
        assert_eq!(
            DeviceIdentity::Vsock { guest_cid: 9 }.mismatch(&vsock),
            None
        );
        let m = fs("a").mismatch(&vsock).unwrap();
        assert!(m.contains("vsock") && m.contains("virtio-fs"), "{m}");
        let json = serde_json::to_string(&fs("x")).unwrap();
        assert_eq!(json, r#"{"fs":{"tag":"x","request_queues":1}}"#);
    }
}
