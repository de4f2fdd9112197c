//! Fuzzes the virtio-fs relay (`husk_vmm::devices::virtio::fs::relay`): a guest request
//! queue built from the input (useful and random addresses, lengths and flags, several
//! chains) is forwarded to the shadow ring; a scripted virtiofsd answers what it finds, in
//! the input's order and with the input's used lengths (some past the buffers), and
//! sometimes names a descriptor it does not hold; the answers are completed, and the pass
//! repeats until the guest ring is drained. Looks for panics and hangs, and checks that
//! every chain comes back, nothing stays held, and no used length exceeds the arena.

#![no_main]

use husk_vmm::devices::virtio::fs::relay::Relay;
use husk_vmm::devices::virtio::fs::shadow_server::ShadowServer;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Two adjacent regions (buffers may span them), a hole, a small third one.
const REGIONS: [(u64, usize); 3] = [(0, 0x2_0000), (0x2_0000, 0x2_0000), (0x5_0000, 0x1000)];
/// Buffers the input points at: from here to the end of the second region.
const BUFFERS: u64 = 0x1_0000;
const SPAN_END: u64 = 0x5_1000;
const QUEUE_SIZE: u16 = 64;
const FILL: u8 = 0xa5;
const REQUEST_QUEUE: usize = 1;

#[derive(Arbitrary, Debug)]
enum Addr {
    Buffer(u16),
    Span(u32),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Len {
    Small(u8),
    Page,
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
struct FuzzDescriptor {
    addr: Addr,
    len: Len,
    writable: bool,
    raw_flags: Option<u16>,
}

impl FuzzDescriptor {
    fn raw(&self, next: Option<u16>) -> RawDescriptor {
        let addr = match self.addr {
            Addr::Buffer(off) => BUFFERS + u64::from(off),
            Addr::Span(x) => u64::from(x) % SPAN_END,
            Addr::Raw(a) => a,
        };
        let len = match self.len {
            Len::Small(n) => u32::from(n),
            Len::Page => 4096,
            Len::Raw(n) => n,
        };
        let mut flags = if self.writable {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        if let Some(f) = self.raw_flags {
            flags = f;
        }
        match next {
            Some(n) => RawDescriptor::from(Descriptor::new(addr, len, flags | 1, n)),
            None => RawDescriptor::from(Descriptor::new(
                addr,
                len,
                flags & !(VRING_DESC_F_NEXT as u16),
                0,
            )),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Answer {
    /// Which of the taken requests (modulo their number) is answered next.
    pick: u8,
    /// The used length virtiofsd reports (clamped by nothing).
    used_len: u32,
    /// Answer a descriptor id that is not held instead.
    bogus_id: Option<u16>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    chain_lengths: Vec<u8>,
    descriptors: Vec<FuzzDescriptor>,
    answers: Vec<Answer>,
}

fuzz_target!(|input: Input| {
    let Ok(mem) =
        GuestMemoryMmap::<()>::from_ranges(&REGIONS.map(|(a, len)| (GuestAddress(a), len)))
    else {
        return;
    };
    for (a, len) in REGIONS {
        let _ = mem.write_slice(&vec![FILL; len], GuestAddress(a));
    }
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    let mut table = Vec::new();
    let mut descs = input.descriptors.iter();
    'chains: for &n in input.chain_lengths.iter().take(usize::from(QUEUE_SIZE)) {
        let n = usize::from(n % 4) + 1;
        for k in 0..n {
            let (Some(d), true) = (descs.next(), table.len() < usize::from(QUEUE_SIZE)) else {
                break 'chains;
            };
            let next = (k + 1 < n).then(|| (table.len() + 1) as u16);
            table.push(d.raw(next));
        }
    }
    if table.is_empty() || vq.add_desc_chains(&table, 0).is_err() {
        return;
    }
    let Ok(mut queue) = vq.create_queue::<Queue>() else {
        return;
    };
    let avail = vq.avail().idx().load();
    let Ok(mut relay) = Relay::new(2) else {
        return;
    };
    let mut server = ShadowServer::new(REQUEST_QUEUE);
    let mut answers = input.answers.iter();
    let mut held = Vec::new();
    // Bounded: each round either returns a chain or stops; a stalled relay is unblocked
    // by the answers, which the server always gives in the end.
    for _ in 0..(4 * usize::from(QUEUE_SIZE)) {
        let done = relay.forward(REQUEST_QUEUE, &mut queue, &mem);
        held.extend(server.take(&relay));
        if held.is_empty() && !done.stalled {
            break;
        }
        let (pick, used_len, bogus) = match answers.next() {
            Some(a) => (usize::from(a.pick), a.used_len, a.bogus_id),
            None => (0, 0, None),
        };
        if let Some(id) = bogus {
            // A descriptor virtiofsd does not hold: the relay must ignore it.
            if held.iter().all(|r| r.id != id) {
                let fake = husk_vmm::devices::virtio::fs::shadow_server::ShadowRequest {
                    id,
                    bytes: Vec::new(),
                    writable: Vec::new(),
                };
                server.answer(&relay, &fake, &[], used_len);
            }
        } else if !held.is_empty() {
            let req = held.remove(pick % held.len());
            let cap: u32 = req.writable.iter().map(|w| w.1).sum();
            let reply = vec![0x5a; cap.min(used_len) as usize];
            server.answer(&relay, &req, &reply, used_len);
        }
        relay.complete(REQUEST_QUEUE, &mut queue, &mem);
    }
    assert!(held.is_empty(), "virtiofsd still holds requests");
    assert_eq!(relay.in_flight(), 0);
    let used = vq.used().idx().load();
    assert_eq!(used, avail, "every available chain is returned");
    assert_eq!(used, queue.next_used());
    for i in 0..used {
        let e = vq
            .used()
            .ring()
            .ref_at(usize::from(i % QUEUE_SIZE))
            .unwrap()
            .load();
        assert!(u64::from(e.len()) <= husk_vmm::devices::virtio::fs::relay::REQUEST_ARENA);
    }
});
