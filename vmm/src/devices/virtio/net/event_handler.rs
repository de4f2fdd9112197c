//! The device on the VMM's event loop: its queue eventfds, the activation eventfd and the
//! tap fd (registered only for what the device waits for, so a guest that stops reading
//! does not make the loop spin on a readable tap).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Net, NUM_QUEUES, RX, TX};
use super::tap::TapIo;

// `data` of the registered events: queue indices, then these.
const TAP: u32 = NUM_QUEUES as u32;
const ACTIVATE: u32 = TAP + 1;
const STATE_DUMP: u32 = ACTIVATE + 1;

impl<T: TapIo + AsRawFd + Send + 'static> Net<T> {
    /// Brings the tap's epoll registration in line with what the device waits for.
    fn update_tap_events(&mut self, ops: &mut EventOps) {
        let want = self.wanted_tap_events();
        let fd = self.tap.as_raw_fd();
        let r = match (self.tap_events, want.is_empty()) {
            (None, true) => return,
            (Some(have), false) if have == want => return,
            (None, false) => ops.add(Events::with_data_raw(fd, TAP, want)),
            (Some(_), false) => ops.modify(Events::with_data_raw(fd, TAP, want)),
            // Unregistered rather than registered for nothing: epoll reports errors and
            // hang-ups of a dead tap whatever it was asked for.
            (Some(have), true) => ops.remove(Events::with_data_raw(fd, TAP, have)),
        };
        match r {
            Ok(()) => self.tap_events = (!want.is_empty()).then_some(want),
            // Per event, which the guest drives: limited.
            Err(e) => {
                crate::guest_error!("virtio-net: cannot update the tap's epoll registration: {e:?}")
            }
        }
    }
}

impl<T: TapIo + AsRawFd + Send + 'static> MutEventSubscriber for Net<T> {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            // i < NUM_QUEUES.
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("virtio-net: cannot register queue {i}: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE,
            EventSet::IN,
        )) {
            tracing::error!("virtio-net: cannot register the activation event: {e:?}");
        }
        self.dump_evt = self.dump_evt.or_else(crate::devices::state_dump::listener);
        if let Some(evt) = self.dump_evt {
            if let Err(e) = ops.add(Events::with_data(evt, STATE_DUMP, EventSet::IN)) {
                tracing::error!("virtio-net: cannot register the state-dump event: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            d if d as usize == RX => {
                // Drained even before activation (it is then ignored). The guest added rx
                // buffers: a held frame may fit now.
                let _ = self.queue_evts[RX].read();
                self.process_rx();
            }
            d if d as usize == TX => {
                let _ = self.queue_evts[TX].read();
                self.process_tx();
            }
            TAP => {
                let set = events.event_set();
                if set.intersects(EventSet::OUT) {
                    self.process_tx();
                }
                if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                    self.process_rx();
                }
            }
            ACTIVATE => {
                let _ = self.activate_evt.read();
                self.handle_activation();
            }
            STATE_DUMP => {
                if let Some(evt) = self.dump_evt {
                    let _ = evt.read();
                }
                self.dump_state();
            }
            _ => {}
        }
        self.update_tap_events(ops);
    }
}
