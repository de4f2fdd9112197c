//! The virtio-vsock device: what the transport sees, and the processing of its rx and tx
//! queues (kept in plain functions over a queue, guest memory and the muxer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Muxer, MuxerError};
use super::packet::{parse_tx_packet, rx_payload_room, write_rx_packet, MAX_PAYLOAD};
use super::restore::send_transport_reset;
use super::{VsockConfig, VsockConfigError};
use crate::devices::virtio::ratelimit::WarnLimiter;
use crate::devices::virtio::state::DeviceIdentity;
use crate::devices::virtio::{
    check_queues, describe_queue, read_config_bytes, ActivateContext, ActivateError, IrqTrigger,
    VirtioDevice, INT_VRING, TYPE_VSOCK, VIRTIO_F_VERSION_1,
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
    warn: WarnLimiter,
    metrics: Arc<VsockMetrics>,
    /// Signalled on SIGUSR1 (see `state_dump`); taken when the event loop registers us.
    pub(super) dump_evt: Option<&'static EventFd>,
    /// A restore sent the guest a transport reset it has not handled yet (it notifies
    /// the event queue once it has): nothing goes to the guest's rx queue until then, or
    /// a connection made meanwhile would be reset along with the old ones.
    pub(super) reset_pending: bool,
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
            warn: WarnLimiter::default(),
            metrics: Arc::new(VsockMetrics::default()),
            dump_evt: None,
            reset_pending: false,
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

    /// Logs the device's state (queues, counters, connections) at info level.
    pub(super) fn dump_state(&self) {
        let m = &self.metrics;
        tracing::info!(
            "vsock state: tx_packets={} rx_packets={} malformed={}",
            m.tx_packets.load(Ordering::Relaxed),
            m.rx_packets.load(Ordering::Relaxed),
            m.malformed_chains.load(Ordering::Relaxed)
        );
        if let Some(active) = &self.active {
            for (i, q) in active.queues.iter().enumerate() {
                tracing::info!(
                    "vsock queue {i}: next_avail={} next_used={} {}",
                    q.next_avail(),
                    q.next_used(),
                    describe_queue(&active.mem, q)
                );
            }
        }
        for line in self.muxer.describe() {
            tracing::info!("vsock {line}");
        }
    }

    /// Moves pending packets into guest rx buffers.
    pub(super) fn process_rx(&mut self) {
        if self.reset_pending {
            return;
        }
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
    warn: &mut WarnLimiter,
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
                if warn.allow().is_some() {
                    tracing::warn!("vsock: dropping a tx chain: {e}");
                }
                if let Some(hdr) = e.header() {
                    muxer.handle_bad_payload(hdr);
                }
            }
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            if warn.allow().is_some() {
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
    warn: &mut WarnLimiter,
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
                        if warn.allow().is_some() {
                            tracing::warn!("vsock: lost an rx packet: {e}");
                        }
                        0
                    }
                }
            }
            Err(e) => {
                metrics.malformed_chains.fetch_add(1, Ordering::Relaxed);
                if warn.allow().is_some() {
                    tracing::warn!("vsock: dropping an rx chain: {e}");
                }
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            if warn.allow().is_some() {
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

    fn identity(&self) -> DeviceIdentity {
        DeviceIdentity::Vsock {
            guest_cid: self.guest_cid,
        }
    }

    fn snapshot_queues(&self) -> Result<Vec<QueueState>, String> {
        let active = self.active.as_ref().ok_or("the device is not active")?;
        Ok(active.queues.iter().map(|q| q.state()).collect())
    }

    /// The host ends of the guest's connections are gone (they were the snapshotted
    /// VMM's sockets): the guest is told to reset them all; its listening sockets stay.
    fn restored(&mut self) {
        if let Some(active) = self.active.as_mut() {
            if send_transport_reset(&active.mem, &mut active.queues[EVT]) {
                self.reset_pending = true;
                active.irq.trigger(INT_VRING);
            }
        }
        // Not the event queue: its notification is how the guest says it took the reset.
        for q in [RX, TX] {
            let _ = self.queue_evts[q].write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;
    use std::time::Duration;

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::vsock::muxer::tests::TempDir;
    use crate::devices::virtio::vsock::muxer::FIRST_LOCAL_PORT;
    use crate::devices::virtio::vsock::packet::tests::{sample_hdr, test_mem};
    use crate::devices::virtio::vsock::packet::{op, PacketHeader, HDR_SIZE, HOST_CID};

    const QLEN: u16 = 16;
    const QADDR: [u64; 3] = [0x0, 0x1_0000, 0x2_0000];

    /// Writes a chain at descriptor index `at` and makes it available.
    /// Each element: (guest address, length, device-writable).
    fn push_chain(vq: &MockSplitQueue<GuestMemoryMmap>, at: u16, descs: &[(u64, u32, bool)]) {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, at + i as u16 + 1))
            })
            .collect();
        vq.add_desc_chains(&raw, at).unwrap();
    }

    fn used(vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
        let n = vq.used().idx().load();
        (0..n)
            .map(|i| {
                let e = vq.used().ring().ref_at(i as usize).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    fn read_hdr(mem: &GuestMemoryMmap, addr: u64) -> PacketHeader {
        let mut raw = [0u8; HDR_SIZE];
        mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
        PacketHeader::from_bytes(&raw)
    }

    struct Setup<'a> {
        dir: TempDir,
        mem: &'a GuestMemoryMmap,
        dev: Vsock,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        irq: Arc<IrqTrigger>,
    }

    fn setup(mem: &GuestMemoryMmap) -> Setup<'_> {
        let dir = TempDir::new();
        let cfg = VsockConfig {
            guest_cid: 3,
            uds_path: dir.0.join("v.sock"),
        };
        let mut dev = Vsock::new(&cfg).unwrap();
        let rxq = MockSplitQueue::create(mem, GuestAddress(QADDR[RX]), QLEN);
        let txq = MockSplitQueue::create(mem, GuestAddress(QADDR[TX]), QLEN);
        let evq = MockSplitQueue::create(mem, GuestAddress(QADDR[EVT]), QLEN);
        let irq = IrqTrigger::for_tests();
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                rxq.create_queue().unwrap(),
                txq.create_queue().unwrap(),
                evq.create_queue().unwrap(),
            ],
            irq: irq.clone(),
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
        Setup {
            dir,
            mem,
            dev,
            rxq,
            txq,
            irq,
        }
    }

    fn put_tx(s: &Setup, at: u16, addr: u64, hdr: &PacketHeader, payload: &[u8]) {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        s.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
        push_chain(&s.txq, at, &[(addr, bytes.len() as u32, false)]);
    }

    #[test]
    fn identity_and_config_space() {
        let dir = TempDir::new();
        let dev = Vsock::new(&VsockConfig {
            guest_cid: 0x1_0203,
            uds_path: dir.0.join("v.sock"),
        })
        .unwrap();
        assert_eq!(dev.device_type(), 19);
        assert_eq!(dev.avail_features(), VIRTIO_F_VERSION_1);
        assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
        assert_eq!(dev.queue_events().len(), 3);
        let mut cfg = [0xffu8; 8];
        dev.read_config(0, &mut cfg);
        assert_eq!(cfg, [3, 2, 1, 0, 0, 0, 0, 0]);
        let mut hi = [0xffu8; 4];
        dev.read_config(4, &mut hi);
        assert_eq!(hi, [0; 4]);
        assert!(matches!(
            Vsock::new(&VsockConfig {
                guest_cid: 2,
                uds_path: dir.0.join("w.sock"),
            }),
            Err(VsockError::Config(_))
        ));
    }

    #[test]
    fn activate_checks_queues() {
        let mem = test_mem();
        let dir = TempDir::new();
        let mut dev = Vsock::new(&VsockConfig {
            guest_cid: 3,
            uds_path: dir.0.join("v.sock"),
        })
        .unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
        let ctx = |queues| ActivateContext {
            mem: mem.clone(),
            queues,
            irq: IrqTrigger::for_tests(),
            acked_features: VIRTIO_F_VERSION_1,
        };
        let r = dev.activate(ctx(vec![vq.create_queue().unwrap()]));
        assert!(matches!(r, Err(ActivateError::QueueCount { .. })));
        let mut bad: Queue = vq.create_queue().unwrap();
        bad.set_ready(false);
        let r = dev.activate(ctx(vec![
            vq.create_queue().unwrap(),
            bad,
            vq.create_queue().unwrap(),
        ]));
        assert!(matches!(r, Err(ActivateError::BadQueue(1))));
        assert!(!dev.is_active());
    }

    #[test]
    fn malformed_tx_chains_are_dropped_without_panic() {
        let mem = test_mem();
        let mut s = setup(&mem);
        let mut long = sample_hdr();
        long.len = 100;
        mem.write_slice(&long.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        // Header shorter than 44 bytes; wrong direction; len larger than the buffer;
        // outside guest memory; zero length.
        push_chain(&s.txq, 0, &[(0x10_0000, 43, false)]);
        push_chain(&s.txq, 1, &[(0x10_0000, 200, true)]);
        push_chain(&s.txq, 2, &[(0x10_0000, 60, false)]);
        push_chain(&s.txq, 3, &[(0x1_0000_0000, 100, false)]);
        push_chain(&s.txq, 4, &[(0x10_0000, 0, false)]);
        push_chain(
            &s.txq,
            5,
            &[(0x10_0000, 44, false), (0x3f_fff0, 100, false)],
        );
        s.dev.process_tx();
        assert_eq!(
            used(&s.txq),
            [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]
        );
        assert_eq!(s.dev.metrics().malformed_chains.load(Ordering::Relaxed), 6);
        // Chain 2 had a readable header: its (unknown) connection gets an RST.
        let mut buf = [0u8; 64];
        let (h, _) = s.dev.muxer.next_rx_packet(&mut buf).unwrap();
        assert_eq!((h.op, h.dst_port), (op::RST, long.src_port));
        assert!(!s.dev.muxer.has_rx());
        assert_eq!(s.irq.status(), INT_VRING);
    }

    #[test]
    fn rx_waits_for_buffers_and_skips_bad_ones() {
        let mem = test_mem();
        let mut s = setup(&mem);
        // A request to a port nobody listens on: the RST waits for an rx buffer.
        let mut h = sample_hdr();
        h.op = op::REQUEST;
        put_tx(&s, 0, 0x10_0000, &h, b"");
        s.dev.process_tx();
        assert!(s.dev.muxer.has_rx());
        assert!(used(&s.rxq).is_empty());

        // Read-only and too-short rx buffers are returned unused; the good one gets it.
        push_chain(&s.rxq, 0, &[(0x20_0000, 4096, false)]);
        push_chain(&s.rxq, 1, &[(0x20_0000, 43, true)]);
        push_chain(&s.rxq, 2, &[(0x1_0000_0000, 4096, true)]);
        push_chain(&s.rxq, 3, &[(0x21_0000, 44, true), (0x22_0000, 4096, true)]);
        push_chain(&s.rxq, 5, &[(0x23_0000, 4096, true)]);
        s.dev.process_rx();
        assert_eq!(used(&s.rxq), [(0, 0), (1, 0), (2, 0), (3, 44)]);
        let r = read_hdr(&mem, 0x21_0000);
        assert_eq!((r.op, r.src_cid, r.dst_cid), (op::RST, HOST_CID, 3));
        assert_eq!((r.src_port, r.dst_port), (h.dst_port, h.src_port));
        assert!(!s.dev.muxer.has_rx());
        // The last buffer stays available for later.
        s.dev.process_rx();
        assert_eq!(used(&s.rxq).len(), 4);
    }

    #[test]
    fn host_connection_through_the_event_loop() {
        let mem = test_mem();
        let s = setup(&mem);
        let Setup {
            dir,
            dev,
            rxq,
            txq,
            irq,
            ..
        } = s;
        let tx_evt = dev.queue_evts[TX].try_clone().unwrap();
        let rx_evt = dev.queue_evts[RX].try_clone().unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut run = || {
            for _ in 0..5 {
                em.run_with_timeout(10).unwrap();
            }
        };

        let mut host = UnixStream::connect(dir.0.join("v.sock")).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        push_chain(&rxq, 0, &[(0x20_0000, 4096 + 44, true)]);
        rx_evt.write(1).unwrap();
        run();
        let req = read_hdr(&mem, 0x20_0000);
        assert_eq!((req.op, req.dst_port), (op::REQUEST, 1024));
        assert_eq!(req.src_port, FIRST_LOCAL_PORT);
        assert_ne!(irq.status() & INT_VRING, 0);

        // The guest accepts.
        let mut resp = sample_hdr();
        resp.op = op::RESPONSE;
        resp.src_port = 1024;
        resp.dst_port = req.src_port;
        resp.fwd_cnt = 0;
        let mut bytes = resp.to_bytes().to_vec();
        mem.write_slice(&bytes, GuestAddress(0x30_0000)).unwrap();
        push_chain(&txq, 0, &[(0x30_0000, 44, false)]);
        tx_evt.write(1).unwrap();
        run();
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");

        // Data both ways.
        resp.op = op::RW;
        resp.len = 3;
        bytes = resp.to_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        mem.write_slice(&bytes, GuestAddress(0x30_1000)).unwrap();
        push_chain(&txq, 1, &[(0x30_1000, 47, false)]);
        tx_evt.write(1).unwrap();
        run();
        let mut got = [0u8; 3];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");

        host.write_all(b"xyz").unwrap();
        push_chain(&rxq, 1, &[(0x21_0000, 44, true), (0x22_0000, 4096, true)]);
        rx_evt.write(1).unwrap();
        run();
        let rw = read_hdr(&mem, 0x21_0000);
        assert_eq!((rw.op, rw.len), (op::RW, 3));
        let mut data = [0u8; 3];
        mem.read_slice(&mut data, GuestAddress(0x22_0000)).unwrap();
        assert_eq!(&data, b"xyz");
        assert_eq!(used(&rxq), [(0, 44), (1, 47)]);
        assert_eq!(used(&txq), [(0, 0), (1, 0)]);
    }

    #[test]
    fn after_a_restore_nothing_reaches_the_guest_before_it_took_the_reset() {
        let mem = test_mem();
        let Setup {
            dir,
            mut dev,
            rxq,
            irq,
            ..
        } = setup(&mem);
        // The guest's event buffer (the setup's event queue is at QADDR[EVT]).
        let evq = MockSplitQueue::create(&mem, GuestAddress(QADDR[EVT]), QLEN);
        push_chain(&evq, 0, &[(0x3f_0000, 4, true)]);
        mem.write_obj(0xffu32, GuestAddress(0x3f_0000)).unwrap();
        dev.restored();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x3f_0000)).unwrap(), 0);
        assert_eq!(evq.used().idx().load(), 1);
        assert_ne!(irq.status() & INT_VRING, 0);
        let evt_evt = dev.queue_evts[EVT].try_clone().unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut run = || {
            for _ in 0..5 {
                em.run_with_timeout(10).unwrap();
            }
        };
        // A host program connects at once; the guest has rx buffers.
        let mut host = UnixStream::connect(dir.0.join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        push_chain(&rxq, 0, &[(0x20_0000, 4096 + 44, true)]);
        run();
        assert_eq!(
            rxq.used().idx().load(),
            0,
            "held until the reset is handled"
        );
        // The guest handled the event and refilled the queue: the request goes out.
        evt_evt.write(1).unwrap();
        run();
        assert_eq!(rxq.used().idx().load(), 1);
        let req = read_hdr(&mem, 0x20_0000);
        assert_eq!((req.op, req.dst_port), (op::REQUEST, 1024));
    }

    #[test]
    fn queue_events_before_activation_are_ignored() {
        let dir = TempDir::new();
        let dev = Vsock::new(&VsockConfig {
            guest_cid: 3,
            uds_path: dir.0.join("v.sock"),
        })
        .unwrap();
        let tx_evt = dev.queue_evts[TX].try_clone().unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        tx_evt.write(1).unwrap();
        // A host program may connect early: it is held until the guest is up.
        let mut host = UnixStream::connect(dir.0.join("v.sock")).unwrap();
        host.write_all(b"CONNECT 5\n").unwrap();
        for _ in 0..5 {
            em.run_with_timeout(10).unwrap();
        }
        let d = dev.lock().unwrap();
        assert!(!d.is_active());
        assert_eq!(tx_evt.read().ok(), None, "notification drained");
        assert!(d.muxer.has_rx(), "the request waits for activation");
    }
}
