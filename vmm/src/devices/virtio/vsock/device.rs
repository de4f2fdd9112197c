//! The virtio-vsock device: what the transport sees, and the processing of its rx and tx
//! queues (kept in plain functions over a queue, guest memory and the muxer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Muxer, MuxerError};
use super::packet::{parse_tx_packet, rx_payload_room, write_rx_packet, MAX_PAYLOAD};
use super::{LogLimiter, VsockConfig, VsockConfigError};
use crate::devices::virtio::{
    check_queues, read_config_bytes, ActivateContext, ActivateError, IrqTrigger, VirtioDevice,
    INT_VRING, TYPE_VSOCK, VIRTIO_F_VERSION_1,
};

/// Queue indices.
pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EVT: usize = 2;
pub const NUM_QUEUES: usize = 3;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("Invalid vsock configuration")]
    Config(#[from] VsockConfigError),
    #[error("Cannot set up the vsock host socket")]
    Muxer(#[from] MuxerError),
    #[error("Cannot create a queue eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Counters of the device, readable from any thread.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
    pub malformed_chains: AtomicU64,
}

pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub irq: Arc<IrqTrigger>,
}

pub struct Vsock {
    guest_cid: u32,
    pub(super) queue_evts: [EventFd; NUM_QUEUES],
    pub(super) muxer: Muxer,
    pub(super) active: Option<Active>,
    scratch: Vec<u8>,
    warn: LogLimiter,
    metrics: Arc<VsockMetrics>,
}

impl Vsock {
    /// Creates the device and starts listening on `config.uds_path` (a stale socket file
    /// there is replaced; any other file is refused).
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        config.validate()?;
        let muxer = Muxer::new(config.guest_cid, &config.uds_path)?;
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Self {
            guest_cid: config.guest_cid,
            queue_evts: [evt()?, evt()?, evt()?],
            muxer,
            active: None,
            scratch: vec![0u8; MAX_PAYLOAD],
            warn: LogLimiter::default(),
            metrics: Arc::new(VsockMetrics::default()),
        })
    }

    pub fn guest_cid(&self) -> u32 {
        self.guest_cid
    }

    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Processes the tx queue and then the rx queue (replies), and raises the interrupt
    /// if any buffer was used. Does nothing before activation.
    pub(super) fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (used, more) = process_tx_queue(
            &active.mem,
            &mut active.queues[TX],
            &mut self.muxer,
            &self.metrics,
            &mut self.warn,
        );
        if more {
            // Budget spent: come back after the other events.
            let _ = self.queue_evts[TX].write(1);
        }
        if used {
            active.irq.trigger(INT_VRING);
        }
        self.process_rx();
    }

    /// Moves pending packets into guest rx buffers.
    pub(super) fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (used, more) = process_rx_queue(
            &active.mem,
            &mut active.queues[RX],
            &mut self.muxer,
            &mut self.scratch,
            &self.metrics,
            &mut self.warn,
        );
        if more {
            let _ = self.queue_evts[RX].write(1);
        }
        if used {
            active.irq.trigger(INT_VRING);
        }
    }
}

/// Consumes the guest's tx chains (at most one queue's worth) and hands the packets to
/// the muxer. Returns whether buffers were used and whether more may be waiting.
pub(crate) fn process_tx_queue(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    muxer: &mut Muxer,
    metrics: &VsockMetrics,
    warn: &mut LogLimiter,
) -> (bool, bool) {
    let mut used = false;
    for _ in 0..queue.size() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return (used, false);
        };
        let head = chain.head_index();
        match parse_tx_packet(mem, chain) {
            Ok(pkt) => {
                metrics.tx_packets.fetch_add(1, Ordering::Relaxed);
                muxer.handle_guest_packet(&pkt);
            }
            Err(e) => {
                metrics.malformed_chains.fetch_add(1, Ordering::Relaxed);
                if warn.allow() {
                    tracing::warn!("vsock: dropping a tx chain: {e}");
                }
            }
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            if warn.allow() {
                tracing::warn!("vsock: cannot return a tx buffer: {e}");
            }
        }
        used = true;
    }
    (used, true)
}

/// Fills the guest's rx chains with the muxer's pending packets (at most one queue's
/// worth). Returns whether buffers were used and whether more may be waiting.
pub(crate) fn process_rx_queue(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    muxer: &mut Muxer,
    scratch: &mut [u8],
    metrics: &VsockMetrics,
    warn: &mut LogLimiter,
) -> (bool, bool) {
    let mut used = false;
    for _ in 0..queue.size() {
        if !muxer.has_rx() {
            return (used, false);
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return (used, false);
        };
        let head = chain.head_index();
        let len = match rx_payload_room(mem, &chain) {
            Ok(room) => {
                let room = room.min(scratch.len());
                let Some((hdr, n)) = muxer.next_rx_packet(&mut scratch[..room]) else {
                    // Nothing could be sent after all: leave the buffer to the guest.
                    queue.go_to_previous_position();
                    return (used, false);
                };
                match write_rx_packet(mem, chain, &hdr, &scratch[..n]) {
                    Ok(len) => {
                        metrics.rx_packets.fetch_add(1, Ordering::Relaxed);
                        len
                    }
                    Err(e) => {
                        if warn.allow() {
                            tracing::warn!("vsock: lost an rx packet: {e}");
                        }
                        0
                    }
                }
            }
            Err(e) => {
                metrics.malformed_chains.fetch_add(1, Ordering::Relaxed);
                if warn.allow() {
                    tracing::warn!("vsock: dropping an rx chain: {e}");
                }
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            if warn.allow() {
                tracing::warn!("vsock: cannot return an rx buffer: {e}");
            }
        }
        used = true;
    }
    (used, muxer.has_rx())
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&u64::from(self.guest_cid).to_le_bytes(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        check_queues(&ctx, NUM_QUEUES)?;
        for (i, q) in ctx.queues.iter().enumerate() {
            if !q.is_valid(&ctx.mem) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            irq: ctx.irq,
        });
        // Notifications before now were ignored, and host connections may be waiting:
        // have the event loop look at both queues.
        self.queue_evts[RX]
            .write(1)
            .map_err(ActivateError::EventFd)?;
        self.queue_evts[TX]
            .write(1)
            .map_err(ActivateError::EventFd)?;
        Ok(())
    }
}
