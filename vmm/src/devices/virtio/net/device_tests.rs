//! The device on a real event loop, with a SOCK_SEQPACKET socketpair as its tap, and
//! its notification suppression (RING_EVENT_IDX) over mock queues. The rx and tx passes
//! themselves are tested in `tests.rs`, whose helpers these share.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_net::*;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::{ask_for_new_buffers, offered_features, wants_interrupt, Net};
use super::tap::TapIo;
use super::tests::*;
use super::MacAddr;
use crate::devices::virtio::{ActivateContext, IrqTrigger, VirtioDevice};

/// One end of a SOCK_SEQPACKET socketpair as the device's tap: frame boundaries kept,
/// EAGAIN when empty.
struct SocketTap {
    fd: OwnedFd,
    offloads: Arc<Mutex<Vec<u32>>>,
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into the array it is given.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn io_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl TapIo for SocketTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        io_result(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: writes `frame.len()` bytes from `frame`.
        io_result(unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) })
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.offloads.lock().unwrap().push(flags);
        Ok(())
    }
}

impl AsRawFd for SocketTap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn peer_write(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: writes `data.len()` bytes from `data`.
    io_result(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })
}

fn peer_read(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    // SAFETY: reads at most `buf.len()` bytes into `buf`.
    let n = io_result(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn the_device_on_an_event_loop() {
    let m = mem();
    let rxq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let txq = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
    let (ours, peer) = seqpacket_pair();
    let offloads = Arc::new(Mutex::new(Vec::new()));
    let tap = SocketTap {
        fd: ours,
        offloads: offloads.clone(),
    };
    let mac = MacAddr([2, 0, 0, 0, 0, 7]);
    let net = Net::with_tap(tap, "fake0".into(), mac, Some(1400)).unwrap();
    assert_eq!(net.device_type(), crate::devices::virtio::TYPE_NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let mut cfg = [0u8; 12];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &mac.0);
    assert_eq!(
        u16::from_le_bytes([cfg[6], cfg[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400);
    let metrics = net.metrics();
    let net = Arc::new(Mutex::new(net));
    let mut ops = EventManager::<Arc<Mutex<Net<SocketTap>>>>::new().unwrap();
    ops.add_subscriber(net.clone());

    // A frame arriving before activation waits in the "tap".
    let inbound = frame(700, 5);
    peer_write(&peer, &inbound).unwrap();
    assert_eq!(ops.run_with_timeout(50).unwrap(), 0);

    // The driver's buffers and a frame to send, queued before DRIVER_OK.
    add_chains(&rxq, 0, &[&[(BUF, 2048, W)]]);
    let outbound = frame(300, 6);
    m.write_slice(&outbound, GuestAddress(BUF + 0x8000))
        .unwrap();
    add_chains(&txq, 0, &[&[(BUF + 0x8000, 312, R)]]);
    let acked = offered_features(Some(1400)) & !(1 << VIRTIO_NET_F_GUEST_TSO6);
    let irq = IrqTrigger::for_tests();
    net.lock()
        .unwrap()
        .activate(ActivateContext {
            mem: m.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            irq: irq.clone(),
            acked_features: acked,
        })
        .unwrap();
    assert!(
        !net.lock().unwrap().is_started(),
        "started only on the event loop"
    );
    ops.run_with_timeout(100).unwrap();
    assert!(net.lock().unwrap().is_started());
    assert_eq!(
        *offloads.lock().unwrap(),
        vec![libc::TUN_F_CSUM | libc::TUN_F_TSO4]
    );
    assert_eq!(peer_read(&peer).unwrap(), outbound);
    assert_eq!(used(&txq), vec![(0, 0)]);
    assert_eq!(used(&rxq), vec![(0, 712)]);
    assert_eq!(read(&m, BUF, 712), with_num_buffers(&inbound, 1));
    assert!(irq.irqfd().read().unwrap() >= 1);

    // The guest has no rx buffer left: the next frame is held, the one after stays in the
    // socket, and the loop does not spin on the readable socket.
    let (f2, f3) = (frame(100, 7), frame(100, 8));
    peer_write(&peer, &f2).unwrap();
    peer_write(&peer, &f3).unwrap();
    ops.run_with_timeout(100).unwrap();
    assert_eq!(
        ops.run_with_timeout(50).unwrap(),
        0,
        "the loop polls a tap it cannot drain"
    );
    assert_eq!(metrics.rx_frames.load(Ordering::Relaxed), 1);
    // A new buffer and a notification: the held frame goes in, then the next is held.
    add_chains(&rxq, 1, &[&[(BUF + 0x1000, 2048, W)]]);
    net.lock().unwrap().queue_events()[0].write(1).unwrap();
    ops.run_with_timeout(100).unwrap();
    assert_eq!(read(&m, BUF + 0x1000, 112), with_num_buffers(&f2, 1));
    add_chains(&rxq, 2, &[&[(BUF + 0x2000, 2048, W)]]);
    net.lock().unwrap().queue_events()[0].write(1).unwrap();
    while ops.run_with_timeout(50).unwrap() > 0 {}
    assert_eq!(read(&m, BUF + 0x2000, 112), with_num_buffers(&f3, 1));
    assert_eq!(metrics.rx_frames.load(Ordering::Relaxed), 3);

    // Back-pressure on tx: fill the peer's receive queue until the device gets EAGAIN.
    let big = frame(60_000, 9);
    m.write_slice(&big, GuestAddress(BUF + 0x10_0000)).unwrap();
    let n_chains = 12u16;
    let chains: Vec<[(u64, u32, u16); 1]> = (0..n_chains)
        .map(|_| [(BUF + 0x10_0000, big.len() as u32, R)])
        .collect();
    let refs: Vec<&[(u64, u32, u16)]> = chains.iter().map(|c| &c[..]).collect();
    add_chains(&txq, 1, &refs);
    net.lock().unwrap().queue_events()[1].write(1).unwrap();
    ops.run_with_timeout(100).unwrap();
    let waits = metrics.tx_waits.load(Ordering::Relaxed);
    assert!(waits >= 1, "a socketpair takes 12 x 60 KB without EAGAIN?");
    let sent_before = metrics.tx_frames.load(Ordering::Relaxed);
    // Reading at the peer makes room; EPOLLOUT resumes the held frame.
    let mut got = 0;
    while got < usize::from(n_chains) {
        match peer_read(&peer) {
            Ok(f) => {
                assert_eq!(f, big);
                got += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ops.run_with_timeout(100).unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(sent_before < u64::from(n_chains) + 1);
    assert_eq!(
        metrics.tx_frames.load(Ordering::Relaxed),
        u64::from(n_chains) + 1
    );
    assert_eq!(metrics.tx_dropped.load(Ordering::Relaxed), 0);
    assert_eq!(used(&txq).len(), usize::from(n_chains) + 1);

    // Reset: the device goes quiet and drops what it held.
    peer_write(&peer, &frame(50, 1)).unwrap();
    ops.run_with_timeout(50).unwrap();
    assert!(net.lock().unwrap().reset());
    while ops.run_with_timeout(50).unwrap() > 0 {}
    assert!(!net.lock().unwrap().is_started());
    assert_eq!(metrics.rx_dropped.load(Ordering::Relaxed), 1);
    peer_write(&peer, &frame(50, 2)).unwrap();
    assert_eq!(ops.run_with_timeout(50).unwrap(), 0);
}

#[test]
fn a_held_rx_frame_asks_for_a_kick_on_the_next_buffer_with_event_idx() {
    // Two buffers made available, too small for the held frame: the device rewound
    // next_avail to 0 (it takes them again with more), so the kick it asks for must be
    // past index 2, where the guest adds next, not at 0, which the guest passed already.
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    add_chains(&vq, 0, &[&[(BUF, 64, W)], &[(BUF + 64, 64, W)]]);
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_event_idx(true);
    assert_eq!(q.next_avail(), 0);
    // avail_event follows the used ring's 16 elements (`start()` is the ring's).
    let avail_event = |m: &GuestMemoryMmap| {
        m.read_obj::<u16>(GuestAddress(vq.used().start().0 + 8 * 16))
            .unwrap()
    };
    assert!(
        !ask_for_new_buffers(&mut q, &m),
        "no buffer was added meanwhile"
    );
    assert_eq!(avail_event(&m), 2);
    assert_eq!(q.next_avail(), 0, "the collected chains stay available");
    // The guest adds a third, still not enough: the next request is past it.
    add_chains(&vq, 2, &[&[(BUF + 128, 64, W)]]);
    assert!(!ask_for_new_buffers(&mut q, &m));
    assert_eq!(avail_event(&m), 3);
    assert_eq!(q.next_avail(), 0);
}

#[test]
fn event_idx_is_offered() {
    assert_ne!(
        offered_features(None) & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX),
        0
    );
}

#[test]
fn interrupts_follow_used_event_for_entries_published_in_a_batch() {
    // The rx path writes its used entries itself, so the rule must not depend on the
    // queue's own count of add_used calls: entries 0..3 published at once.
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_next_used(3);
    // Nothing published: never. Without EVENT_IDX: always otherwise.
    assert!(!wants_interrupt(&q, &m, 3));
    assert!(wants_interrupt(&q, &m, 0));
    q.set_event_idx(true);
    // used_event sits after the available ring's 16 entries (`start()` is the ring's).
    let used_event = GuestAddress(vq.avail().start().0 + 2 * 16);
    for (event, want) in [(0u16, true), (1, true), (2, true), (3, false), (9, false)] {
        m.write_obj(event, used_event).unwrap();
        assert_eq!(wants_interrupt(&q, &m, 0), want, "used_event {event}");
    }
    // Across the wrap of the 16-bit index.
    q.set_next_used(2);
    m.write_obj(65535u16, used_event).unwrap();
    assert!(wants_interrupt(&q, &m, 65534));
}
