//! After a snapshot restore the host side of every guest connection is gone: the VMM that
//! held those Unix sockets has ended. The device tells the guest with the one event
//! virtio-vsock defines, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (virtio 1.2, 5.10.6.7), on the
//! event queue: the guest's driver then resets every connected socket (its programs see
//! ECONNRESET) and re-reads the guest CID from the config space, while its listening
//! sockets stay (a restored agent keeps accepting). This is how Firecracker's vsock
//! device handles snapshots too.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

/// `struct virtio_vsock_event { le32 id; }`.
const EVENT_LEN: u32 = 4;
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Puts one TRANSPORT_RESET event into the guest's next event buffer. Returns whether a
/// buffer was used (the caller raises the interrupt); a buffer too small or read-only is
/// returned unused. The Linux driver keeps its event
/// queue filled, so a guest that probed the device has buffers there.
pub(super) fn send_transport_reset(mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
    let Some(chain) = queue.pop_descriptor_chain(mem) else {
        tracing::warn!(
            "vsock: the guest has no event buffer; its connections from before the \
             snapshot are not reset"
        );
        return false;
    };
    let head = chain.head_index();
    let target = chain
        .clone()
        .find(|d| d.is_write_only() && d.len() >= EVENT_LEN)
        .map(|d| d.addr());
    let len = match target {
        Some(addr) => match mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), addr) {
            Ok(()) => EVENT_LEN,
            Err(e) => {
                tracing::warn!("vsock: cannot write the transport reset event: {e}");
                0
            }
        },
        None => {
            tracing::warn!("vsock: the guest's event buffer cannot hold an event");
            0
        }
    };
    if let Err(e) = queue.add_used(mem, head, len) {
        tracing::warn!("vsock: cannot return the event buffer: {e}");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    use vm_memory::GuestAddress;

    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn reset_event_lands_in_the_next_event_buffer() {
        let mem = mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 8);
        for i in 0..2u16 {
            let d =
                SplitDescriptor::new(0x8_0000 + u64::from(i) * 8, 8, VRING_DESC_F_WRITE as u16, 0);
            vq.add_desc_chains(&[RawDescriptor::from(d)], i).unwrap();
        }
        mem.write_obj(0xffff_ffffu32, GuestAddress(0x8_0000))
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(send_transport_reset(&mem, &mut q));
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x8_0000)).unwrap(), 0);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!((used.id(), used.len()), (0, EVENT_LEN));
        assert_eq!(vq.used().idx().load(), 1);
        // The second buffer is left for the next event.
        assert_eq!(q.next_avail(), 1);
    }

    #[test]
    fn no_buffer_or_a_read_only_one() {
        let mem = mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 8);
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(!send_transport_reset(&mem, &mut q));
        // A device-readable buffer is returned unused, nothing is written.
        let d = SplitDescriptor::new(0x8_0000, 8, 0, 0);
        vq.add_desc_chains(&[RawDescriptor::from(d)], 0).unwrap();
        mem.write_obj(7u32, GuestAddress(0x8_0000)).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        send_transport_reset(&mem, &mut q);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x8_0000)).unwrap(), 7);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), 0);
    }
}
