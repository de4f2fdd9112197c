//! Test helpers over `virtio_queue`'s mock split queues, shared by the devices' tests.

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;

/// Adds `chains` (each a list of (addr, len, flags)) to the avail ring, their descriptors
/// from table index `first`.
pub(crate) fn add_chains(
    vq: &MockSplitQueue<GuestMemoryMmap>,
    first: u16,
    chains: &[&[(u64, u32, u16)]],
) {
    let mut descs = Vec::new();
    let mut i = first;
    for chain in chains {
        for (k, &(addr, len, flags)) in chain.iter().enumerate() {
            let last = k + 1 == chain.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            let next = if last { 0 } else { i + 1 };
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                addr, len, flags, next,
            )));
            i += 1;
        }
    }
    vq.add_desc_chains(&descs, first).unwrap();
}

pub(crate) fn used(vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = vq.used().ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}
