//! The device's work on the VMM event loop: queue notifications, the listening socket
//! and each connection's Unix socket.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Vsock, EVT, NUM_QUEUES, RX, TX};
use super::muxer::CtlOp;

// `data` of the registered events: queue indices, then these.
const LISTENER: u32 = NUM_QUEUES as u32;
const CONNECTION: u32 = LISTENER + 1;
const STATE_DUMP: u32 = CONNECTION + 1;

impl Vsock {
    fn apply_ctl_ops(&mut self, ops: &mut EventOps) {
        for op in self.muxer.take_ctl_ops() {
            let r = match op {
                CtlOp::Add(fd, set) => ops.add(Events::with_data_raw(fd, CONNECTION, set)),
                CtlOp::Modify(fd, set) => ops.modify(Events::with_data_raw(fd, CONNECTION, set)),
                // The stream, if any, is closed when dropped here, after leaving epoll.
                CtlOp::Remove(fd, _stream) => {
                    ops.remove(Events::with_data_raw(fd, CONNECTION, EventSet::empty()))
                }
                CtlOp::Close(_stream) => Ok(()),
            };
            if let Err(e) = r {
                // Per connection change, which the guest drives: limited.
                crate::guest_error!("vsock: cannot update the event loop: {e:?}");
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            // i < NUM_QUEUES.
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("vsock: cannot register queue {i}: {e:?}");
            }
        }
        let listener = Events::with_data_raw(self.muxer.listener_fd(), LISTENER, EventSet::IN);
        if let Err(e) = ops.add(listener) {
            tracing::error!("vsock: cannot register the host socket: {e:?}");
        }
        self.dump_evt = self.dump_evt.or_else(crate::devices::state_dump::listener);
        if let Some(evt) = self.dump_evt {
            if let Err(e) = ops.add(Events::with_data(evt, STATE_DUMP, EventSet::IN)) {
                tracing::error!("vsock: cannot register the state-dump event: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            d if (d as usize) < NUM_QUEUES => {
                let q = d as usize;
                // Drain the notification even before activation (it is then ignored).
                let _ = self.queue_evts[q].read();
                match q {
                    TX => self.process_tx(),
                    RX => self.process_rx(),
                    // The guest refilled its event queue: after a restore, that means it
                    // has handled the transport reset, and packets may flow again.
                    EVT if self.reset_pending => {
                        self.reset_pending = false;
                        tracing::debug!("vsock: the guest handled the transport reset");
                        self.process_rx();
                    }
                    _ => {}
                }
            }
            STATE_DUMP => {
                if let Some(evt) = self.dump_evt {
                    let _ = evt.read();
                }
                self.dump_state();
            }
            LISTENER => {
                self.muxer.accept();
                self.process_rx();
            }
            _ => {
                self.muxer.handle_fd_event(events.fd(), events.event_set());
                self.process_rx();
            }
        }
        self.apply_ctl_ops(ops);
    }
}
