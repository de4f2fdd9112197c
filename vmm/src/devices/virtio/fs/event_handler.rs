//! The virtio-fs device on the VMM's event loop: the relay's two directions (a guest kick
//! moves its requests to virtiofsd's shadow rings; virtiofsd's call returns its answers to
//! the guest and raises the interrupt), and noticing when the backend hangs up.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::device::Fs;
use crate::devices::virtio::{VirtioDevice, INT_VRING};

/// Event data of the vhost-user socket (call eventfds use their queue index).
const SOCKET_DATA: u32 = u32::MAX;
/// Event data of the SIGUSR1 state-dump eventfd.
const STATE_DUMP: u32 = u32::MAX - 1;
/// Event data of the guest's kick of queue `i`: `GUEST_KICK | i`.
const GUEST_KICK: u32 = 1 << 16;

/// Drains an eventfd; false if it had not been signalled (or cannot be read).
fn drain(evt: &EventFd, tag: &str, what: &str) -> bool {
    match evt.read() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => {
            tracing::warn!(tag, "virtio-fs: cannot read {what}: {e}");
            false
        }
    }
}

impl Fs {
    /// Moves the guest's requests on `queue` to virtiofsd.
    pub(super) fn forward(&mut self, queue: usize) {
        if self.is_broken() {
            return;
        }
        let Some(active) = &mut self.active else {
            return;
        };
        let Some(guest) = active.queues.get_mut(queue).filter(|q| q.ready()) else {
            return;
        };
        let done = self.relay.forward(queue, guest, &active.mem);
        if done.sent > 0 {
            self.metrics
                .requests
                .fetch_add(done.sent as u64, Ordering::Relaxed);
            if let Some(kick) = self.backend_kicks.get(queue) {
                if let Err(e) = kick.write(1) {
                    tracing::warn!(tag = %self.tag, "virtio-fs: cannot kick virtiofsd: {e}");
                }
            }
        }
        if let Some(why) = done.refused.first() {
            self.metrics
                .refused
                .fetch_add(done.refused.len() as u64, Ordering::Relaxed);
            active.irq.trigger(INT_VRING);
            self.metrics.interrupts.fetch_add(1, Ordering::Relaxed);
            if let Some(dropped) = self.warn.allow() {
                tracing::warn!(
                    tag = %self.tag,
                    "virtio-fs: malformed request returned unanswered: {why} \
                     ({dropped} more dropped)"
                );
            }
        }
    }

    /// Returns virtiofsd's answers on `queue` to the guest, then relays what waited for
    /// room.
    pub(super) fn complete(&mut self, queue: usize) {
        let Some(active) = &mut self.active else {
            return;
        };
        let Some(guest) = active.queues.get_mut(queue) else {
            return;
        };
        if self.relay.complete(queue, guest, &active.mem) > 0 {
            active.irq.trigger(INT_VRING);
            self.metrics.interrupts.fetch_add(1, Ordering::Relaxed);
        }
        self.forward(queue);
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.call_evts.iter().enumerate() {
            // The index fits: at most 1 + MAX_REQUEST_QUEUES queues.
            let data = i as u32;
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                tracing::error!(tag = %self.tag(), "virtio-fs: cannot watch call eventfd {i}: {e:?}");
            }
        }
        for (i, evt) in self.queue_events().iter().enumerate() {
            let data = GUEST_KICK | i as u32;
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                tracing::error!(tag = %self.tag(), "virtio-fs: cannot watch queue eventfd {i}: {e:?}");
            }
        }
        self.dump_evt = self.dump_evt.or_else(crate::devices::state_dump::listener);
        if let Some(evt) = self.dump_evt {
            if let Err(e) = ops.add(Events::with_data(evt, STATE_DUMP, EventSet::IN)) {
                tracing::error!(tag = %self.tag(), "virtio-fs: cannot watch the state-dump event: {e:?}");
            }
        }
        if self.is_broken() {
            return;
        }
        // Only hang-ups: the socket's replies are read by the vCPU thread that sent the
        // request, under the device lock.
        let hangup = EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR;
        if let Err(e) = ops.add(Events::with_data(&self.backend, SOCKET_DATA, hangup)) {
            tracing::error!(tag = %self.tag(), "virtio-fs: cannot watch the vhost-user socket: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        if data == SOCKET_DATA {
            // Level-triggered and permanent: stop watching, or the loop would spin.
            if let Err(e) = ops.remove(events) {
                tracing::warn!(tag = %self.tag(), "virtio-fs: cannot unwatch the socket: {e:?}");
            }
            self.mark_broken("its socket hung up");
            return;
        }
        if data == STATE_DUMP {
            if let Some(evt) = self.dump_evt {
                let _ = evt.read();
            }
            self.dump_state();
            return;
        }
        if data & GUEST_KICK != 0 {
            let queue = (data & !GUEST_KICK) as usize;
            let kicked = self
                .queue_events()
                .get(queue)
                .is_some_and(|evt| drain(evt, &self.tag, "a queue eventfd"));
            if kicked {
                self.forward(queue);
            }
            return;
        }
        let queue = data as usize;
        let called = self
            .call_evts
            .get(queue)
            .is_some_and(|evt| drain(evt, &self.tag, "a call eventfd"));
        if called {
            self.complete(queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::super::shadow_server::ShadowServer;
    use super::super::test_utils::FakeBackend;
    use super::super::FsConfig;
    use super::*;
    use crate::devices::virtio::test_queue::{add_chains, used};
    use crate::devices::virtio::{ActivateContext, IrqTrigger, VIRTIO_F_VERSION_1};

    type Manager = EventManager<Arc<Mutex<Fs>>>;

    fn device(socket: PathBuf) -> (Arc<Mutex<Fs>>, Manager) {
        let fs = Fs::new(&FsConfig {
            tag: "shared".into(),
            socket,
            num_request_queues: 1,
            queue_size: 256,
        })
        .unwrap();
        let fs = Arc::new(Mutex::new(fs));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(fs.clone());
        (fs, manager)
    }

    /// Activates `fs` on rings in `mem` (plain memory: nothing of it is shared).
    fn activate<'a>(
        fs: &Mutex<Fs>,
        mem: &'a GuestMemoryMmap,
    ) -> (Arc<IrqTrigger>, MockSplitQueue<'a, GuestMemoryMmap>) {
        let a = MockSplitQueue::create(mem, GuestAddress(0), 256);
        let b = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 256);
        let irq = IrqTrigger::for_tests();
        fs.lock()
            .unwrap()
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![a.create_queue().unwrap(), b.create_queue().unwrap()],
                irq: irq.clone(),
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        (irq, b)
    }

    fn plain_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn a_guest_kick_reaches_virtiofsd_and_its_call_reaches_the_guest() {
        let fake = FakeBackend::start(2);
        let (fs, mut manager) = device(fake.path());
        let mem = plain_memory();
        let (irq, vq) = activate(&fs, &mem);
        mem.write_slice(b"request", GuestAddress(0x8_0000)).unwrap();
        add_chains(
            &vq,
            0,
            &[&[(0x8_0000, 7, 0), (0x9_0000, 64, VRING_DESC_F_WRITE as u16)]],
        );
        // The guest's QueueNotify, as KVM's ioeventfd signals it.
        fs.lock().unwrap().queue_events()[1].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(50).unwrap(), 1);
        // virtiofsd is kicked and finds the request in the window.
        assert_eq!(fs.lock().unwrap().backend_kicks[1].read().unwrap(), 1);
        let mut server = ShadowServer::new(1);
        let reqs = server.take(&fs.lock().unwrap().relay);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].bytes, b"request");
        assert_eq!(irq.status(), 0);

        server.answer(&fs.lock().unwrap().relay, &reqs[0], b"answer", 6);
        fs.lock().unwrap().call_evts[1].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(50).unwrap(), 1);
        assert_eq!(irq.status(), INT_VRING);
        assert_eq!(used(&vq), vec![(0, 6)]);
        let mut back = [0u8; 6];
        mem.read_slice(&mut back, GuestAddress(0x9_0000)).unwrap();
        assert_eq!(&back, b"answer");
        let m = fs.lock().unwrap().metrics();
        assert_eq!(m.requests.load(Ordering::Relaxed), 1);
        assert_eq!(m.interrupts.load(Ordering::Relaxed), 1);
        // Drained: nothing more to do.
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
    }

    #[test]
    fn a_malformed_request_is_returned_with_an_interrupt_and_never_reaches_virtiofsd() {
        let fake = FakeBackend::start(2);
        let (fs, mut manager) = device(fake.path());
        let mem = plain_memory();
        let (irq, vq) = activate(&fs, &mem);
        add_chains(&vq, 0, &[&[(0x20_0000, 16, 0)]]);
        fs.lock().unwrap().queue_events()[1].write(1).unwrap();
        manager.run_with_timeout(50).unwrap();
        assert_eq!(irq.status(), INT_VRING);
        assert_eq!(used(&vq), vec![(0, 0)]);
        let fs = fs.lock().unwrap();
        assert!(fs.backend_kicks[1].read().is_err(), "virtiofsd was kicked");
        assert_eq!(fs.metrics().refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn calls_before_activation_are_drained_without_an_interrupt() {
        let fake = FakeBackend::start(2);
        let (fs, mut manager) = device(fake.path());
        fs.lock().unwrap().call_evts[0].write(1).unwrap();
        fs.lock().unwrap().queue_events()[1].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(50).unwrap(), 2);
        assert_eq!(
            fs.lock()
                .unwrap()
                .metrics()
                .interrupts
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
    }

    #[test]
    fn backend_hang_up_is_noticed_once() {
        let fake = FakeBackend::start(2);
        let (fs, mut manager) = device(fake.path());
        let mem = plain_memory();
        activate(&fs, &mem);
        fake.hang_up();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !fs.lock().unwrap().is_broken() {
            assert!(Instant::now() < deadline, "hang-up not noticed");
            manager.run_with_timeout(50).unwrap();
        }
        // The socket is no longer watched: the loop does not spin on it.
        assert_eq!(manager.run_with_timeout(50).unwrap(), 0);
        let mut fs = fs.lock().unwrap();
        // No more requests to a dead backend; the transport reports DEVICE_NEEDS_RESET.
        assert!(!fs.reset());
        assert!(fs.is_active());
    }
}
