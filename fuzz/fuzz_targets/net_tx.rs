//! Fuzzes the virtio-net transmit path: a descriptor table built from the input (useful
//! addresses, lengths and flags as well as random ones, several chains in the available
//! ring) over guest memory holding a virtio-net header and a frame, sent by
//! `husk_vmm::devices::virtio::net::tx::process_tx` to a fake tap that takes frames,
//! answers EAGAIN or fails as the input says. Looks for panics and hangs, and checks that
//! every chain is accounted for and every frame written is bounded and was in guest memory.

#![no_main]

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use husk_vmm::devices::virtio::net::tap::TapIo;
use husk_vmm::devices::virtio::net::tx::{process_tx, TxState, TxWait, MAX_TX_LEN};
use husk_vmm::devices::virtio::net::{NetMetrics, MIN_FRAME_LEN, VNET_HDR_LEN};
use husk_vmm::devices::virtio::ratelimit::WarnLimiter;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: two adjacent regions (buffers may span them), a hole, a small third one.
const REGIONS: [(u64, usize); 3] = [(0, 0x2_0000), (0x2_0000, 0x2_0000), (0x5_0000, 0x1000)];
/// The virtio-net header the input writes, and a frame window crossing the region boundary.
const HEADER_ADDR: u64 = 0x1_0000;
const FRAME_WINDOW: u64 = 0x1_8000;
const SPAN_END: u64 = 0x5_1000;
const QUEUE_SIZE: u16 = 64;
/// Each frame written starts with this byte pattern in guest memory (the filler).
const FILL: u8 = 0xa5;

#[derive(Arbitrary, Debug)]
enum Addr {
    Header,
    Frame(u16),
    Span(u32),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Len {
    Header,
    /// A header and an Ethernet header less one, or exactly.
    Small(u8),
    Mtu,
    Max,
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Flags {
    Readable,
    Writable,
    Raw(u16),
}

#[derive(Arbitrary, Debug)]
struct FuzzDescriptor {
    addr: Addr,
    len: Len,
    flags: Flags,
    next: u16,
}

impl FuzzDescriptor {
    fn raw(&self, linked_next: Option<u16>) -> RawDescriptor {
        let addr = match self.addr {
            Addr::Header => HEADER_ADDR,
            Addr::Frame(off) => FRAME_WINDOW + u64::from(off),
            Addr::Span(x) => u64::from(x) % SPAN_END,
            Addr::Raw(a) => a,
        };
        let len = match self.len {
            Len::Header => VNET_HDR_LEN as u32,
            Len::Small(n) => u32::from(n % 40),
            Len::Mtu => 1514,
            Len::Max => MAX_TX_LEN as u32,
            Len::Raw(n) => n,
        };
        let mut flags = match self.flags {
            Flags::Readable => 0,
            Flags::Writable => VRING_DESC_F_WRITE as u16,
            Flags::Raw(f) => f,
        };
        let next = match linked_next {
            Some(n) => {
                flags |= VRING_DESC_F_NEXT as u16;
                n
            }
            None if matches!(self.flags, Flags::Raw(_)) => self.next,
            None => {
                flags &= !(VRING_DESC_F_NEXT as u16);
                0
            }
        };
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum TapAnswer {
    Take,
    WouldBlock,
    Fail,
}

#[derive(Arbitrary, Debug)]
struct Input {
    header: [u8; 12],
    /// Descriptors per chain (1..=4 each), laid out in the table one chain after another.
    chain_lengths: Vec<u8>,
    descriptors: Vec<FuzzDescriptor>,
    /// What the tap answers to successive writes (then it takes everything).
    answers: Vec<TapAnswer>,
    budget: u8,
}

struct FakeTap {
    answers: VecDeque<TapAnswer>,
    written: Vec<Vec<u8>>,
}

impl TapIo for FakeTap {
    fn read_frame(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        match self.answers.pop_front().unwrap_or(TapAnswer::Take) {
            TapAnswer::Take => {
                self.written.push(frame.to_vec());
                Ok(frame.len())
            }
            TapAnswer::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
            // EINVAL, as for a header the tap refuses.
            TapAnswer::Fail => Err(io::Error::from_raw_os_error(22)),
        }
    }

    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|input: Input| {
    let Ok(mem) =
        GuestMemoryMmap::<()>::from_ranges(&REGIONS.map(|(a, len)| (GuestAddress(a), len)))
    else {
        return;
    };
    // Filler everywhere the buffers may point, then the header.
    for (a, len) in REGIONS {
        let _ = mem.write_slice(&vec![FILL; len], GuestAddress(a));
    }
    let _ = mem.write_slice(&input.header, GuestAddress(HEADER_ADDR));

    let vq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    let mut table = Vec::new();
    let mut descs = input.descriptors.iter();
    'chains: for &n in input.chain_lengths.iter().take(usize::from(QUEUE_SIZE)) {
        let n = usize::from(n % 4) + 1;
        for k in 0..n {
            let Some(d) = descs.next() else {
                break 'chains;
            };
            if table.len() == usize::from(QUEUE_SIZE) {
                break 'chains;
            }
            let last = k + 1 == n;
            let next = (!last).then(|| (table.len() + 1) as u16);
            table.push(d.raw(next));
        }
    }
    if table.is_empty() {
        return;
    }
    // The last chain may have been cut short; its last descriptor then still says NEXT,
    // which the device must treat as a broken chain.
    if vq.add_desc_chains(&table, 0).is_err() {
        return;
    }

    let Ok(mut queue) = vq.create_queue::<Queue>() else {
        return;
    };
    let mut tap = FakeTap {
        answers: input.answers.iter().copied().take(64).collect(),
        written: Vec::new(),
    };
    let mut state = TxState::default();
    let metrics = NetMetrics::default();
    let mut warn = WarnLimiter::new(Duration::from_secs(3600));
    let budget = usize::from(input.budget % 16) + 1;
    let avail = vq.avail().idx().load();
    // Passes until the queue is drained and nothing is held (bounded: each pass either
    // returns a chain or stops on the tap, whose EAGAINs are finite).
    for _ in 0..(2 * usize::from(QUEUE_SIZE) + 70) {
        let pass = process_tx(
            &mut queue, &mem, &mut tap, &mut state, &metrics, &mut warn, budget,
        );
        assert!(pass.used <= budget);
        if pass.wait == TxWait::Guest && !state.is_blocked() {
            break;
        }
    }
    assert!(
        !state.is_blocked(),
        "a frame is still held after the tap took everything"
    );

    let used = vq.used().idx().load();
    assert_eq!(used, queue.next_used());
    assert_eq!(used, avail, "every available chain is returned");
    let frames = metrics.tx_frames.load(Ordering::Relaxed);
    let dropped = metrics.tx_dropped.load(Ordering::Relaxed);
    let malformed = metrics.tx_malformed.load(Ordering::Relaxed);
    assert_eq!(frames + dropped + malformed, u64::from(used));
    assert_eq!(frames as usize, tap.written.len());
    let mut bytes = 0u64;
    for f in &tap.written {
        assert!(f.len() >= VNET_HDR_LEN + MIN_FRAME_LEN && f.len() <= MAX_TX_LEN);
        bytes += (f.len() - VNET_HDR_LEN) as u64;
    }
    assert_eq!(bytes, metrics.tx_bytes.load(Ordering::Relaxed));
    for i in 0..used {
        let e = vq
            .used()
            .ring()
            .ref_at(usize::from(i % QUEUE_SIZE))
            .unwrap()
            .load();
        assert_eq!(e.len(), 0, "tx chains are returned with nothing written");
    }
});
