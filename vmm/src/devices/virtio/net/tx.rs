//! Transmit: the guest's tx chains (a `virtio_net_hdr_v1` and a frame) to the tap.
//!
//! A chain is gathered into one buffer and written with one write(2), the header passed
//! through unchanged (the tap parses it: checksum offload, GSO). Malformed chains are
//! returned unsent and counted ([`TxError`]). When the tap answers EAGAIN the frame and its
//! chain are kept ([`TxState`]) and written again on EPOLLOUT before any later chain, so
//! frames leave in order and nothing is dropped for back-pressure.

use std::io;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemory};

use super::tap::TapIo;
use super::{NetMetrics, MAX_FRAME_LEN, MIN_FRAME_LEN, VNET_HDR_LEN};
use crate::devices::virtio::ratelimit::WarnLimiter;

/// Longest tx chain: the header and the largest frame.
pub const MAX_TX_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// Why a tx chain is not a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("A tx descriptor is device-writable")]
    Writable,
    #[error("A tx descriptor at {addr:#x} of {len} bytes is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("The tx chain has more than {MAX_TX_LEN} bytes")]
    TooLong,
    #[error("The tx chain has {0} bytes, less than a vnet header and an Ethernet header")]
    TooShort(usize),
    #[error("The tx descriptor chain ends early (a loop or a bad next index)")]
    BrokenChain,
}

/// Copies the chain into `buf`; returns its length.
pub fn gather<M>(chain: DescriptorChain<M>, buf: &mut [u8]) -> Result<usize, TxError>
where
    M: std::ops::Deref + Clone,
    M::Target: GuestMemory,
{
    let mem = chain.memory();
    let mut len = 0usize;
    let mut last_has_next = false;
    for d in chain.clone() {
        last_has_next = d.has_next();
        if d.is_write_only() {
            return Err(TxError::Writable);
        }
        let n = d.len() as usize;
        if n > buf.len() - len {
            return Err(TxError::TooLong);
        }
        mem.read_slice(&mut buf[len..len + n], d.addr())
            .map_err(|_| TxError::OutOfMemory {
                addr: d.addr().raw_value(),
                len: d.len(),
            })?;
        len += n;
    }
    if last_has_next {
        return Err(TxError::BrokenChain);
    }
    if len < VNET_HDR_LEN + MIN_FRAME_LEN {
        return Err(TxError::TooShort(len));
    }
    Ok(len)
}

/// The transmit half of a queue pair: the gather buffer and a frame the tap refused for now.
pub struct TxState {
    buf: Vec<u8>,
    /// Head and length of the frame in `buf` waiting for EPOLLOUT.
    pending: Option<(u16, usize)>,
}

impl Default for TxState {
    fn default() -> Self {
        Self {
            buf: vec![0; MAX_TX_LEN],
            pending: None,
        }
    }
}

impl TxState {
    /// Whether a frame waits for the tap to take it.
    pub fn is_blocked(&self) -> bool {
        self.pending.is_some()
    }

    /// Forgets the held frame (device reset); returns whether there was one.
    pub fn drop_pending(&mut self) -> bool {
        self.pending.take().is_some()
    }
}

/// What stopped a tx pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxWait {
    /// No chains left: wait for a tx queue notification.
    Guest,
    /// The tap said EAGAIN: wait for EPOLLOUT.
    Tap,
    /// The pass used its budget: run another after the loop's other events.
    Budget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxPass {
    /// Chains returned to the used ring (the caller raises the interrupt if any).
    pub used: usize,
    pub wait: TxWait,
}

/// Sends the guest's tx chains, the held frame first, at most `budget` chains.
pub fn process_tx<M: GuestMemory, T: TapIo>(
    queue: &mut Queue,
    mem: &M,
    tap: &mut T,
    state: &mut TxState,
    metrics: &NetMetrics,
    warn: &mut WarnLimiter,
    budget: usize,
) -> TxPass {
    let mut used = 0;
    loop {
        if let Some((head, len)) = state.pending {
            match send(tap, &state.buf[..len], metrics, warn) {
                Sent::Blocked => {
                    return TxPass {
                        used,
                        wait: TxWait::Tap,
                    }
                }
                Sent::Done => {}
            }
            state.pending = None;
            if !return_chain(queue, mem, head, warn) {
                return TxPass {
                    used,
                    wait: TxWait::Guest,
                };
            }
            used += 1;
        }
        if used >= budget {
            let more = queue
                .avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != queue.next_avail());
            return TxPass {
                used,
                wait: if more { TxWait::Budget } else { TxWait::Guest },
            };
        }
        let chain = match queue.iter(mem) {
            Ok(mut avail) => avail.next(),
            Err(e) => {
                if let Some(d) = warn.allow() {
                    tracing::warn!(
                        "virtio-net: cannot read the tx available ring: {e} ({d} more dropped)"
                    );
                }
                None
            }
        };
        let Some(chain) = chain else {
            return TxPass {
                used,
                wait: TxWait::Guest,
            };
        };
        let head = chain.head_index();
        match gather(chain, &mut state.buf) {
            Ok(len) => state.pending = Some((head, len)),
            Err(e) => {
                metrics.tx_malformed.fetch_add(1, Ordering::Relaxed);
                if let Some(d) = warn.allow() {
                    tracing::warn!("virtio-net: dropping a tx chain: {e} ({d} more dropped)");
                }
                if !return_chain(queue, mem, head, warn) {
                    return TxPass {
                        used,
                        wait: TxWait::Guest,
                    };
                }
                used += 1;
            }
        }
    }
}

enum Sent {
    /// Written, or failed for good (counted as a drop).
    Done,
    Blocked,
}

fn send<T: TapIo>(tap: &mut T, frame: &[u8], metrics: &NetMetrics, warn: &mut WarnLimiter) -> Sent {
    loop {
        match tap.write_frame(frame) {
            Ok(_) => {
                metrics.tx_frames.fetch_add(1, Ordering::Relaxed);
                metrics
                    .tx_bytes
                    .fetch_add((frame.len() - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                return Sent::Done;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                metrics.tx_waits.fetch_add(1, Ordering::Relaxed);
                return Sent::Blocked;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EINVAL for a header the tap refuses, EIO while the tap is down, ...
                metrics.tx_dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(d) = warn.allow() {
                    tracing::warn!(
                        "virtio-net: the tap refused a {}-byte frame: {e} ({d} more dropped)",
                        frame.len() - VNET_HDR_LEN
                    );
                }
                return Sent::Done;
            }
        }
    }
}

fn return_chain<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    head: u16,
    warn: &mut WarnLimiter,
) -> bool {
    match queue.add_used(mem, head, 0) {
        Ok(()) => true,
        Err(e) => {
            if let Some(d) = warn.allow() {
                tracing::warn!("virtio-net: cannot return a tx chain: {e} ({d} more dropped)");
            }
            false
        }
    }
}
