//! The virtio-net device: its tap, features, config space and the queue pair's state.
//!
//! Threads: [`Net::new`] runs on the main thread (the tap ioctls of [`super::tap`]).
//! [`VirtioDevice::activate`] and `reset` run on a vCPU thread and only store the queues
//! and write the activation eventfd; the event loop (`vmm-events`) then logs the acked
//! features, sets the tap's offloads (TUNSETOFFLOAD), registers the tap with epoll and
//! moves frames.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::EventSet;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::rx::{self, RxState, RxWait};
use super::tap::{Tap, TapError, TapIo};
use super::tx::{self, TxState, TxWait};
use super::{MacAddr, NetConfig, NetConfigError, QUEUE_MAX_SIZE};
use crate::devices::virtio::ratelimit::WarnLimiter;
use crate::devices::virtio::state::DeviceIdentity;
use crate::devices::virtio::{
    check_queues, describe_queue, read_config_bytes, ActivateContext, ActivateError, IrqTrigger,
    VirtioDevice, INT_VRING, TYPE_NET, VIRTIO_F_VERSION_1,
};

/// Queue indices of the (first) queue pair.
pub const RX: usize = 0;
pub const TX: usize = 1;
pub const NUM_QUEUES: usize = 2;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Invalid net configuration")]
    Config(#[from] NetConfigError),
    #[error("Cannot set up the tap")]
    Tap(#[from] TapError),
    #[error("Cannot pick a random MAC address")]
    RandomMac(#[source] std::io::Error),
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Counters of one device, readable from any thread. Bytes count frames without the vnet
/// header.
#[derive(Debug, Default)]
pub struct NetMetrics {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames read from the tap and not delivered (too large for the guest's buffers,
    /// shorter than a header, or held at a reset).
    pub rx_dropped: AtomicU64,
    /// Rx chains the guest made wrong (readable or out-of-memory descriptors).
    pub rx_malformed: AtomicU64,
    /// Times a frame had to wait for the guest to add rx buffers.
    pub rx_waits: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Well-formed frames the tap refused (bad header, interface down) or held at a reset.
    pub tx_dropped: AtomicU64,
    /// Tx chains that were not a frame (see `tx::TxError`).
    pub tx_malformed: AtomicU64,
    /// Times the tap answered a write with EAGAIN.
    pub tx_waits: AtomicU64,
    /// Used-ring interrupts raised.
    pub interrupts: AtomicU64,
}

/// The features the device offers: every offload is a plain header passthrough.
pub fn offered_features(mtu: Option<u16>) -> u64 {
    let bits = [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_STATUS,
    ];
    let mut f = bits.iter().fold(VIRTIO_F_VERSION_1, |f, b| f | (1u64 << b));
    // Notification suppression both ways: the guest kicks a queue only when the device
    // asked (it drained it), and takes an interrupt only when it asked.
    f |= 1u64 << VIRTIO_RING_F_EVENT_IDX;
    if mtu.is_some() {
        f |= 1 << VIRTIO_NET_F_MTU;
    }
    f
}

/// Whether the driver wants an interrupt for the used entries added since the used index
/// was `before`: none if nothing was added; always without EVENT_IDX (as before it), else
/// when its `used_event` lies in the range just published (the virtio spec's
/// `vring_need_event`). Computed here, not by the queue's `needs_notification`, which
/// counts only entries added through `add_used`: the rx path writes its batch of used
/// entries itself, with one index update, so that the driver never sees a merged frame's
/// first buffers without the rest.
pub(super) fn wants_interrupt(queue: &Queue, mem: &GuestMemoryMmap, before: u16) -> bool {
    let new = queue.next_used();
    if new == before {
        return false;
    }
    if !queue.event_idx_enabled() {
        return true;
    }
    // used_event follows the available ring: flags, idx, then `size` entries of 2 bytes.
    let addr = queue
        .avail_ring()
        .checked_add(4 + 2 * u64::from(queue.size()))
        .map(vm_memory::GuestAddress);
    let Some(Ok(event)) = addr.map(|a| {
        mem.load::<u16>(a, std::sync::atomic::Ordering::Acquire)
            .map(u16::from_le)
    }) else {
        // Unreadable: interrupt, the safe side.
        return true;
    };
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(before)
}

/// Asks the guest to kick `queue` when it adds a buffer past those it has made available
/// (the device holds a frame they cannot take: the partly collected chains stay in the
/// ring, so `next_avail` is behind the available index and the request must name the
/// available index itself). Returns whether buffers were added meanwhile (look again).
pub(super) fn ask_for_new_buffers(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    let Ok(avail) = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) else {
        return false;
    };
    let next = queue.next_avail();
    queue.set_next_avail(avail.0);
    let more = queue.enable_notification(mem).unwrap_or(false);
    queue.set_next_avail(next);
    more
}

/// The tap offloads (TUN_F_*) matching what the driver accepts: the tap may hand us
/// partially checksummed frames only if the guest takes GUEST_CSUM, and GSO frames of the
/// kinds it takes (the tap ignores TSO without CSUM).
pub fn tap_offloads(acked: u64) -> u32 {
    let has = |b: u32| acked & (1u64 << b) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut f = libc::TUN_F_CSUM;
    for (feature, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_ECN, libc::TUN_F_TSO_ECN),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if has(feature) {
            f |= flag;
        }
    }
    f
}

/// Names of the virtio-net feature bits set in `features`, for the log.
pub fn feature_names(features: u64) -> String {
    const NAMES: [(u32, &str); 11] = [
        (VIRTIO_NET_F_CSUM, "CSUM"),
        (VIRTIO_NET_F_GUEST_CSUM, "GUEST_CSUM"),
        (VIRTIO_NET_F_MTU, "MTU"),
        (VIRTIO_NET_F_MAC, "MAC"),
        (VIRTIO_NET_F_GUEST_TSO4, "GUEST_TSO4"),
        (VIRTIO_NET_F_GUEST_TSO6, "GUEST_TSO6"),
        (VIRTIO_NET_F_GUEST_UFO, "GUEST_UFO"),
        (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
        (VIRTIO_NET_F_HOST_TSO6, "HOST_TSO6"),
        (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
        (VIRTIO_NET_F_STATUS, "STATUS"),
    ];
    let mut v: Vec<&str> = Vec::new();
    if features & VIRTIO_F_VERSION_1 != 0 {
        v.push("VERSION_1");
    }
    if features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0 {
        v.push("RING_EVENT_IDX");
    }
    v.extend(
        NAMES
            .iter()
            .filter(|(b, _)| features & (1u64 << b) != 0)
            .map(|(_, n)| *n),
    );
    v.join(",")
}

/// What the device holds once the driver set DRIVER_OK.
pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub rx_queue: Queue,
    pub tx_queue: Queue,
    pub irq: Arc<IrqTrigger>,
    pub acked_features: u64,
    /// Set by the event loop once it applied the offloads and registered the tap.
    pub started: bool,
}

/// A virtio-net device on a tap (any [`TapIo`] in tests).
pub struct Net<T = Tap> {
    pub(super) tap: T,
    name: String,
    mac: MacAddr,
    avail_features: u64,
    config_space: [u8; 12],
    queue_max_sizes: [u16; NUM_QUEUES],
    pub(super) queue_evts: [EventFd; NUM_QUEUES],
    /// Written on activation and reset (vCPU thread), handled on the event loop.
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<Active>,
    pub(super) rx: RxState,
    pub(super) tx: TxState,
    pub(super) rx_wait: RxWait,
    pub(super) tx_wait: TxWait,
    /// What the tap fd is registered for in epoll, if it is.
    pub(super) tap_events: Option<EventSet>,
    metrics: Arc<NetMetrics>,
    warn: WarnLimiter,
    /// Signalled on SIGUSR1 (see `state_dump`); taken when the event loop registers us.
    pub(super) dump_evt: Option<&'static EventFd>,
}

impl Net<Tap> {
    /// Opens the tap named in `cfg` or takes over its fd.
    pub fn new(cfg: &NetConfig) -> Result<Self, NetError> {
        cfg.validate()?;
        let tap = match (&cfg.tap, cfg.fd) {
            (Some(name), _) => Tap::open(name)?,
            (None, Some(fd)) => Tap::from_fd(fd)?,
            (None, None) => return Err(NetConfigError::Backend.into()),
        };
        let name = tap.name().to_string();
        let mac = match cfg.mac {
            Some(m) => m,
            None => MacAddr::random().map_err(NetError::RandomMac)?,
        };
        Self::with_tap(tap, name, mac, cfg.mtu)
    }
}

impl<T: TapIo + AsRawFd + Send + 'static> Net<T> {
    /// The device on an open tap (tests pass a fake).
    pub fn with_tap(
        tap: T,
        name: String,
        mac: MacAddr,
        mtu: Option<u16>,
    ) -> Result<Self, NetError> {
        // struct virtio_net_config: mac, status, max_virtqueue_pairs, mtu.
        let mut config_space = [0u8; 12];
        config_space[..6].copy_from_slice(&mac.0);
        config_space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config_space[8..10].copy_from_slice(&1u16.to_le_bytes());
        config_space[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd);
        Ok(Self {
            tap,
            name,
            mac,
            avail_features: offered_features(mtu),
            config_space,
            queue_max_sizes: [QUEUE_MAX_SIZE; NUM_QUEUES],
            queue_evts: [evt()?, evt()?],
            activate_evt: evt()?,
            active: None,
            rx: RxState::default(),
            tx: TxState::default(),
            rx_wait: RxWait::Tap,
            tx_wait: TxWait::Guest,
            tap_events: None,
            metrics: Arc::new(NetMetrics::default()),
            warn: WarnLimiter::default(),
            dump_evt: None,
        })
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// Whether the event loop has started the activated device.
    pub fn is_started(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.started)
    }

    /// On the event loop after an activation or reset: applies the offloads and starts
    /// moving frames, or drops what a reset left behind.
    pub(super) fn handle_activation(&mut self) {
        let Some(active) = self.active.as_mut() else {
            let (rx, tx) = (self.rx.drop_pending(), self.tx.drop_pending());
            self.metrics
                .rx_dropped
                .fetch_add(u64::from(rx), Ordering::Relaxed);
            self.metrics
                .tx_dropped
                .fetch_add(u64::from(tx), Ordering::Relaxed);
            self.rx_wait = RxWait::Tap;
            self.tx_wait = TxWait::Guest;
            return;
        };
        if active.started {
            return;
        }
        let acked = active.acked_features;
        let offloads = tap_offloads(acked);
        // Once per activation, which a guest resetting the device in a loop repeats.
        crate::guest_log!(
            tracing::Level::INFO,
            "virtio-net {}: driver acked {} (tap offloads {offloads:#x}), mac {}",
            self.name,
            feature_names(acked),
            self.mac
        );
        if let Err(e) = self.tap.set_offload(offloads) {
            // The tap keeps its offloads off: full-sized, checksummed frames, which any
            // driver takes.
            crate::guest_warn!(
                "virtio-net {}: cannot set the tap offloads (TUNSETOFFLOAD {offloads:#x}): {e}",
                self.name
            );
        }
        active.started = true;
        self.rx_wait = RxWait::Tap;
        self.tx_wait = TxWait::Guest;
        self.process_tx();
        self.process_rx();
    }

    /// Moves frames from the tap to the guest (event loop; a no-op until started).
    pub(super) fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut().filter(|a| a.started) else {
            return;
        };
        if self.rx_wait == RxWait::TapError {
            return;
        }
        let mrg = active.acked_features & (1u64 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let budget = usize::from(active.rx_queue.size());
        // The guest need not kick rx while it has buffers here: notifications are asked
        // for only when the device runs out (and then the ring is looked at once more,
        // for buffers added before the guest saw the request).
        let _ = active.rx_queue.disable_notification(&active.mem);
        let used_before = active.rx_queue.next_used();
        let pass = loop {
            let pass = rx::process_rx(
                &mut active.rx_queue,
                &active.mem,
                &mut self.tap,
                &mut self.rx,
                mrg,
                &self.metrics,
                &mut self.warn,
                budget,
            );
            if pass.wait != RxWait::Guest || !ask_for_new_buffers(&mut active.rx_queue, &active.mem)
            {
                break pass;
            }
        };
        self.rx_wait = pass.wait;
        if wants_interrupt(&active.rx_queue, &active.mem, used_before) {
            active.irq.trigger(INT_VRING);
            self.metrics.interrupts.fetch_add(1, Ordering::Relaxed);
        }
        if pass.wait == RxWait::Budget {
            // Come back after the loop's other events.
            let _ = self.queue_evts[RX].write(1);
        }
    }

    /// Sends the guest's frames to the tap (event loop; a no-op until started).
    pub(super) fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut().filter(|a| a.started) else {
            return;
        };
        let budget = usize::from(active.tx_queue.size());
        // No kicks while the device drains the ring; asked for again once it is empty,
        // with one more look for chains added meanwhile.
        let _ = active.tx_queue.disable_notification(&active.mem);
        let used_before = active.tx_queue.next_used();
        let pass = loop {
            let pass = tx::process_tx(
                &mut active.tx_queue,
                &active.mem,
                &mut self.tap,
                &mut self.tx,
                &self.metrics,
                &mut self.warn,
                budget,
            );
            if pass.wait != TxWait::Guest
                || !active
                    .tx_queue
                    .enable_notification(&active.mem)
                    .unwrap_or(false)
            {
                break pass;
            }
        };
        self.tx_wait = pass.wait;
        if wants_interrupt(&active.tx_queue, &active.mem, used_before) {
            active.irq.trigger(INT_VRING);
            self.metrics.interrupts.fetch_add(1, Ordering::Relaxed);
        }
        if pass.wait == TxWait::Budget {
            let _ = self.queue_evts[TX].write(1);
        }
    }

    /// Logs the device's state (counters, what it waits for, queues) at info level.
    pub(super) fn dump_state(&self) {
        let m = &self.metrics;
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        tracing::info!(
            "virtio-net {} state: started={} rx_wait={:?} holds_rx_frame={} tx_wait={:?} \
             tap_events={:?} rx_frames={} rx_bytes={} rx_dropped={} rx_malformed={} rx_waits={} \
             tx_frames={} tx_bytes={} tx_dropped={} tx_malformed={} tx_waits={} interrupts={}",
            self.name,
            self.is_started(),
            self.rx_wait,
            self.rx.holds_frame(),
            self.tx_wait,
            self.tap_events,
            c(&m.rx_frames),
            c(&m.rx_bytes),
            c(&m.rx_dropped),
            c(&m.rx_malformed),
            c(&m.rx_waits),
            c(&m.tx_frames),
            c(&m.tx_bytes),
            c(&m.tx_dropped),
            c(&m.tx_malformed),
            c(&m.tx_waits),
            c(&m.interrupts),
        );
        if let Some(a) = &self.active {
            for (name, q) in [("rx", &a.rx_queue), ("tx", &a.tx_queue)] {
                tracing::info!(
                    "virtio-net {} {name} queue: next_avail={} next_used={} {}",
                    self.name,
                    q.next_avail(),
                    q.next_used(),
                    describe_queue(&a.mem, q)
                );
            }
        }
    }

    /// What the tap fd should be polled for now: readable while rx waits for the tap,
    /// writable while a frame waits for it; nothing before start or after a tap error.
    pub(super) fn wanted_tap_events(&self) -> EventSet {
        let mut set = EventSet::empty();
        if !self.is_started() {
            return set;
        }
        if self.rx_wait == RxWait::Tap {
            set |= EventSet::IN;
        }
        if self.tx_wait == TxWait::Tap {
            set |= EventSet::OUT;
        }
        set
    }
}

impl<T: TapIo + AsRawFd + Send + 'static> VirtioDevice for Net<T> {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        check_queues(&ctx, NUM_QUEUES)?;
        let ActivateContext {
            mem,
            queues,
            irq,
            acked_features,
        } = ctx;
        for (i, q) in queues.iter().enumerate() {
            if !q.is_valid(&mem) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        let mut queues = queues.into_iter();
        let (Some(mut rx_queue), Some(mut tx_queue)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: 0,
            });
        };
        let event_idx = acked_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        rx_queue.set_event_idx(event_idx);
        tx_queue.set_event_idx(event_idx);
        self.active = Some(Active {
            mem,
            rx_queue,
            tx_queue,
            irq,
            acked_features,
            started: false,
        });
        self.activate_evt.write(1).map_err(ActivateError::EventFd)
    }

    fn reset(&mut self) -> bool {
        // The event loop drops the held frames and unregisters the tap.
        self.active = None;
        if let Err(e) = self.activate_evt.write(1) {
            tracing::warn!("virtio-net {}: cannot signal the reset: {e}", self.name);
        }
        true
    }

    fn identity(&self) -> DeviceIdentity {
        DeviceIdentity::Net {
            mac: self.mac.to_string(),
        }
    }

    /// A received frame the guest had no buffers for is not saved (its collected buffers
    /// are still available in the ring: a frame lost, as on any network). A transmitted
    /// frame the tap refused with EAGAIN was taken from the ring last: the saved tx queue
    /// hands that chain out again, so the restored device sends it.
    fn snapshot_queues(&self) -> Result<Vec<QueueState>, String> {
        let active = self.active.as_ref().ok_or("the device is not active")?;
        let mut tx = active.tx_queue.state();
        if self.tx.is_blocked() {
            tx.next_avail = tx.next_avail.wrapping_sub(1);
        }
        Ok(vec![active.rx_queue.state(), tx])
    }
}
