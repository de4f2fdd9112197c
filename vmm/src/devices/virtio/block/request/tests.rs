//! Request parsing and execution over mock queues and an in-memory disk: the fixtures
//! shared by the well-formed requests ([`execution`]) and the malformed chains
//! ([`malformed`]), and the descriptor helpers the device tests use too.

mod execution;
mod malformed;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;

use super::*;

pub(crate) const R: u16 = 0;
pub(crate) const W: u16 = VRING_DESC_F_WRITE as u16;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const MEM_END: u64 = 0x10_0000;
const CAPACITY: u64 = 16;

pub(crate) fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

pub(crate) fn desc_next(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(
        addr,
        len,
        flags | VRING_DESC_F_NEXT as u16,
        next,
    ))
}

pub(crate) fn header(t: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&t.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

fn props(read_only: bool) -> DiskProperties {
    let mut id = [0u8; ID_LEN];
    id[..6].copy_from_slice(b"disk-0");
    DiskProperties {
        capacity: CAPACITY,
        read_only,
        id,
    }
}

/// A disk whose byte `i` is `i / 512 + 1` (sector number + 1).
fn patterned_disk() -> MemDisk {
    let mut d = MemDisk::new(CAPACITY as u32);
    for (i, b) in d.bytes.iter_mut().enumerate() {
        *b = (i / 512 + 1) as u8;
    }
    d
}

struct Run {
    done: Completion,
    status_byte: u8,
}

/// Writes `hdr` at HDR, fills DATA with 0xee and STATUS with 0x77, runs the chain
/// `descs` (NEXT fields set by the mock) and reads back the status byte at STATUS.
fn run(
    m: &GuestMemoryMmap,
    hdr: &[u8],
    descs: &[RawDescriptor],
    disk: &mut MemDisk,
    p: &DiskProperties,
) -> Run {
    run_raw(m, hdr, descs, disk, p, true)
}

fn run_raw(
    m: &GuestMemoryMmap,
    hdr: &[u8],
    descs: &[RawDescriptor],
    disk: &mut MemDisk,
    p: &DiskProperties,
    link: bool,
) -> Run {
    m.write_slice(hdr, GuestAddress(HDR)).unwrap();
    m.write_slice(&[0xee; 0x4000], GuestAddress(DATA)).unwrap();
    m.write_slice(&[0x77; 16], GuestAddress(STATUS)).unwrap();
    let vq = MockSplitQueue::new(m, 256);
    let chain = if link {
        vq.build_desc_chain(descs).unwrap()
    } else {
        vq.build_multiple_desc_chains(descs).unwrap()
    };
    let done = handle_chain(&chain, disk, p);
    Run {
        done,
        status_byte: m.read_obj(GuestAddress(STATUS)).unwrap(),
    }
}

fn data(m: &GuestMemoryMmap, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    m.read_slice(&mut v, GuestAddress(DATA + off)).unwrap();
    v
}

fn assert_ioerr(r: &Run, why: RequestError) {
    assert_eq!(r.done.status, Some(STATUS_IOERR));
    assert_eq!(r.status_byte, STATUS_IOERR);
    assert_eq!(r.done.used_len, 1);
    assert_eq!(r.done.malformed, Some(why));
}

fn assert_dropped(r: &Run, why: RequestError) {
    assert_eq!(r.done.status, None);
    assert_eq!(r.done.used_len, 0);
    assert_eq!(r.status_byte, 0x77, "status byte was written");
    assert_eq!(r.done.malformed, Some(why));
}
