//! The block device on the VMM's event loop: its queue eventfd.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Block;
use crate::devices::virtio::VirtioDevice;

/// Event data of the request queue's eventfd.
const QUEUE_EVENT: u32 = 0;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        let evt = &self.queue_events()[0];
        if let Err(e) = ops.add(Events::with_data(evt, QUEUE_EVENT, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot register the queue eventfd: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() != QUEUE_EVENT {
            return;
        }
        // Drain the counter; a spurious wake-up finds it empty (EAGAIN), which is harmless.
        let _ = self.queue_events()[0].read();
        self.process_queue_event();
    }
}
