//! The virtio-fs relay: virtiofsd sees a small shared window of ours, never guest RAM.
//!
//! vhost-user lets a backend serve the guest's rings itself, but then it must map all of
//! guest RAM from a shareable fd. That costs twice: a compromised virtiofsd can read and
//! write anything in the guest, and guest RAM must be a shared memfd, so a VM restored
//! from a snapshot cannot map the snapshot's memory file `MAP_PRIVATE` (virtiofsd would
//! see the file, not the guest's writes) and every restored pod held a full private copy
//! of the template's memory.
//!
//! Here husk-vmm serves the guest's queues (like any of its in-process devices) and hands
//! virtiofsd one shadow queue per guest queue, in a memfd window of its own: rings, and an
//! arena for the requests' bytes. A request (a descriptor chain of the guest) is copied
//! into the arena as at most two descriptors, one readable with everything the guest wrote
//! for virtiofsd, one writable as long as all the guest's writable buffers; virtiofsd's
//! answer is copied back into those buffers in order, and the guest's chain is returned
//! with the length virtiofsd wrote. The cost is one copy of each request's bytes and a
//! pass through the VMM's event loop; QEMU's shadow virtqueues (vhost-vdpa) do the same
//! to stand between a guest and a device.
//!
//! Window layout: for queue `q`, its rings at `q * RING_AREA` (descriptor table, available
//! ring, used ring, each where the virtio spec's alignment wants it), then one arena per
//! queue. Window addresses are what virtiofsd takes for guest physical addresses (the
//! memory table has one region, the window, at 0).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vhost::VhostUserMemoryRegionInfo;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice,
};

use super::arena::Arena;
use crate::devices::virtio::ratelimit::WarnLimiter;

/// Descriptors in each shadow ring; a request takes two, so at most half as many requests
/// are with virtiofsd at once per queue.
pub const SHADOW_SIZE: u16 = 256;
/// Bytes of window per queue for its rings.
const RING_AREA: u64 = 0x2000;
const AVAIL_OFFSET: u64 = 0x1000;
const USED_OFFSET: u64 = 0x1400;
/// The arena of the high-priority queue (FUSE_FORGET, FUSE_INTERRUPT: tens of bytes each).
pub const HIPRIO_ARENA: u64 = 256 << 10;
/// The arena of each request queue: room for three of the largest requests Linux sends
/// (256 pages of FUSE_WRITE or FUSE_READ data, plus headers) at once.
pub const REQUEST_ARENA: u64 = 4 << 20;

/// What one pass over a guest queue did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Requests handed to virtiofsd (its kick eventfd must be signalled).
    pub sent: usize,
    /// Why each request returned to the guest at once, unanswered, was malformed (the
    /// guest's interrupt must be raised if there is any).
    pub refused: Vec<RefusedRequest>,
    /// The pass stopped with requests left in the guest's ring: no room in the arena or
    /// the shadow ring until virtiofsd answers some.
    pub stalled: bool,
}

/// Why a guest's request was returned unanswered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefusedRequest {
    #[error("a readable buffer follows a writable one")]
    ReadableAfterWritable,
    #[error("the request carries no buffers")]
    Empty,
    #[error("the request's {0} bytes exceed the queue's {1}-byte relay arena")]
    TooLarge(u64, u64),
    #[error("a buffer at {addr:#x} ({len} bytes) is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
}

/// A guest request that virtiofsd holds.
#[derive(Debug)]
struct InFlight {
    /// The guest chain's head, returned to the guest when virtiofsd answers.
    head: u16,
    /// The guest's writable buffers, in chain order.
    writable: Vec<(GuestAddress, u32)>,
    /// The request's bytes in the window: `readable` bytes, then the writable part.
    at: u64,
    readable: u64,
    len: u64,
}

/// One guest queue's shadow in the window.
#[derive(Debug)]
struct Shadow {
    rings: u64,
    arena: Arena,
    /// Indexed by request slot; slot `s` uses descriptors `2s` and `2s + 1`.
    slots: Vec<Option<InFlight>>,
    free_slots: Vec<u16>,
    /// The next available index we publish, and the used index we have read up to.
    avail_idx: u16,
    used_seen: u16,
}

impl Shadow {
    fn new(rings: u64, arena_at: u64, arena_len: u64) -> Self {
        let slots = SHADOW_SIZE / 2;
        Self {
            rings,
            arena: Arena::new(arena_at, arena_len),
            slots: (0..slots).map(|_| None).collect(),
            // Popped from the end: slot 0 first, so a quiet queue reuses the same pages.
            free_slots: (0..slots).rev().collect(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn desc_table(&self) -> u64 {
        self.rings
    }
    fn avail_ring(&self) -> u64 {
        self.rings + AVAIL_OFFSET
    }
    fn used_ring(&self) -> u64 {
        self.rings + USED_OFFSET
    }
    fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }
}

/// The shadow queues of one virtio-fs device and the window they live in.
pub struct Relay {
    window: GuestMemoryMmap,
    /// The window's memfd and where we map it, for virtiofsd's memory table.
    window_file: File,
    window_host: u64,
    queues: Vec<Shadow>,
    /// virtiofsd naming descriptors it does not hold (a bug, or a compromised virtiofsd):
    /// logged at most once a second.
    warn: WarnLimiter,
}

impl Relay {
    /// A window for `num_queues` queues (the first the high-priority one), in a new memfd.
    pub fn new(num_queues: usize) -> io::Result<Self> {
        let arenas_at = RING_AREA * num_queues as u64;
        let mut at = arenas_at;
        let queues: Vec<Shadow> = (0..num_queues)
            .map(|q| {
                let len = if q == super::HIPRIO_QUEUE {
                    HIPRIO_ARENA
                } else {
                    REQUEST_ARENA
                };
                let shadow = Shadow::new(RING_AREA * q as u64, at, len);
                at += len;
                shadow
            })
            .collect();
        let window_file = crate::guest_ram::memfd(c"husk-fs-relay", at)?;
        let window = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            at as usize,
            Some(FileOffset::new(window_file.try_clone()?, 0)),
        )])
        .map_err(io::Error::other)?;
        let window_host = window
            .get_host_address(GuestAddress(0))
            .map_err(io::Error::other)? as u64;
        Ok(Self {
            window,
            window_file,
            window_host,
            queues,
            warn: WarnLimiter::new(Duration::from_secs(1)),
        })
    }

    /// The window, in its addresses (virtiofsd's guest physical addresses).
    pub fn window(&self) -> &GuestMemoryMmap {
        &self.window
    }

    /// virtiofsd's whole memory table: the window, at address 0.
    pub fn memory_table(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: self.window.last_addr().0 + 1,
            userspace_addr: self.window_host,
            mmap_offset: 0,
            mmap_handle: self.window_file.as_raw_fd(),
        }
    }

    /// Queue `q`'s shadow rings as window addresses: descriptor table, available ring,
    /// used ring.
    pub fn rings(&self, q: usize) -> Option<(u64, u64, u64)> {
        let s = self.queues.get(q)?;
        Some((s.desc_table(), s.avail_ring(), s.used_ring()))
    }

    /// Requests virtiofsd holds, over all queues.
    pub fn in_flight(&self) -> usize {
        self.queues.iter().map(Shadow::in_flight).sum()
    }

    /// One line per queue for the state dumps.
    pub fn describe(&self, q: usize) -> String {
        let Some(s) = self.queues.get(q) else {
            return String::new();
        };
        let used = self
            .window
            .load::<u16>(GuestAddress(s.used_ring() + 2), Ordering::Acquire)
            .map_or_else(|e| format!("({e})"), |v| v.to_string());
        format!(
            "relay: {} request(s) with virtiofsd, shadow avail_idx={} used_idx={used} \
             read up to {}, arena {} of {} bytes free",
            s.in_flight(),
            s.avail_idx,
            s.used_seen,
            s.arena.free_bytes(),
            s.arena.len()
        )
    }

    /// Forgets every request and clears the rings (virtiofsd has stopped them: the driver
    /// reset the device). The window's pages stay for the next activation.
    pub fn reset(&mut self) {
        for s in &mut self.queues {
            let fresh = Shadow::new(s.rings, s.arena.start(), s.arena.len());
            *s = fresh;
            let zeros = [0u8; RING_AREA as usize];
            if let Err(e) = self.window.write_slice(&zeros, GuestAddress(s.rings)) {
                tracing::warn!("virtio-fs relay: cannot clear the shadow rings: {e}");
            }
        }
    }

    /// Moves the guest's available requests on queue `q` to its shadow ring. Returns what
    /// was done.
    pub fn forward(&mut self, q: usize, guest: &mut Queue, mem: &GuestMemoryMmap) -> Forwarded {
        let mut done = Forwarded::default();
        let Some(shadow) = self.queues.get_mut(q) else {
            return done;
        };
        loop {
            let Some(&slot) = shadow.free_slots.last() else {
                done.stalled = true;
                break;
            };
            let chain = match guest.iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    tracing::debug!("virtio-fs relay: cannot read the available ring: {e}");
                    None
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let request = match Request::gather(chain, shadow.arena.len()) {
                Ok(r) => r,
                Err(e) => {
                    refuse(guest, mem, head, e, &mut done);
                    continue;
                }
            };
            let Some(at) = shadow.arena.alloc(request.len()) else {
                // Back in the guest's ring for the next pass, after virtiofsd answers.
                guest.go_to_previous_position();
                done.stalled = true;
                break;
            };
            if let Err(e) = request.copy_in(mem, &self.window, at) {
                shadow.arena.free(at, request.len());
                refuse(guest, mem, head, e, &mut done);
                continue;
            }
            shadow.free_slots.pop();
            let first = publish_descriptors(&self.window, shadow, slot, at, &request);
            let avail = shadow.avail_ring() + 4 + 2 * u64::from(shadow.avail_idx % SHADOW_SIZE);
            let _ = self.window.write_obj(first, GuestAddress(avail));
            shadow.avail_idx = shadow.avail_idx.wrapping_add(1);
            shadow.slots[usize::from(slot)] = Some(InFlight {
                head,
                at,
                readable: request.readable_len,
                len: request.len(),
                writable: request.writable,
            });
            done.sent += 1;
        }
        if done.sent > 0 {
            // The entries and descriptors before the index that makes them visible.
            let _ = self.window.store(
                shadow.avail_idx,
                GuestAddress(shadow.avail_ring() + 2),
                Ordering::Release,
            );
        }
        done
    }

    /// Returns what virtiofsd answered on queue `q` to the guest: copies each answer into
    /// the guest's buffers and adds the guest's chain to its used ring. Returns how many.
    pub fn complete(&mut self, q: usize, guest: &mut Queue, mem: &GuestMemoryMmap) -> usize {
        let Some(shadow) = self.queues.get_mut(q) else {
            return 0;
        };
        let used_ring = shadow.used_ring();
        let Ok(used_idx) = self
            .window
            .load::<u16>(GuestAddress(used_ring + 2), Ordering::Acquire)
        else {
            return 0;
        };
        let (mut returned, mut bogus) = (0, 0);
        while shadow.used_seen != used_idx {
            let entry = used_ring + 4 + 8 * u64::from(shadow.used_seen % SHADOW_SIZE);
            shadow.used_seen = shadow.used_seen.wrapping_add(1);
            let id = self.window.read_obj::<u32>(GuestAddress(entry));
            let len = self.window.read_obj::<u32>(GuestAddress(entry + 4));
            let (Ok(id), Ok(len)) = (id, len) else {
                continue;
            };
            let slot = id / 2;
            let Some(req) = shadow.slots.get_mut(slot as usize).and_then(Option::take) else {
                bogus += 1;
                continue;
            };
            shadow.free_slots.push(slot as u16);
            let answered = copy_out(&self.window, mem, &req, len);
            shadow.arena.free(req.at, req.len);
            if let Err(e) = guest.add_used(mem, req.head, answered) {
                tracing::debug!("virtio-fs relay: cannot add to the guest's used ring: {e}");
            }
            returned += 1;
        }
        if bogus > 0 {
            if let Some(dropped) = self.warn.allow() {
                tracing::warn!(
                    "virtio-fs relay: virtiofsd returned {bogus} descriptor(s) it does not \
                     hold ({dropped} more warnings dropped)"
                );
            }
        }
        returned
    }
}

/// Returns a malformed chain to the guest unanswered.
fn refuse(
    guest: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    why: RefusedRequest,
    done: &mut Forwarded,
) {
    if let Err(e) = guest.add_used(mem, head, 0) {
        tracing::debug!("virtio-fs relay: cannot add to the guest's used ring: {e}");
    }
    done.refused.push(why);
}

/// Writes slot `slot`'s descriptors for a request at `at`; returns the first one's index.
fn publish_descriptors(
    window: &GuestMemoryMmap,
    shadow: &Shadow,
    slot: u16,
    at: u64,
    request: &Request,
) -> u16 {
    let (readable, writable) = (2 * slot, 2 * slot + 1);
    let write = |index: u16, desc: SplitDescriptor| {
        let addr = shadow.desc_table() + 16 * u64::from(index);
        let _ = window.write_obj(desc, GuestAddress(addr));
    };
    // Both lengths fit: `gather` bounded the whole request by an arena of < 4 GiB.
    let wlen = request.writable_len() as u32;
    if wlen > 0 {
        write(
            writable,
            SplitDescriptor::new(
                at + request.readable_len,
                wlen,
                VRING_DESC_F_WRITE as u16,
                0,
            ),
        );
    }
    if request.readable_len == 0 {
        return writable;
    }
    let flags = if wlen > 0 {
        VRING_DESC_F_NEXT as u16
    } else {
        0
    };
    write(
        readable,
        SplitDescriptor::new(at, request.readable_len as u32, flags, writable),
    );
    readable
}

/// A guest chain's buffers, checked.
struct Request {
    readable: Vec<(GuestAddress, u32)>,
    readable_len: u64,
    writable: Vec<(GuestAddress, u32)>,
}

impl Request {
    fn gather<I>(chain: I, limit: u64) -> Result<Self, RefusedRequest>
    where
        I: Iterator<Item = SplitDescriptor>,
    {
        let mut r = Request {
            readable: Vec::new(),
            readable_len: 0,
            writable: Vec::new(),
        };
        let mut total = 0u64;
        for d in chain {
            total += u64::from(d.len());
            if total > limit {
                return Err(RefusedRequest::TooLarge(total, limit));
            }
            if d.is_write_only() {
                r.writable.push((d.addr(), d.len()));
            } else if !r.writable.is_empty() {
                return Err(RefusedRequest::ReadableAfterWritable);
            } else {
                r.readable.push((d.addr(), d.len()));
                r.readable_len += u64::from(d.len());
            }
        }
        if total == 0 {
            return Err(RefusedRequest::Empty);
        }
        Ok(r)
    }

    fn writable_len(&self) -> u64 {
        self.writable.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    fn len(&self) -> u64 {
        self.readable_len + self.writable_len()
    }

    /// Copies the readable buffers to `at` in the window, and checks that the writable
    /// ones are guest memory (before virtiofsd works on the request, not after).
    fn copy_in(
        &self,
        mem: &GuestMemoryMmap,
        window: &GuestMemoryMmap,
        at: u64,
    ) -> Result<(), RefusedRequest> {
        let mut pos = at;
        for &(addr, len) in &self.readable {
            copy(mem, addr, window, GuestAddress(pos), len as usize)
                .map_err(|()| outside(addr, len))?;
            pos += u64::from(len);
        }
        for &(addr, len) in &self.writable {
            if !mem.check_range(addr, len as usize) {
                return Err(outside(addr, len));
            }
        }
        Ok(())
    }
}

fn outside(addr: GuestAddress, len: u32) -> RefusedRequest {
    RefusedRequest::OutOfMemory { addr: addr.0, len }
}

/// Copies the first `len` bytes of virtiofsd's answer (at most the writable part) into
/// the guest's writable buffers in order; returns the bytes copied.
fn copy_out(window: &GuestMemoryMmap, mem: &GuestMemoryMmap, req: &InFlight, len: u32) -> u32 {
    let mut left = u64::from(len).min(req.len - req.readable);
    let mut from = req.at + req.readable;
    let mut copied = 0u32;
    for &(addr, buf_len) in &req.writable {
        if left == 0 {
            break;
        }
        let n = u64::from(buf_len).min(left);
        if copy(window, GuestAddress(from), mem, addr, n as usize).is_err() {
            // The guest's memory was checked when the request went out: only a guest
            // that changed its memory map since can get here; it gets what was copied.
            break;
        }
        copied += n as u32;
        left -= n;
        from += n;
    }
    copied
}

/// Copies `len` bytes between two memories, across their regions.
fn copy(
    src: &GuestMemoryMmap,
    from: GuestAddress,
    dst: &GuestMemoryMmap,
    to: GuestAddress,
    len: usize,
) -> Result<(), ()> {
    let mut to = to;
    for slice in GuestMemoryBackend::get_slices(src, from, len) {
        let slice: VolatileSlice<_> = slice.map_err(|_| ())?;
        let mut done = 0;
        for out in GuestMemoryBackend::get_slices(dst, to, slice.len()) {
            let out = out.map_err(|_| ())?;
            let part = slice.subslice(done, out.len()).map_err(|_| ())?;
            part.copy_to_volatile_slice(out);
            done += out.len();
        }
        to = GuestAddress(to.0 + slice.len() as u64);
    }
    Ok(())
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
