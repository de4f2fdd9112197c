//! The relay over a mock guest queue and a scripted virtiofsd that reads only the window.
//! Guest memory here is plain anonymous memory: nothing of it is shared with the backend.

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::shadow_server::ShadowServer;
use super::*;
use crate::devices::virtio::test_queue::{add_chains, used};

const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const MEM_END: u64 = 0x100_0000;
const BUF: u64 = 0x10_0000;
const REQUEST_QUEUE: usize = 1;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

struct Guest<'a> {
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    queue: Queue,
    next_desc: u16,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(0), 256);
        let queue = vq.create_queue().unwrap();
        Self {
            vq,
            queue,
            next_desc: 0,
        }
    }

    fn add(&mut self, chain: &[(u64, u32, u16)]) {
        add_chains(&self.vq, self.next_desc, &[chain]);
        self.next_desc += chain.len() as u16;
    }
}

fn forward(relay: &mut Relay, g: &mut Guest, mem: &GuestMemoryMmap) -> Forwarded {
    relay.forward(REQUEST_QUEUE, &mut g.queue, mem)
}

#[test]
fn a_request_goes_through_the_window_and_its_answer_comes_back() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let mut relay = Relay::new(2).unwrap();
    let mut server = ShadowServer::new(REQUEST_QUEUE);
    mem.write_slice(b"hello ", GuestAddress(BUF)).unwrap();
    mem.write_slice(b"world", GuestAddress(BUF + 0x100))
        .unwrap();
    g.add(&[
        (BUF, 6, R),
        (BUF + 0x100, 5, R),
        (BUF + 0x200, 4, W),
        (BUF + 0x300, 100, W),
    ]);

    let done = forward(&mut relay, &mut g, &mem);
    assert_eq!((done.sent, done.stalled), (1, false));
    assert!(done.refused.is_empty());
    assert_eq!(relay.in_flight(), 1);

    let reqs = server.take(&relay);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].bytes, b"hello world");
    // One writable descriptor as long as the guest's two.
    assert_eq!(reqs[0].writable.len(), 1);
    assert_eq!(reqs[0].writable[0].1, 104);
    // Nothing reached the guest yet.
    assert_eq!(relay.complete(REQUEST_QUEUE, &mut g.queue, &mem), 0);
    assert!(used(&g.vq).is_empty());

    server.answer(&relay, &reqs[0], b"0123456789", 10);
    assert_eq!(relay.complete(REQUEST_QUEUE, &mut g.queue, &mem), 1);
    assert_eq!(used(&g.vq), vec![(0, 10)]);
    let mut first = [0u8; 4];
    mem.read_slice(&mut first, GuestAddress(BUF + 0x200))
        .unwrap();
    assert_eq!(&first, b"0123");
    let mut second = [0u8; 7];
    mem.read_slice(&mut second, GuestAddress(BUF + 0x300))
        .unwrap();
    assert_eq!(&second, b"456789\0");
    assert_eq!(relay.in_flight(), 0);
    let arena = &relay.queues[REQUEST_QUEUE].arena;
    assert_eq!(arena.free_bytes(), arena.len());
}

#[test]
fn answers_out_of_order_reach_the_right_buffers() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let mut relay = Relay::new(2).unwrap();
    let mut server = ShadowServer::new(REQUEST_QUEUE);
    mem.write_slice(b"A", GuestAddress(BUF)).unwrap();
    mem.write_slice(b"B", GuestAddress(BUF + 0x10)).unwrap();
    g.add(&[(BUF, 1, R), (BUF + 0x1000, 16, W)]);
    g.add(&[(BUF + 0x10, 1, R), (BUF + 0x2000, 16, W)]);
    assert_eq!(forward(&mut relay, &mut g, &mem).sent, 2);
    let reqs = server.take(&relay);
    assert_eq!(
        (reqs[0].bytes.as_slice(), reqs[1].bytes.as_slice()),
        (&b"A"[..], &b"B"[..])
    );

    server.answer(&relay, &reqs[1], b"for B", 5);
    assert_eq!(relay.complete(REQUEST_QUEUE, &mut g.queue, &mem), 1);
    server.answer(&relay, &reqs[0], b"for A!", 6);
    assert_eq!(relay.complete(REQUEST_QUEUE, &mut g.queue, &mem), 1);
    // Chain heads 2 (B's) then 0 (A's).
    assert_eq!(used(&g.vq), vec![(2, 5), (0, 6)]);
    let mut a = [0u8; 6];
    mem.read_slice(&mut a, GuestAddress(BUF + 0x1000)).unwrap();
    assert_eq!(&a, b"for A!");
    let mut b = [0u8; 5];
    mem.read_slice(&mut b, GuestAddress(BUF + 0x2000)).unwrap();
    assert_eq!(&b, b"for B");
}

#[test]
fn malformed_requests_are_returned_unanswered() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let mut relay = Relay::new(2).unwrap();
    let mut server = ShadowServer::new(REQUEST_QUEUE);
    g.add(&[(BUF, 16, W), (BUF + 0x100, 16, R)]);
    g.add(&[(MEM_END - 8, 16, R)]);
    g.add(&[(BUF, 16, R), (MEM_END + 0x1000, 16, W)]);
    g.add(&[(BUF, 0, R)]);
    g.add(&[(BUF, 16, R), (BUF, 8 << 20, W)]);
    // A good one after them still goes through.
    g.add(&[(BUF, 16, R), (BUF + 0x100, 16, W)]);

    let done = forward(&mut relay, &mut g, &mem);
    assert_eq!(done.sent, 1);
    assert_eq!(
        done.refused,
        vec![
            RefusedRequest::ReadableAfterWritable,
            RefusedRequest::OutOfMemory {
                addr: MEM_END - 8,
                len: 16
            },
            RefusedRequest::OutOfMemory {
                addr: MEM_END + 0x1000,
                len: 16
            },
            RefusedRequest::Empty,
            RefusedRequest::TooLarge(16 + (8 << 20), REQUEST_ARENA),
        ]
    );
    assert_eq!(used(&g.vq), vec![(0, 0), (2, 0), (3, 0), (5, 0), (6, 0)]);
    // Nothing of theirs is held: the arena has only the good request's bytes.
    assert_eq!(relay.in_flight(), 1);
    let arena = &relay.queues[REQUEST_QUEUE].arena;
    assert_eq!(arena.free_bytes(), arena.len() - 64);
    assert_eq!(server.take(&relay).len(), 1);
}

#[test]
fn a_full_arena_leaves_requests_in_the_guest_ring_until_answers_free_it() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let mut relay = Relay::new(2).unwrap();
    let mut server = ShadowServer::new(REQUEST_QUEUE);
    // Three reads of 1.5 MiB: two fit the 4 MiB arena.
    let big = 3 << 19;
    for k in 0..3u64 {
        g.add(&[(BUF + k * 0x10, 16, R), (BUF + 0x10_0000, big, W)]);
    }
    let done = forward(&mut relay, &mut g, &mem);
    assert_eq!((done.sent, done.stalled), (2, true));
    // The third is still the guest's next available chain.
    assert_eq!(g.queue.next_avail(), 2);
    // Kicked again, nothing changes.
    let done = forward(&mut relay, &mut g, &mem);
    assert_eq!((done.sent, done.stalled), (0, true));

    let reqs = server.take(&relay);
    assert_eq!(reqs.len(), 2);
    server.answer(&relay, &reqs[0], &[7; 100], 100);
    assert_eq!(relay.complete(REQUEST_QUEUE, &mut g.queue, &mem), 1);
    let done = forward(&mut relay, &mut g, &mem);
    assert_eq!((done.sent, done.stalled), (1, false));
    assert_eq!(server.take(&relay).len(), 1);
}

#[test]
fn at_most_half_the_shadow_ring_is_in_flight() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let mut relay = Relay::new(2).unwrap();
    let limit = usize::from(SHADOW_SIZE / 2);
    for _ in 0..=limit {
        g.add(&[(BUF, 8, R)]);
    }
    let done = forward(&mut relay, &mut g, &mem);
    assert_eq!((done.sent, done.stalled), (limit, true));
    assert_eq!(relay.in_flight(), limit);
}

#[test]
fn an_answer_longer_than_the_buffers_or_for_nothing_held_is_contained() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let mut relay = Relay::new(2).unwrap();
    let mut server = ShadowServer::new(REQUEST_QUEUE);
    g.add(&[(BUF, 8, R), (BUF + 0x100, 8, W)]);
    forward(&mut relay, &mut g, &mem);
    let req = server.take(&relay).remove(0);
    // virtiofsd claims more than the writable part: the guest gets at most its buffers.
    server.answer(&relay, &req, &[1; 8], 4096);
    assert_eq!(relay.complete(REQUEST_QUEUE, &mut g.queue, &mem), 1);
    assert_eq!(used(&g.vq), vec![(0, 8)]);
    // The same id again: no longer held, ignored.
    server.answer(&relay, &req, &[2; 8], 8);
    assert_eq!(relay.complete(REQUEST_QUEUE, &mut g.queue, &mem), 0);
    assert_eq!(used(&g.vq).len(), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(BUF + 0x100)).unwrap(), 1);
}

#[test]
fn write_only_and_read_only_requests_take_one_descriptor() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let mut relay = Relay::new(2).unwrap();
    let mut server = ShadowServer::new(REQUEST_QUEUE);
    mem.write_slice(b"forget", GuestAddress(BUF)).unwrap();
    g.add(&[(BUF, 6, R)]);
    g.add(&[(BUF + 0x100, 32, W)]);
    forward(&mut relay, &mut g, &mem);
    let reqs = server.take(&relay);
    assert_eq!(
        (reqs[0].bytes.as_slice(), reqs[0].writable.len()),
        (&b"forget"[..], 0)
    );
    assert_eq!((reqs[1].bytes.len(), reqs[1].writable.len()), (0, 1));
    server.answer(&relay, &reqs[0], &[], 0);
    server.answer(&relay, &reqs[1], b"x", 1);
    assert_eq!(relay.complete(REQUEST_QUEUE, &mut g.queue, &mem), 2);
    assert_eq!(used(&g.vq), vec![(0, 0), (1, 1)]);
}

#[test]
fn reset_forgets_what_virtiofsd_held_and_clears_the_rings() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let mut relay = Relay::new(2).unwrap();
    g.add(&[(BUF, 8, R)]);
    forward(&mut relay, &mut g, &mem);
    assert_eq!(relay.in_flight(), 1);
    relay.reset();
    assert_eq!(relay.in_flight(), 0);
    let (_, avail, _) = relay.rings(REQUEST_QUEUE).unwrap();
    assert_eq!(
        relay
            .window()
            .read_obj::<u16>(GuestAddress(avail + 2))
            .unwrap(),
        0
    );
    // A fresh server sees a fresh ring.
    let mut g = Guest::new(&mem);
    g.add(&[(BUF, 8, R)]);
    forward(&mut relay, &mut g, &mem);
    assert_eq!(ShadowServer::new(REQUEST_QUEUE).take(&relay).len(), 1);
}

#[test]
fn requests_spanning_guest_regions_are_copied_whole() {
    // Two regions back to back: a buffer across the boundary.
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x20_0000),
        (GuestAddress(0x20_0000), 0x20_0000),
    ])
    .unwrap();
    let mut g = Guest::new(&mem);
    let mut relay = Relay::new(2).unwrap();
    let mut server = ShadowServer::new(REQUEST_QUEUE);
    let at = 0x20_0000 - 3;
    mem.write_slice(b"abcdef", GuestAddress(at)).unwrap();
    g.add(&[(at, 6, R), (at, 6, W)]);
    forward(&mut relay, &mut g, &mem);
    let req = server.take(&relay).remove(0);
    assert_eq!(req.bytes, b"abcdef");
    server.answer(&relay, &req, b"UVWXYZ", 6);
    relay.complete(REQUEST_QUEUE, &mut g.queue, &mem);
    let mut back = [0u8; 6];
    mem.read_slice(&mut back, GuestAddress(at)).unwrap();
    assert_eq!(&back, b"UVWXYZ");
}
