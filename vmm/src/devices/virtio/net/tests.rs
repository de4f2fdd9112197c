//! The rx and tx paths over mock queues and a fake tap, and the offered features (the
//! device on an event loop and its notification suppression: `device_tests.rs`).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::{offered_features, tap_offloads};
use super::rx::{process_rx, RxState, RxWait};
use super::tap::TapIo;
use super::tx::{process_tx, TxState, TxWait, MAX_TX_LEN};
use super::{NetMetrics, VNET_HDR_LEN};
use crate::devices::virtio::ratelimit::WarnLimiter;
use crate::devices::virtio::VIRTIO_F_VERSION_1;

pub(super) const R: u16 = 0;
pub(super) const W: u16 = VRING_DESC_F_WRITE as u16;
pub(super) const MEM_END: u64 = 0x40_0000;
/// Guest buffers start here (the mock rings live below).
pub(super) const BUF: u64 = 0x10_0000;

pub(super) fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

pub(super) use crate::devices::virtio::test_queue::{add_chains, used};

/// A 12-byte header with recognisable fields, then `len` patterned bytes.
pub(super) fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    f[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    f[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    f[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
    f[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    f[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

pub(super) fn read(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    m.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// A tap in memory: frames to hand out, frames written, and a switch for EAGAIN.
#[derive(Default)]
struct FakeTap {
    inbound: VecDeque<Vec<u8>>,
    written: Vec<Vec<u8>>,
    write_blocked: bool,
    write_error: Option<i32>,
    offloads: Vec<u32>,
}

impl TapIo for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let f = self
            .inbound
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        if self.write_blocked {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        if let Some(e) = self.write_error {
            return Err(io::Error::from_raw_os_error(e));
        }
        self.written.push(frame.to_vec());
        Ok(frame.len())
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.offloads.push(flags);
        Ok(())
    }
}

struct Tx {
    m: GuestMemoryMmap,
    q: Queue,
    state: TxState,
    metrics: NetMetrics,
    warn: WarnLimiter,
    tap: FakeTap,
}

impl Tx {
    fn new(m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> Self {
        Self {
            m: m.clone(),
            q: vq.create_queue().unwrap(),
            state: TxState::default(),
            metrics: NetMetrics::default(),
            warn: WarnLimiter::new(Duration::from_secs(3600)),
            tap: FakeTap::default(),
        }
    }

    fn pass(&mut self) -> super::tx::TxPass {
        process_tx(
            &mut self.q,
            &self.m,
            &mut self.tap,
            &mut self.state,
            &self.metrics,
            &mut self.warn,
            64,
        )
    }
}

#[test]
fn tx_passes_the_header_and_frame_through() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let f = frame(1000, 1);
    m.write_slice(&f[..VNET_HDR_LEN], GuestAddress(BUF))
        .unwrap();
    m.write_slice(&f[VNET_HDR_LEN..600], GuestAddress(BUF + 0x1000))
        .unwrap();
    m.write_slice(&f[600..], GuestAddress(BUF + 0x2000))
        .unwrap();
    add_chains(
        &vq,
        0,
        &[&[(BUF, 12, R), (BUF + 0x1000, 588, R), (BUF + 0x2000, 412, R)]],
    );
    let mut tx = Tx::new(&m, &vq);
    let p = tx.pass();
    assert_eq!((p.used, p.wait), (1, TxWait::Guest));
    assert_eq!(tx.tap.written, vec![f]);
    assert_eq!(used(&vq), vec![(0, 0)]);
    assert_eq!(tx.metrics.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(tx.metrics.tx_bytes.load(Ordering::Relaxed), 1000);
}

#[test]
fn malformed_tx_chains_are_returned_and_counted() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chains(
        &vq,
        0,
        &[
            // A device-writable descriptor.
            &[(BUF, 12, R), (BUF + 0x1000, 100, W)],
            // A header and no Ethernet header.
            &[(BUF, 12, R)],
            &[(BUF, 25, R)],
            // Longer than 64 KiB and a header.
            &[
                (BUF, 12, R),
                (BUF + 0x1000, 0x1_0000, R),
                (BUF + 0x2_0000, 0x1000, R),
            ],
            // Outside guest memory, and wrapping around the address space.
            &[(BUF, 12, R), (MEM_END - 10, 100, R)],
            &[(BUF, 12, R), (u64::MAX - 5, 100, R)],
            // A fine frame after all that.
            &[(BUF, 12, R), (BUF + 0x1000, 60, R)],
        ],
    );
    let mut tx = Tx::new(&m, &vq);
    let p = tx.pass();
    assert_eq!((p.used, p.wait), (7, TxWait::Guest));
    assert_eq!(used(&vq).len(), 7);
    assert!(used(&vq).iter().all(|&(_, len)| len == 0));
    assert_eq!(tx.metrics.tx_malformed.load(Ordering::Relaxed), 6);
    assert_eq!(tx.tap.written.len(), 1);
    assert_eq!(tx.tap.written[0].len(), 72);
    // The largest frame fits exactly.
    let vq = MockSplitQueue::new(&m, 16);
    add_chains(
        &vq,
        0,
        &[
            &[(BUF, MAX_TX_LEN as u32, R)],
            &[(BUF, MAX_TX_LEN as u32 + 1, R)],
        ],
    );
    let mut tx = Tx::new(&m, &vq);
    tx.pass();
    assert_eq!(tx.tap.written.len(), 1);
    assert_eq!(tx.metrics.tx_malformed.load(Ordering::Relaxed), 1);
}

#[test]
fn tx_loop_and_bad_next_are_malformed() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 4);
    // 0 -> 1 -> 0 -> ...: a loop; then a next index beyond the table.
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(BUF, 12, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(SplitDescriptor::new(BUF, 100, VRING_DESC_F_NEXT as u16, 0)),
    ];
    vq.build_multiple_desc_chains(&descs).unwrap();
    vq.avail().ring().ref_at(0).unwrap().store(0);
    vq.avail().idx().store(1);
    let mut tx = Tx::new(&m, &vq);
    tx.pass();
    assert_eq!(tx.metrics.tx_malformed.load(Ordering::Relaxed), 1);
    assert!(tx.tap.written.is_empty());
    assert_eq!(used(&vq), vec![(0, 0)]);
}

#[test]
fn tx_eagain_keeps_the_chain_until_the_tap_takes_it() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let (a, b) = (frame(100, 1), frame(200, 2));
    m.write_slice(&a, GuestAddress(BUF)).unwrap();
    m.write_slice(&b, GuestAddress(BUF + 0x1000)).unwrap();
    add_chains(&vq, 0, &[&[(BUF, 112, R)], &[(BUF + 0x1000, 212, R)]]);
    let mut tx = Tx::new(&m, &vq);
    tx.tap.write_blocked = true;
    let p = tx.pass();
    assert_eq!((p.used, p.wait), (0, TxWait::Tap));
    assert!(tx.state.is_blocked());
    assert!(used(&vq).is_empty());
    // Still blocked: the same frame is tried again, nothing else.
    assert_eq!(tx.pass().wait, TxWait::Tap);
    assert_eq!(tx.metrics.tx_waits.load(Ordering::Relaxed), 2);
    // The guest's buffer may change meanwhile: what leaves is what was gathered.
    m.write_slice(&[0u8; 112], GuestAddress(BUF)).unwrap();
    tx.tap.write_blocked = false;
    let p = tx.pass();
    assert_eq!((p.used, p.wait), (2, TxWait::Guest));
    assert_eq!(tx.tap.written, vec![a, b]);
    assert_eq!(used(&vq), vec![(0, 0), (1, 0)]);
}

#[test]
fn tx_refused_by_the_tap_is_dropped_not_retried() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chains(&vq, 0, &[&[(BUF, 112, R)]]);
    let mut tx = Tx::new(&m, &vq);
    tx.tap.write_error = Some(libc::EINVAL);
    let p = tx.pass();
    assert_eq!((p.used, p.wait), (1, TxWait::Guest));
    assert_eq!(tx.metrics.tx_dropped.load(Ordering::Relaxed), 1);
    assert!(!tx.state.is_blocked());
}

#[test]
fn tx_budget_bounds_a_pass() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let chains: Vec<[(u64, u32, u16); 1]> = (0..5).map(|_| [(BUF, 112, R)]).collect();
    let refs: Vec<&[(u64, u32, u16)]> = chains.iter().map(|c| &c[..]).collect();
    add_chains(&vq, 0, &refs);
    let mut tx = Tx::new(&m, &vq);
    let pass = |tx: &mut Tx| {
        process_tx(
            &mut tx.q,
            &tx.m,
            &mut tx.tap,
            &mut tx.state,
            &tx.metrics,
            &mut tx.warn,
            3,
        )
    };
    assert_eq!(pass(&mut tx).wait, TxWait::Budget);
    assert_eq!(tx.tap.written.len(), 3);
    assert_eq!(pass(&mut tx).wait, TxWait::Guest);
    assert_eq!(tx.tap.written.len(), 5);
}

struct Rx {
    m: GuestMemoryMmap,
    q: Queue,
    state: RxState,
    metrics: NetMetrics,
    warn: WarnLimiter,
    tap: FakeTap,
    mrg: bool,
}

impl Rx {
    fn new(m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, mrg: bool) -> Self {
        Self {
            m: m.clone(),
            q: vq.create_queue().unwrap(),
            state: RxState::default(),
            metrics: NetMetrics::default(),
            warn: WarnLimiter::new(Duration::from_secs(3600)),
            tap: FakeTap::default(),
            mrg,
        }
    }

    fn pass(&mut self) -> super::rx::RxPass {
        process_rx(
            &mut self.q,
            &self.m,
            &mut self.tap,
            &mut self.state,
            self.mrg,
            &self.metrics,
            &mut self.warn,
            64,
        )
    }
}

/// `f` with num_buffers set to `n`.
pub(super) fn with_num_buffers(f: &[u8], n: u16) -> Vec<u8> {
    let mut v = f.to_vec();
    v[10..12].copy_from_slice(&n.to_le_bytes());
    v
}

#[test]
fn rx_frame_spans_merged_buffers() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    // Three 1500-byte buffers, the second made of two descriptors.
    add_chains(
        &vq,
        0,
        &[
            &[(BUF, 1500, W)],
            &[(BUF + 0x1000, 1000, W), (BUF + 0x2000, 500, W)],
            &[(BUF + 0x3000, 1500, W)],
        ],
    );
    let mut rx = Rx::new(&m, &vq, true);
    let f = frame(3000 - VNET_HDR_LEN + 12, 3); // 3012 bytes with the header
    rx.tap.inbound.push_back(f.clone());
    let p = rx.pass();
    assert_eq!((p.used, p.wait), (3, RxWait::Tap));
    assert_eq!(used(&vq), vec![(0, 1500), (1, 1500), (3, 12)]);
    let want = with_num_buffers(&f, 3);
    let got = [
        read(&m, BUF, 1500),
        read(&m, BUF + 0x1000, 1000),
        read(&m, BUF + 0x2000, 500),
        read(&m, BUF + 0x3000, 12),
    ]
    .concat();
    assert_eq!(got, want);
    // The tap's header fields reach the guest unchanged.
    assert_eq!(&got[..10], &f[..10]);
    assert_eq!(rx.metrics.rx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(rx.metrics.rx_bytes.load(Ordering::Relaxed), 3000);
}

#[test]
fn rx_waits_with_one_frame_when_the_guest_stops_reading() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let mut rx = Rx::new(&m, &vq, true);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(100, i)).collect();
    rx.tap.inbound.extend(frames.iter().cloned());
    // No buffers: one frame read and held, the rest left in the tap.
    let p = rx.pass();
    assert_eq!((p.used, p.wait), (0, RxWait::Guest));
    assert!(rx.state.holds_frame());
    assert_eq!(rx.tap.inbound.len(), 4);
    // Asking again reads nothing more.
    rx.pass();
    rx.pass();
    assert_eq!(rx.tap.inbound.len(), 4);
    assert_eq!(rx.metrics.rx_dropped.load(Ordering::Relaxed), 0);
    // Two buffers: two frames in, a third held, two still in the tap.
    add_chains(&vq, 0, &[&[(BUF, 2048, W)], &[(BUF + 0x1000, 2048, W)]]);
    let p = rx.pass();
    assert_eq!((p.used, p.wait), (2, RxWait::Guest));
    assert_eq!(rx.tap.inbound.len(), 2);
    assert_eq!(read(&m, BUF, 112), with_num_buffers(&frames[0], 1));
    assert_eq!(read(&m, BUF + 0x1000, 112), with_num_buffers(&frames[1], 1));
    // The rest, in order.
    add_chains(
        &vq,
        2,
        &[
            &[(BUF + 0x2000, 2048, W)],
            &[(BUF + 0x3000, 2048, W)],
            &[(BUF + 0x4000, 2048, W)],
        ],
    );
    let p = rx.pass();
    assert_eq!((p.used, p.wait), (3, RxWait::Tap));
    for (i, f) in frames[2..].iter().enumerate() {
        assert_eq!(
            read(&m, BUF + 0x2000 + 0x1000 * i as u64, 112),
            with_num_buffers(f, 1)
        );
    }
    assert_eq!(rx.metrics.rx_frames.load(Ordering::Relaxed), 5);
    assert_eq!(rx.metrics.rx_dropped.load(Ordering::Relaxed), 0);
    assert!(rx.metrics.rx_waits.load(Ordering::Relaxed) >= 2);
}

#[test]
fn rx_partial_buffers_are_taken_again_when_more_arrive() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chains(&vq, 0, &[&[(BUF, 1000, W)]]);
    let mut rx = Rx::new(&m, &vq, true);
    let f = frame(1500, 9);
    rx.tap.inbound.push_back(f.clone());
    let p = rx.pass();
    assert_eq!((p.used, p.wait), (0, RxWait::Guest));
    assert!(used(&vq).is_empty());
    assert_eq!(
        rx.q.next_avail(),
        0,
        "the collected chain is given back to the ring"
    );
    add_chains(&vq, 1, &[&[(BUF + 0x1000, 1000, W)]]);
    let p = rx.pass();
    assert_eq!((p.used, p.wait), (2, RxWait::Tap));
    assert_eq!(used(&vq), vec![(0, 1000), (1, 512)]);
    let got = [read(&m, BUF, 1000), read(&m, BUF + 0x1000, 512)].concat();
    assert_eq!(got, with_num_buffers(&f, 2));
}

#[test]
fn rx_without_mergeable_buffers_needs_one_big_buffer() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chains(
        &vq,
        0,
        &[
            &[(BUF, 1000, W)],
            &[(BUF + 0x1000, 12, W), (BUF + 0x2000, 0x1_0000, W)],
        ],
    );
    let mut rx = Rx::new(&m, &vq, false);
    let (big, ok) = (frame(1500, 1), frame(1500, 2));
    rx.tap.inbound.extend([big, ok.clone()]);
    let p = rx.pass();
    assert_eq!((p.used, p.wait), (2, RxWait::Tap));
    // The first frame does not fit 1000 bytes: dropped, its buffer returned empty.
    assert_eq!(used(&vq), vec![(0, 0), (1, 1512)]);
    assert_eq!(rx.metrics.rx_dropped.load(Ordering::Relaxed), 1);
    let got = [read(&m, BUF + 0x1000, 12), read(&m, BUF + 0x2000, 1500)].concat();
    assert_eq!(got, with_num_buffers(&ok, 1));
}

#[test]
fn bad_rx_chains_are_returned_empty() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chains(
        &vq,
        0,
        &[
            &[(BUF, 1000, W)],
            // Device-readable, then outside memory: each returned empty, and the frame
            // starts over in the chains after them.
            &[(BUF + 0x1000, 1000, R)],
            &[(MEM_END - 100, 1000, W)],
            &[(BUF + 0x2000, 2048, W)],
        ],
    );
    let mut rx = Rx::new(&m, &vq, true);
    let f = frame(1200, 4);
    rx.tap.inbound.push_back(f.clone());
    let p = rx.pass();
    assert_eq!(p.wait, RxWait::Tap);
    assert_eq!(used(&vq), vec![(0, 0), (1, 0), (2, 0), (3, 1212)]);
    assert_eq!(rx.metrics.rx_malformed.load(Ordering::Relaxed), 2);
    assert_eq!(read(&m, BUF + 0x2000, 1212), with_num_buffers(&f, 1));
}

#[test]
fn rx_frame_larger_than_the_whole_ring_is_dropped() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 2);
    add_chains(&vq, 0, &[&[(BUF, 100, W)], &[(BUF + 0x1000, 100, W)]]);
    let mut rx = Rx::new(&m, &vq, true);
    rx.tap.inbound.push_back(frame(500, 1));
    let p = rx.pass();
    assert_eq!(p.used, 2);
    assert_eq!(used(&vq), vec![(0, 0), (1, 0)]);
    assert_eq!(rx.metrics.rx_dropped.load(Ordering::Relaxed), 1);
    assert!(!rx.state.holds_frame());
}

#[test]
fn features_and_offloads() {
    let f = offered_features(None);
    for b in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_STATUS,
    ] {
        assert_ne!(f & (1 << b), 0, "feature {b}");
    }
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_eq!(f & (1 << VIRTIO_NET_F_MTU), 0);
    assert_ne!(offered_features(Some(1400)) & (1 << VIRTIO_NET_F_MTU), 0);
    assert_eq!(f & (1 << VIRTIO_NET_F_CTRL_VQ), 0);
    assert_eq!(f & (1 << VIRTIO_NET_F_MQ), 0);

    let bit = |b: u32| 1u64 << b;
    assert_eq!(tap_offloads(0), 0);
    // TSO without checksum offload means nothing to the tap.
    assert_eq!(tap_offloads(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
    assert_eq!(tap_offloads(bit(VIRTIO_NET_F_GUEST_CSUM)), libc::TUN_F_CSUM);
    assert_eq!(
        tap_offloads(
            bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_GUEST_TSO4)
                | bit(VIRTIO_NET_F_GUEST_TSO6)
        ),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    );
    // Host-side offloads are the guest's sending; they set nothing on the tap.
    assert_eq!(
        tap_offloads(bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_CSUM)),
        0
    );
}
