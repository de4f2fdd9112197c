//! The virtio-fs device on the VMM's event loop: it relays the backend's call eventfds to
//! the interrupt line and notices when the backend hangs up.
//!
//! The queue (kick) eventfds are deliberately NOT registered: KVM signals them and
//! virtiofsd waits on them; reading them here would steal the guest's notifications.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Fs;
use crate::devices::virtio::INT_VRING;

/// Event data of the vhost-user socket (call eventfds use their queue index).
const SOCKET_DATA: u32 = u32::MAX;
/// Event data of the SIGUSR1 state-dump eventfd.
const STATE_DUMP: u32 = u32::MAX - 1;

impl Fs {
    fn relay_call(&mut self, queue: usize) {
        let Some(evt) = self.call_evts.get(queue) else {
            return;
        };
        match evt.read() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!(tag = %self.tag(), "virtio-fs: cannot read call eventfd {queue}: {e}");
                return;
            }
        }
        // Before activation (or after a reset) there is no guest driver to tell.
        if let Some(irq) = &self.irq {
            irq.trigger(INT_VRING);
            self.metrics.interrupts.fetch_add(1, Ordering::Relaxed);
        }
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
        if events.data() == SOCKET_DATA {
            // Level-triggered and permanent: stop watching, or the loop would spin.
            if let Err(e) = ops.remove(events) {
                tracing::warn!(tag = %self.tag(), "virtio-fs: cannot unwatch the socket: {e:?}");
            }
            self.mark_broken("its socket hung up");
            return;
        }
        if events.data() == STATE_DUMP {
            if let Some(evt) = self.dump_evt {
                let _ = evt.read();
            }
            self.dump_state();
            return;
        }
        self.relay_call(events.data() as usize);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::super::test_utils::{memfd_memory, FakeBackend};
    use super::super::FsConfig;
    use super::*;
    use crate::devices::virtio::{ActivateContext, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};

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

    fn activate(fs: &Mutex<Fs>) -> Arc<IrqTrigger> {
        let mem = memfd_memory(&[(0, 0x10_0000)]);
        let a = MockSplitQueue::create(&mem, GuestAddress(0), 256);
        let b = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 256);
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
        irq
    }

    #[test]
    fn kick_eventfds_are_left_to_the_backend() {
        let fake = FakeBackend::start(2);
        let (fs, mut manager) = device(fake.path());
        activate(&fs);
        // A guest kick: nothing of ours wakes up, and the count stays for virtiofsd.
        fs.lock().unwrap().queue_events()[1].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(50).unwrap(), 0);
        assert_eq!(fs.lock().unwrap().queue_events()[1].read().unwrap(), 1);
    }

    #[test]
    fn calls_raise_the_interrupt_once_active() {
        let fake = FakeBackend::start(2);
        let (fs, mut manager) = device(fake.path());

        // Before activation a call is drained and dropped.
        fs.lock().unwrap().call_evts[0].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(50).unwrap(), 1);
        assert_eq!(
            fs.lock()
                .unwrap()
                .metrics()
                .interrupts
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);

        let irq = activate(&fs);
        fs.lock().unwrap().call_evts[1].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(50).unwrap(), 1);
        assert_eq!(irq.status(), INT_VRING);
        assert_eq!(irq.irqfd().read().unwrap(), 1);
        assert_eq!(
            fs.lock()
                .unwrap()
                .metrics()
                .interrupts
                .load(Ordering::Relaxed),
            1
        );
        // Drained: no second interrupt.
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
    }

    #[test]
    fn backend_hang_up_is_noticed_once() {
        let fake = FakeBackend::start(2);
        let (fs, mut manager) = device(fake.path());
        activate(&fs);
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
