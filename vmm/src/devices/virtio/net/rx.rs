//! Receive: frames from the tap into the guest's rx buffers.
//!
//! The device holds at most one frame ([`RxState`]): it reads a frame from the tap only
//! when the previous one is in guest memory. When the guest has no (or not enough) rx
//! buffers the frame waits here and the tap is not read again, so further frames wait in
//! the tap's own queue (where the kernel's txqueuelen bounds them) until the guest adds
//! buffers and notifies the rx queue. Nothing is dropped for lack of buffers.
//!
//! With VIRTIO_NET_F_MRG_RXBUF a frame may span several chains (`num_buffers` in its
//! header says how many); without it a frame must fit one chain (the driver then posts
//! big buffers). The used entries of one frame are published together, with one store of
//! the used index, so the driver never sees a frame's first buffer without the rest.

use std::io;
use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::tap::TapIo;
use super::{NetMetrics, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::devices::virtio::ratelimit::WarnLimiter;

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Why an rx chain cannot take a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RxChainError {
    #[error("An rx descriptor is device-readable")]
    Readable,
    #[error("An rx descriptor at {addr:#x} of {len} bytes is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("The rx descriptor chain ends early (a loop or a bad next index)")]
    BrokenChain,
}

/// The receive half of a queue pair: the one frame read from the tap and not yet given to
/// the guest, and scratch space for the chains it is going to.
pub struct RxState {
    buf: Vec<u8>,
    /// Length of the frame in `buf` (vnet header included), if one is held.
    pending: Option<usize>,
    /// Writable buffers of the chains collected for the held frame.
    segments: Vec<(GuestAddress, u32)>,
    /// Per collected chain: its head, where its segments end in `segments`, its capacity.
    chains: Vec<(u16, usize, u64)>,
}

impl Default for RxState {
    fn default() -> Self {
        Self {
            buf: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            pending: None,
            segments: Vec::new(),
            chains: Vec::new(),
        }
    }
}

impl RxState {
    /// Whether a frame read from the tap waits for guest buffers.
    pub fn holds_frame(&self) -> bool {
        self.pending.is_some()
    }

    /// Forgets the held frame (device reset); returns whether there was one.
    pub fn drop_pending(&mut self) -> bool {
        self.pending.take().is_some()
    }
}

/// What stopped an rx pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxWait {
    /// The tap has no frame: wait for EPOLLIN.
    Tap,
    /// A frame waits for guest rx buffers: wait for an rx queue notification (and do not
    /// poll the tap meanwhile).
    Guest,
    /// The pass used its budget: run another after the loop's other events.
    Budget,
    /// The tap failed (for instance its interface was deleted): stop reading it.
    TapError,
}

/// The result of one rx pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxPass {
    /// Chains added to the used ring (the caller raises the interrupt if any).
    pub used: usize,
    pub wait: RxWait,
}

/// Moves frames from the tap to the guest until the tap is empty, the guest runs out of
/// buffers, or `budget` frames were delivered.
#[allow(clippy::too_many_arguments)]
pub fn process_rx<M: GuestMemory, T: TapIo>(
    queue: &mut Queue,
    mem: &M,
    tap: &mut T,
    state: &mut RxState,
    mrg_rxbuf: bool,
    metrics: &NetMetrics,
    warn: &mut WarnLimiter,
    budget: usize,
) -> RxPass {
    let mut used = 0;
    let mut frames = 0;
    loop {
        let len = match state.pending {
            Some(len) => len,
            None => {
                if frames == budget {
                    return RxPass {
                        used,
                        wait: RxWait::Budget,
                    };
                }
                match tap.read_frame(&mut state.buf) {
                    Ok(n) if n < VNET_HDR_LEN => {
                        metrics.rx_dropped.fetch_add(1, Ordering::Relaxed);
                        if let Some(d) = warn.allow() {
                            tracing::warn!(
                                "virtio-net: dropping a {n}-byte read from the tap, shorter \
                                 than a vnet header ({d} more dropped)"
                            );
                        }
                        continue;
                    }
                    Ok(n) => {
                        state.pending = Some(n);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return RxPass {
                            used,
                            wait: RxWait::Tap,
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!("virtio-net: cannot read from the tap, stopping rx: {e}");
                        return RxPass {
                            used,
                            wait: RxWait::TapError,
                        };
                    }
                }
            }
        };
        match deliver(queue, mem, state, len, mrg_rxbuf, metrics, warn) {
            Delivery::Done(chains) => {
                state.pending = None;
                used += chains;
                frames += 1;
                metrics.rx_frames.fetch_add(1, Ordering::Relaxed);
                metrics
                    .rx_bytes
                    .fetch_add((len - VNET_HDR_LEN) as u64, Ordering::Relaxed);
            }
            Delivery::Dropped(chains) => {
                state.pending = None;
                used += chains;
                frames += 1;
                metrics.rx_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Delivery::NoBuffers(chains) => {
                used += chains;
                metrics.rx_waits.fetch_add(1, Ordering::Relaxed);
                return RxPass {
                    used,
                    wait: RxWait::Guest,
                };
            }
        }
    }
}

/// How delivering one frame ended; each carries the chains put in the used ring.
enum Delivery {
    Done(usize),
    /// The frame cannot fit the guest's buffers at all (no MRG_RXBUF and a small buffer,
    /// or larger than the whole ring): it was dropped, the chains returned empty.
    Dropped(usize),
    /// Not enough buffers yet; the frame stays held, the collected chains stay available.
    NoBuffers(usize),
}

fn deliver<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    state: &mut RxState,
    len: usize,
    mrg_rxbuf: bool,
    metrics: &NetMetrics,
    warn: &mut WarnLimiter,
) -> Delivery {
    let max_chains = if mrg_rxbuf {
        usize::from(queue.size())
    } else {
        1
    };
    state.segments.clear();
    state.chains.clear();
    let mut start = queue.next_avail();
    let mut capacity = 0u64;
    let mut returned = 0;
    while capacity < len as u64 {
        if state.chains.len() == max_chains {
            // Even this many buffers do not hold the frame.
            returned += give_back(queue, mem, state, warn);
            if let Some(d) = warn.allow() {
                tracing::warn!(
                    "virtio-net: dropping a {len}-byte rx frame that does not fit {} guest \
                     buffer(s) of {capacity} bytes ({d} more dropped)",
                    max_chains
                );
            }
            return Delivery::Dropped(returned);
        }
        let chain = match queue.iter(mem) {
            Ok(mut avail) => avail.next(),
            Err(e) => {
                if let Some(d) = warn.allow() {
                    tracing::warn!(
                        "virtio-net: cannot read the rx available ring: {e} ({d} more dropped)"
                    );
                }
                None
            }
        };
        let Some(chain) = chain else {
            // Wait for more buffers; the collected ones are taken again next time.
            queue.set_next_avail(start);
            return Delivery::NoBuffers(returned);
        };
        let head = chain.head_index();
        let seg_start = state.segments.len();
        let mut chain_cap = 0u64;
        let mut last_has_next = false;
        let mut bad = None;
        for d in chain {
            last_has_next = d.has_next();
            if !d.is_write_only() {
                bad = Some(RxChainError::Readable);
                break;
            }
            if d.len() == 0 {
                continue;
            }
            if !mem.check_range(d.addr(), d.len() as usize, Permissions::Write) {
                bad = Some(RxChainError::OutOfMemory {
                    addr: d.addr().raw_value(),
                    len: d.len(),
                });
                break;
            }
            state.segments.push((d.addr(), d.len()));
            chain_cap += u64::from(d.len());
        }
        if bad.is_none() && last_has_next {
            bad = Some(RxChainError::BrokenChain);
        }
        if let Some(e) = bad {
            // Return what was collected and this chain empty, and start the frame over
            // with the chains after it.
            state.segments.truncate(seg_start);
            metrics.rx_malformed.fetch_add(1, Ordering::Relaxed);
            if let Some(d) = warn.allow() {
                tracing::warn!("virtio-net: returning a bad rx chain: {e} ({d} more dropped)");
            }
            returned += give_back(queue, mem, state, warn);
            returned += publish(queue, mem, &[(head, 0)], warn);
            start = queue.next_avail();
            capacity = 0;
            continue;
        }
        state.chains.push((head, state.segments.len(), chain_cap));
        capacity += chain_cap;
    }

    // The chains hold the frame: say how many, copy it, publish them together.
    let n = state.chains.len() as u16;
    state.buf[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&n.to_le_bytes());
    let mut entries = Vec::with_capacity(state.chains.len());
    let mut pos = 0usize;
    let mut seg = 0usize;
    for &(head, seg_end, _) in &state.chains {
        let mut written = 0u32;
        while seg < seg_end && pos < len {
            let (addr, seg_len) = state.segments[seg];
            let k = (len - pos).min(seg_len as usize);
            if let Err(e) = mem.write_slice(&state.buf[pos..pos + k], addr) {
                // The range was checked; should the write fail anyway, the frame is lost.
                if let Some(d) = warn.allow() {
                    tracing::warn!("virtio-net: cannot write an rx buffer: {e} ({d} more dropped)");
                }
            }
            pos += k;
            written += k as u32;
            seg += 1;
        }
        seg = seg_end;
        entries.push((head, written));
    }
    returned += publish(queue, mem, &entries, warn);
    Delivery::Done(returned)
}

/// Returns the collected chains with nothing written.
fn give_back<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    state: &mut RxState,
    warn: &mut WarnLimiter,
) -> usize {
    let entries: Vec<(u16, u32)> = state.chains.iter().map(|&(h, _, _)| (h, 0)).collect();
    state.chains.clear();
    state.segments.clear();
    publish(queue, mem, &entries, warn)
}

/// Writes used entries and then moves the used index once (release), so the driver sees
/// all of them or none. Returns how many were published.
fn publish<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    entries: &[(u16, u32)],
    warn: &mut WarnLimiter,
) -> usize {
    if entries.is_empty() {
        return 0;
    }
    let size = queue.size();
    let ring = GuestAddress(queue.used_ring());
    let mut next = Wrapping(queue.next_used());
    for &(head, len) in entries {
        let slot = u64::from(next.0 % size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        // The used ring was checked to lie in guest memory at activation.
        let written = ring
            .checked_add(4 + 8 * slot)
            .is_some_and(|a| mem.write_slice(&elem, a).is_ok());
        if !written {
            if let Some(d) = warn.allow() {
                tracing::warn!("virtio-net: cannot write the rx used ring ({d} more dropped)");
            }
            return 0;
        }
        next += Wrapping(1);
    }
    queue.set_next_used(next.0);
    let stored = ring.checked_add(2).map(|idx| {
        mem.store(
            u16::to_le(next.0),
            idx,
            std::sync::atomic::Ordering::Release,
        )
    });
    if !matches!(stored, Some(Ok(()))) {
        if let Some(d) = warn.allow() {
            tracing::warn!("virtio-net: cannot write the rx used index ({d} more dropped)");
        }
    }
    entries.len()
}
