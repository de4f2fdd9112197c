//! The virtio-fs device as the transport sees it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::relay::Relay;
use super::vhost_user::{Backend, FsError, REQUEST_TIMEOUT};
use super::{FsConfig, CONFIG_SPACE_LEN};
use crate::devices::virtio::ratelimit::WarnLimiter;
use crate::devices::virtio::state::DeviceIdentity;
use crate::devices::virtio::{
    check_queues, describe_queue, read_config_bytes, ActivateContext, ActivateError, IrqTrigger,
    VirtioDevice, TYPE_FS,
};

/// Counters of one virtio-fs device.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// Interrupts raised for used buffers.
    pub interrupts: AtomicU64,
    /// Successful activations (the driver set DRIVER_OK).
    pub activations: AtomicU64,
    /// Requests relayed to virtiofsd.
    pub requests: AtomicU64,
    /// Malformed requests returned to the guest unanswered.
    pub refused: AtomicU64,
}

/// What the device holds while the driver has it running.
pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) queues: Vec<Queue>,
    pub(super) irq: Arc<IrqTrigger>,
}

/// A virtio-fs device backed by a virtiofsd process over vhost-user, through a relay.
pub struct Fs {
    pub(super) tag: String,
    socket: PathBuf,
    config_space: [u8; CONFIG_SPACE_LEN],
    queue_sizes: Vec<u16>,
    /// The guest's kicks: KVM signals them on QueueNotify, the event loop relays.
    queue_evts: Vec<EventFd>,
    /// virtiofsd's kicks: we signal them when its shadow rings have new requests.
    pub(super) backend_kicks: Vec<EventFd>,
    /// Call eventfds: virtiofsd signals them when it answered requests.
    pub(super) call_evts: Vec<EventFd>,
    pub(super) backend: Backend,
    /// The shadow rings and request bytes virtiofsd sees (it never sees guest RAM).
    pub(super) relay: Relay,
    avail_features: u64,
    pub(super) active: Option<Active>,
    /// The backend hung up or stopped answering: we no longer talk to it.
    broken: bool,
    pub(super) metrics: Arc<FsMetrics>,
    /// Malformed requests are a guest's doing: logged at most once a second.
    pub(super) warn: WarnLimiter,
    /// Signalled on SIGUSR1 (see `state_dump`); taken when the event loop registers us.
    pub(super) dump_evt: Option<&'static EventFd>,
}

impl Fs {
    /// Connects to the virtiofsd listening on `config.socket` and negotiates with it.
    pub fn new(config: &FsConfig) -> Result<Self, FsError> {
        config.validate()?;
        let num_queues = config.num_queues();
        let backend = Backend::connect(&config.socket, num_queues, REQUEST_TIMEOUT)?;
        let new_evts = || {
            (0..num_queues)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<Vec<_>, _>>()
                .map_err(FsError::EventFd)
        };
        Ok(Self {
            tag: config.tag.clone(),
            socket: config.socket.clone(),
            config_space: config.config_space(),
            queue_sizes: vec![config.queue_size; num_queues],
            queue_evts: new_evts()?,
            backend_kicks: new_evts()?,
            call_evts: new_evts()?,
            relay: Relay::new(num_queues).map_err(FsError::Window)?,
            avail_features: backend.guest_features(),
            backend,
            active: None,
            broken: false,
            metrics: Arc::new(FsMetrics::default()),
            warn: WarnLimiter::new(Duration::from_secs(1)),
            dump_evt: None,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }

    /// Whether the backend is gone (the guest's file system no longer works).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Stops talking to the backend, logging why once.
    pub(super) fn mark_broken(&mut self, why: &str) {
        if !self.broken {
            self.broken = true;
            tracing::error!(
                tag = %self.tag,
                socket = %self.socket.display(),
                "virtio-fs: the vhost-user backend (virtiofsd) is gone ({why}); \
                 the guest's file system on this tag no longer works"
            );
        }
    }

    /// Logs the device's state at info level: the guest's rings, the shadow rings and
    /// what virtiofsd holds, and the interrupt line. Tells a request virtiofsd has not
    /// answered from a completion the guest has not been told of (interrupt pending).
    pub(super) fn dump_state(&self) {
        let m = &self.metrics;
        tracing::info!(
            tag = %self.tag,
            "virtio-fs state: active={} broken={} requests={} refused={} interrupts={} \
             interrupt_status={:#x}",
            self.active.is_some(),
            self.broken,
            m.requests.load(Ordering::Relaxed),
            m.refused.load(Ordering::Relaxed),
            m.interrupts.load(Ordering::Relaxed),
            self.active.as_ref().map_or(0, |a| a.irq.status())
        );
        let Some(active) = &self.active else {
            return;
        };
        for (i, q) in active.queues.iter().enumerate() {
            tracing::info!(
                tag = %self.tag,
                "virtio-fs queue {i}: {}; {}",
                describe_queue(&active.mem, q),
                self.relay.describe(i)
            );
        }
    }

    fn backend_failed(&mut self, e: &FsError) -> String {
        let msg = husk_errors::chain(e);
        if e.breaks_connection() {
            self.mark_broken(&msg);
        }
        format!("virtiofsd at {}: {msg}", self.socket.display())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        check_queues(&ctx, self.queue_sizes.len())?;
        if self.broken {
            return Err(ActivateError::Backend(format!(
                "virtiofsd at {} hung up",
                self.socket.display()
            )));
        }
        for (i, q) in ctx.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&ctx.mem) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        // Stale signals from before this activation must not raise an interrupt.
        for evt in &self.call_evts {
            let _ = evt.read();
        }
        self.relay.reset();
        let ready: Vec<usize> = (0..ctx.queues.len())
            .filter(|&i| ctx.queues[i].ready())
            .collect();
        let result =
            self.backend
                .activate(&self.relay, &ready, &self.backend_kicks, &self.call_evts);
        if let Err(e) = result {
            return Err(match e {
                FsError::BadQueue(i) => ActivateError::BadQueue(i),
                e => ActivateError::Backend(self.backend_failed(&e)),
            });
        }
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            irq: ctx.irq,
        });
        self.metrics.activations.fetch_add(1, Ordering::Relaxed);
        crate::guest_debug!(tag = %self.tag, "virtio-fs: activated");
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if self.active.is_none() {
            return true;
        }
        if self.broken {
            return false;
        }
        match self.backend.stop(self.queue_sizes.len()) {
            Ok(()) => {
                // The relay starts afresh at the next activation.
                self.active = None;
                for evt in &self.call_evts {
                    let _ = evt.read();
                }
                true
            }
            Err(e) => {
                let msg = self.backend_failed(&e);
                tracing::error!(tag = %self.tag, "virtio-fs: cannot reset: {msg}");
                false
            }
        }
    }

    fn identity(&self) -> DeviceIdentity {
        DeviceIdentity::Fs {
            tag: self.tag.clone(),
            request_queues: (self.queue_sizes.len() - 1) as u16,
        }
    }

    /// The guest's queues as the relay advanced them. A request virtiofsd has not
    /// answered cannot be saved (its answer would be lost): the snapshot is refused (take
    /// it of a guest whose share is idle). Requests still in the guest's available ring are
    /// kept: the restored device relays them.
    fn snapshot_queues(&self) -> Result<Vec<QueueState>, String> {
        let active = self.active.as_ref().ok_or("the device is not active")?;
        let held = self.relay.in_flight();
        if held > 0 {
            return Err(format!(
                "virtio-fs {}: virtiofsd holds {held} request(s); snapshot a guest whose \
                 share is idle or not mounted",
                self.tag
            ));
        }
        Ok(active.queues.iter().map(|q| q.state()).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;
    use vmm_sys_util::tempdir::TempDir;

    use super::super::test_utils::{req, FakeBackend, FAKE_FEATURES};
    use super::*;
    use crate::devices::virtio::VIRTIO_F_VERSION_1;

    fn config(socket: PathBuf, queues: u16) -> FsConfig {
        FsConfig {
            tag: "shared".into(),
            socket,
            num_request_queues: queues,
            queue_size: 256,
        }
    }

    #[test]
    fn nothing_listening_is_a_clear_error() {
        let dir = TempDir::new_with_prefix("/tmp/husk-fs-").unwrap();
        let path = dir.as_path().join("missing.sock");
        let err = Fs::new(&config(path.clone(), 1)).err().unwrap();
        assert!(matches!(err, FsError::Connect { .. }));
        let msg = err.to_string();
        assert!(msg.contains(path.to_str().unwrap()), "{msg}");
        assert!(msg.contains("is virtiofsd running?"), "{msg}");

        // A socket file nobody listens on any more: connection refused.
        let stale = dir.as_path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(matches!(
            Fs::new(&config(stale, 1)),
            Err(FsError::Connect { .. })
        ));
    }

    #[test]
    fn invalid_config_is_refused_before_connecting() {
        let mut c = config("/nonexistent/vfs.sock".into(), 1);
        c.tag = String::new();
        assert!(matches!(Fs::new(&c), Err(FsError::Config(_))));
    }

    #[test]
    fn handshake_and_identity() {
        let fake = FakeBackend::start(2);
        let fs = Fs::new(&config(fake.path(), 1)).unwrap();
        assert_eq!(
            fake.requests(),
            vec![
                req::SET_OWNER,
                req::GET_FEATURES,
                req::GET_PROTOCOL_FEATURES,
                req::SET_PROTOCOL_FEATURES,
                req::GET_QUEUE_NUM,
            ]
        );
        // We asked for MQ and REPLY_ACK only, though the fake offers more.
        assert_eq!(fake.body_u64(req::SET_PROTOCOL_FEATURES), Some(0x1 | 0x8));
        assert_eq!(fs.device_type(), TYPE_FS);
        // The fake offers VERSION_1, EVENT_IDX, PROTOCOL_FEATURES, LOG_ALL and
        // NOTIFICATION_DATA; the guest sees the first (EVENT_IDX would be the relay's).
        assert_eq!(fs.avail_features(), VIRTIO_F_VERSION_1);
        assert_eq!(fs.queue_max_sizes(), &[256, 256]);
        assert_eq!(fs.queue_events().len(), 2);
        let mut space = [0xffu8; 44];
        fs.read_config(0, &mut space);
        assert_eq!(&space[..7], b"shared\0");
        assert_eq!(&space[36..40], &[1, 0, 0, 0]);
        assert_eq!(&space[40..], &[0; 4]);
        let mut q = [0u8; 4];
        fs.read_config(36, &mut q);
        assert_eq!(q, [1, 0, 0, 0]);
    }

    #[test]
    fn more_queues_than_the_backend_serves() {
        let fake = FakeBackend::start(2);
        let err = Fs::new(&config(fake.path(), 2)).err().unwrap();
        assert!(
            matches!(
                err,
                FsError::TooManyQueues {
                    wanted: 3,
                    backend: 2
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn backend_without_version_1_is_refused() {
        let fake = FakeBackend::start_with_features(2, FAKE_FEATURES & !VIRTIO_F_VERSION_1);
        assert!(matches!(
            Fs::new(&config(fake.path(), 1)),
            Err(FsError::NoVersion1(_))
        ));
    }

    #[test]
    fn activation_sends_memory_and_rings() {
        let fake = FakeBackend::start(2);
        let mut fs = Fs::new(&config(fake.path(), 1)).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let hiprio = MockSplitQueue::create(&mem, GuestAddress(0), 256);
        let request = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 256);
        let queues: Vec<Queue> = vec![
            hiprio.create_queue().unwrap(),
            request.create_queue().unwrap(),
        ];
        let irq = IrqTrigger::for_tests();
        fs.activate(ActivateContext {
            mem: mem.clone(),
            queues,
            irq,
            acked_features: VIRTIO_F_VERSION_1 | (1 << 29) | (1 << 38),
        })
        .unwrap();
        assert!(fs.is_active());

        let ring = [
            req::SET_VRING_NUM,
            req::SET_VRING_ADDR,
            req::SET_VRING_BASE,
            req::SET_VRING_CALL,
            req::SET_VRING_KICK,
            req::SET_VRING_ENABLE,
        ];
        let mut expected = vec![req::SET_FEATURES, req::SET_MEM_TABLE];
        expected.extend(ring);
        expected.extend(ring);
        assert_eq!(fake.requests()[5..], expected[..]);
        // The backend gets what the shadow rings use, not what the driver acked:
        // VERSION_1 and VHOST_USER_F_PROTOCOL_FEATURES.
        assert_eq!(
            fake.body_u64(req::SET_FEATURES),
            Some(VIRTIO_F_VERSION_1 | (1 << 30))
        );
        // Every request after the handshake asked for an acknowledgement (REPLY_ACK).
        assert!(fake.all_need_reply_after(5));

        // A reset stops the rings (disable, then GET_VRING_BASE).
        assert!(fs.reset());
        assert!(!fs.is_active());
        let tail = fake.requests();
        assert_eq!(
            tail[tail.len() - 4..],
            [
                req::SET_VRING_ENABLE,
                req::GET_VRING_BASE,
                req::SET_VRING_ENABLE,
                req::GET_VRING_BASE
            ]
        );
    }

    #[test]
    fn wrong_queue_count_or_bad_ring_is_refused() {
        let fake = FakeBackend::start(2);
        let mut fs = Fs::new(&config(fake.path(), 1)).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 256);
        let one: Vec<Queue> = vec![vq.create_queue().unwrap()];
        let err = fs
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: one,
                irq: IrqTrigger::for_tests(),
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap_err();
        assert!(matches!(
            err,
            ActivateError::QueueCount {
                expected: 2,
                got: 1
            }
        ));

        let good: Queue = vq.create_queue().unwrap();
        let mut bad: Queue = vq.create_queue().unwrap();
        bad.set_used_ring_address(Some(0xfff0), Some(0));
        let err = fs
            .activate(ActivateContext {
                mem,
                queues: vec![good, bad],
                irq: IrqTrigger::for_tests(),
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap_err();
        assert!(matches!(err, ActivateError::BadQueue(1)));
        assert!(!fs.is_active());
        // Nothing reached the backend past the handshake.
        assert_eq!(fake.requests().len(), 5);
    }

    #[test]
    fn backend_refusal_is_an_activation_error() {
        let fake = FakeBackend::start(2);
        let mut fs = Fs::new(&config(fake.path(), 1)).unwrap();
        fake.refuse(req::SET_MEM_TABLE);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let a = MockSplitQueue::create(&mem, GuestAddress(0), 256);
        let b = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 256);
        let err = fs
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![a.create_queue().unwrap(), b.create_queue().unwrap()],
                irq: IrqTrigger::for_tests(),
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap_err();
        let ActivateError::Backend(msg) = err else {
            panic!("unexpected {err}");
        };
        assert!(msg.contains("SET_MEM_TABLE"), "{msg}");
        assert!(!fs.is_active());
        // A refusal is not a hang-up: the connection stays usable.
        assert!(!fs.is_broken());
    }
}
