//! Request parsing and execution over mock queues and an in-memory disk.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
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

#[test]
fn read_two_segments() {
    let m = mem();
    let mut disk = patterned_disk();
    let descs = [
        desc(HDR, 16, R),
        desc(DATA, 512, W),
        desc(DATA + 0x1000, 1024, W),
        desc(STATUS, 1, W),
    ];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 3),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_OK));
    assert_eq!(r.status_byte, STATUS_OK);
    assert_eq!(r.done.used_len, 1536 + 1);
    assert_eq!(r.done.data_bytes, 1536);
    assert_eq!(r.done.request_type, Some(RequestType::In));
    assert_eq!(data(&m, 0, 512), vec![4; 512]);
    assert_eq!(
        data(&m, 0x1000, 1024),
        [vec![5; 512], vec![6; 512]].concat()
    );
    // Nothing past the buffers was touched.
    assert_eq!(data(&m, 512, 1), vec![0xee]);
    assert_eq!(data(&m, 0x1000 + 1024, 1), vec![0xee]);
}

#[test]
fn any_layout_split_header_and_status_in_data_descriptor() {
    let m = mem();
    let mut disk = patterned_disk();
    // Header in two halves; last descriptor holds 512 bytes of data then the status.
    let descs = [desc(HDR, 8, R), desc(HDR + 8, 8, R), desc(DATA, 513, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 15),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_OK));
    assert_eq!(r.done.used_len, 513);
    assert_eq!(data(&m, 0, 512), vec![16; 512]);
    assert_eq!(data(&m, 512, 1), vec![STATUS_OK]);

    // OUT with header and data in one descriptor.
    let mut buf = header(VIRTIO_BLK_T_OUT, 2).to_vec();
    buf.extend_from_slice(&[0xab; 512]);
    let descs = [desc(HDR, 16 + 512, R), desc(STATUS, 1, W)];
    let r = run(&m, &buf, &descs, &mut disk, &props(false));
    assert_eq!(r.done.status, Some(STATUS_OK));
    assert_eq!(r.done.used_len, 1);
    assert_eq!(&disk.bytes[1024..1536], &[0xab; 512][..]);
    assert_eq!(disk.bytes[1023], 2);
    assert_eq!(disk.bytes[1536], 4);
}

#[test]
fn write() {
    let m = mem();
    let mut disk = MemDisk::new(CAPACITY as u32);
    m.write_slice(&[0x5a; 1024], GuestAddress(DATA)).unwrap();
    let descs = [desc(HDR, 16, R), desc(DATA, 1024, R), desc(STATUS, 1, W)];
    // run() refills DATA; write the payload after the header instead.
    m.write_slice(&header(VIRTIO_BLK_T_OUT, CAPACITY - 2), GuestAddress(HDR))
        .unwrap();
    let vq = MockSplitQueue::new(&m, 16);
    let chain = vq.build_desc_chain(&descs).unwrap();
    let done = handle_chain(&chain, &mut disk, &props(false));
    assert_eq!(done.status, Some(STATUS_OK));
    assert_eq!(done.used_len, 1);
    assert_eq!(done.data_bytes, 1024);
    let end = (CAPACITY * SECTOR_SIZE) as usize;
    assert_eq!(&disk.bytes[end - 1024..], &[0x5a; 1024][..]);
    assert!(disk.bytes[..end - 1024].iter().all(|&b| b == 0));
    assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), STATUS_OK);
}

#[test]
fn flush() {
    let m = mem();
    let mut disk = MemDisk::new(CAPACITY as u32);
    let descs = [desc(HDR, 16, R), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_FLUSH, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_OK));
    assert_eq!(r.status_byte, STATUS_OK);
    assert_eq!(r.done.used_len, 1);
    assert_eq!(disk.flushes, 1);

    disk.fail = true;
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_FLUSH, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_IOERR));
    assert_eq!(r.done.malformed, None);
    assert!(matches!(r.done.failed, Some(ExecError::Io(_))));

    // FLUSH carries no data.
    disk.fail = false;
    let descs = [desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_FLUSH, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_ioerr(&r, RequestError::UnexpectedWritable("FLUSH"));
    assert_eq!(disk.flushes, 1);
}

#[test]
fn get_id() {
    let m = mem();
    let mut disk = MemDisk::new(CAPACITY as u32);
    let descs = [desc(HDR, 16, R), desc(DATA, 64, W), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_GET_ID, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_OK));
    assert_eq!(r.done.used_len, 21);
    let mut want = b"disk-0".to_vec();
    want.resize(20, 0);
    assert_eq!(data(&m, 0, 20), want);
    assert_eq!(data(&m, 20, 1), vec![0xee]);

    // The id split over two buffers.
    let descs = [
        desc(HDR, 16, R),
        desc(DATA, 4, W),
        desc(DATA + 0x100, 16, W),
        desc(STATUS, 1, W),
    ];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_GET_ID, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_OK));
    assert_eq!(data(&m, 0, 4), b"disk");
    assert_eq!(data(&m, 0x100, 2), b"-0");

    let descs = [desc(HDR, 16, R), desc(DATA, 19, W), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_GET_ID, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_ioerr(&r, RequestError::ShortIdBuffer(19));
    assert_eq!(data(&m, 0, 1), vec![0xee]);
}

#[test]
fn unsupported_type() {
    let m = mem();
    let mut disk = patterned_disk();
    let before = disk.clone();
    for t in [2u32, 11, 13, 14, 0x8000_0000, u32::MAX] {
        let descs = [desc(HDR, 16 + 16, R), desc(STATUS, 1, W)];
        let r = run(&m, &header(t, 0), &descs, &mut disk, &props(false));
        assert_eq!(r.done.status, Some(STATUS_UNSUPP), "type {t}");
        assert_eq!(r.status_byte, STATUS_UNSUPP);
        assert_eq!(r.done.used_len, 1);
        assert_eq!(r.done.request_type, Some(RequestType::Unsupported(t)));
        assert_eq!(r.done.failed, Some(ExecError::Unsupported(t)));
    }
    assert_eq!(disk, before);
}

#[test]
fn out_of_range_sectors() {
    let m = mem();
    let cases = [
        (CAPACITY, 512u32),
        (CAPACITY - 1, 1024),
        (CAPACITY + 1, 0),
        (u64::MAX, 512),
        (u64::MAX / 512 + 1, 512),
        (u64::MAX - 1, 1024),
    ];
    for (t, flags) in [(VIRTIO_BLK_T_IN, W), (VIRTIO_BLK_T_OUT, R)] {
        for (sector, len) in cases {
            let mut disk = patterned_disk();
            let before = disk.clone();
            let descs = [desc(HDR, 16, R), desc(DATA, len, flags), desc(STATUS, 1, W)];
            let r = run(&m, &header(t, sector), &descs, &mut disk, &props(false));
            assert_eq!(
                r.done.status,
                Some(STATUS_IOERR),
                "sector {sector} len {len}"
            );
            assert_eq!(r.done.used_len, 1);
            assert_eq!(r.done.malformed, None);
            assert_eq!(
                r.done.failed,
                Some(ExecError::OutOfRange {
                    sector,
                    sectors: u64::from(len) / 512,
                    capacity: CAPACITY,
                })
            );
            assert_eq!(disk, before);
            assert_eq!(data(&m, 0, 1), vec![0xee]);
        }
    }
    // The last sector itself is fine, and so is an empty request at the end.
    let mut disk = patterned_disk();
    let descs = [desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, CAPACITY - 1),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_OK));
    assert_eq!(data(&m, 0, 512), vec![CAPACITY as u8; 512]);
    let descs = [desc(HDR, 16, R), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, CAPACITY),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_OK));
    assert_eq!(r.done.used_len, 1);
}

#[test]
fn read_only() {
    let m = mem();
    let mut disk = patterned_disk();
    let before = disk.clone();
    let descs = [desc(HDR, 16, R), desc(DATA, 512, R), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_OUT, 0),
        &descs,
        &mut disk,
        &props(true),
    );
    assert_eq!(r.done.status, Some(STATUS_IOERR));
    assert_eq!(r.status_byte, STATUS_IOERR);
    assert_eq!(r.done.failed, Some(ExecError::ReadOnly));
    assert_eq!(disk, before);

    let descs = [desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(true),
    );
    assert_eq!(r.done.status, Some(STATUS_OK));
    assert_eq!(data(&m, 0, 512), vec![1; 512]);
}

#[test]
fn disk_errors_are_ioerr() {
    let m = mem();
    let mut disk = patterned_disk();
    disk.fail = true;
    let descs = [desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_IOERR));
    assert_eq!(r.done.used_len, 1);
    assert_eq!(r.done.data_bytes, 0);
    assert!(matches!(r.done.failed, Some(ExecError::Io(_))));

    // A disk shorter than the capacity claims (truncated underneath us): IOERR.
    let mut disk = patterned_disk();
    disk.bytes.truncate(512 * 4);
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 4),
        &descs,
        &mut disk,
        &props(false),
    );
    assert!(matches!(r.done.failed, Some(ExecError::Io(_))));
    assert_eq!(r.done.status, Some(STATUS_IOERR));
}

#[test]
fn unaligned_data_length() {
    let m = mem();
    let mut disk = patterned_disk();
    let before = disk.clone();
    let descs = [desc(HDR, 16, R), desc(DATA, 511, W), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_ioerr(&r, RequestError::UnalignedLength(511));
    let descs = [desc(HDR, 16, R), desc(DATA, 513, R), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_OUT, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_ioerr(&r, RequestError::UnalignedLength(513));
    assert_eq!(disk, before);
}

#[test]
fn short_header() {
    let m = mem();
    let mut disk = patterned_disk();
    let descs = [desc(HDR, 15, R), desc(DATA, 512, W), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_ioerr(&r, RequestError::ShortHeader(15));
    assert_eq!(data(&m, 0, 1), vec![0xee]);
}

#[test]
fn writable_header() {
    let m = mem();
    let mut disk = patterned_disk();
    let descs = [desc(HDR, 16, W), desc(DATA, 512, W), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_ioerr(&r, RequestError::ShortHeader(0));
    assert_eq!(data(&m, 0, 1), vec![0xee]);
}

#[test]
fn data_in_the_wrong_direction() {
    let m = mem();
    let mut disk = patterned_disk();
    let before = disk.clone();
    // IN with a device-readable data buffer.
    let descs = [desc(HDR, 16, R), desc(DATA, 512, R), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_ioerr(&r, RequestError::UnexpectedReadable("IN"));
    // OUT with a device-writable data buffer.
    let descs = [desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 1, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_OUT, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_ioerr(&r, RequestError::UnexpectedWritable("OUT"));
    assert_eq!(data(&m, 0, 1), vec![0xee]);
    // A readable buffer after a writable one.
    let descs = [
        desc(HDR, 16, R),
        desc(DATA, 512, W),
        desc(DATA + 0x1000, 512, R),
        desc(STATUS, 1, W),
    ];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_ioerr(&r, RequestError::ReadableAfterWritable);
    assert_eq!(data(&m, 0, 1), vec![0xee]);
    assert_eq!(disk, before);
}

#[test]
fn no_usable_status() {
    let m = mem();
    let mut disk = patterned_disk();
    let before = disk.clone();
    // Last descriptor device-readable.
    let descs = [desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 1, R)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_dropped(&r, RequestError::StatusNotWritable);
    assert_eq!(data(&m, 0, 1), vec![0xee]);
    // Header only.
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_FLUSH, 0),
        &[desc(HDR, 16, R)],
        &mut disk,
        &props(false),
    );
    assert_dropped(&r, RequestError::StatusNotWritable);
    assert_eq!(disk.flushes, 0);
    // Zero-length status descriptor.
    let descs = [desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 0, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_dropped(&r, RequestError::EmptyStatus);
    // Status outside guest memory, and at the very top of the address space.
    for addr in [MEM_END, u64::MAX] {
        let descs = [desc(HDR, 16, R), desc(addr, 1, W)];
        let r = run(
            &m,
            &header(VIRTIO_BLK_T_FLUSH, 0),
            &descs,
            &mut disk,
            &props(false),
        );
        assert_dropped(&r, RequestError::StatusOutOfMemory(addr));
    }
    let descs = [desc(HDR, 16, R), desc(u64::MAX, 2, W)];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_FLUSH, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_dropped(&r, RequestError::StatusOutOfMemory(u64::MAX));
    assert_eq!(disk.flushes, 0);
    assert_eq!(disk, before);
}

#[test]
fn buffers_outside_guest_memory() {
    let m = mem();
    let mut disk = patterned_disk();
    let before = disk.clone();
    for (addr, len) in [
        (MEM_END, 512u32),
        (MEM_END - 256, 512),
        (u64::MAX - 100, 512),
    ] {
        for (t, flags) in [(VIRTIO_BLK_T_IN, W), (VIRTIO_BLK_T_OUT, R)] {
            let descs = [
                desc(HDR, 16, R),
                desc(DATA, 512, flags),
                desc(addr, len, flags),
                desc(STATUS, 1, W),
            ];
            let r = run(&m, &header(t, 0), &descs, &mut disk, &props(false));
            assert_ioerr(&r, RequestError::OutOfMemory { addr, len });
            // Validation happens before any I/O: the first buffer is untouched too.
            assert_eq!(data(&m, 0, 1), vec![0xee]);
        }
    }
    // The header itself outside memory.
    let descs = [desc(MEM_END, 16, R), desc(STATUS, 1, W)];
    let r = run(&m, &[], &descs, &mut disk, &props(false));
    assert_ioerr(
        &r,
        RequestError::OutOfMemory {
            addr: MEM_END,
            len: 16,
        },
    );
    assert_eq!(disk, before);
}

#[test]
fn looping_chain() {
    let m = mem();
    let mut disk = patterned_disk();
    // 0 -> 1 -> 2 -> 1 -> ...
    let descs = [
        desc_next(HDR, 16, R, 1),
        desc_next(DATA, 512, W, 2),
        desc_next(STATUS, 1, W, 1),
    ];
    let r = run_raw(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
        false,
    );
    assert_dropped(&r, RequestError::BrokenChain);
    // A self-loop.
    let descs = [desc_next(HDR, 16, R, 0)];
    let r = run_raw(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
        false,
    );
    assert_dropped(&r, RequestError::BrokenChain);
    // A next index past the queue.
    let descs = [desc_next(HDR, 16, R, 1), desc_next(STATUS, 1, W, 300)];
    let r = run_raw(
        &m,
        &header(VIRTIO_BLK_T_FLUSH, 0),
        &descs,
        &mut disk,
        &props(false),
        false,
    );
    assert_dropped(&r, RequestError::BrokenChain);
    assert_eq!(disk.flushes, 0);
}

#[test]
fn total_length_overflow() {
    let m = mem();
    let mut disk = patterned_disk();
    let descs = [
        desc(HDR, 16, R),
        desc(DATA, u32::MAX - 8, W),
        desc(STATUS, 1, W),
    ];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_dropped(&r, RequestError::BrokenChain);
    // Just under 4 GiB in total is a chain, but not in guest memory.
    let descs = [
        desc(HDR, 16, R),
        desc(DATA, u32::MAX - 17, W),
        desc(STATUS, 1, W),
    ];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_ioerr(
        &r,
        RequestError::OutOfMemory {
            addr: DATA,
            len: u32::MAX - 17,
        },
    );
}

/// Writes an indirect table of `n` descriptors at `table` and returns the chain head.
fn indirect_chain(m: &GuestMemoryMmap, table: u64, entries: &[RawDescriptor]) -> RawDescriptor {
    for (i, d) in entries.iter().enumerate() {
        m.write_obj(*d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    desc(
        table,
        16 * entries.len() as u32,
        VRING_DESC_F_INDIRECT as u16,
    )
}

#[test]
fn indirect_chains() {
    let m = mem();
    let mut disk = patterned_disk();
    let table = 0x8_0000;
    let entries = [
        desc_next(HDR, 16, R, 1),
        desc_next(DATA, 512, W, 2),
        desc(STATUS, 1, W),
    ];
    let head = indirect_chain(&m, table, &entries);
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 1),
        &[head],
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_OK));
    assert_eq!(data(&m, 0, 512), vec![2; 512]);

    // More descriptors than any queue: rejected, with nothing read.
    let mut entries = vec![desc_next(HDR, 16, R, 1)];
    for i in 1..300u16 {
        entries.push(desc_next(DATA, 512, W, i + 1));
    }
    entries.push(desc(STATUS, 1, W));
    let head = indirect_chain(&m, table, &entries);
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &[head],
        &mut disk,
        &props(false),
    );
    assert_dropped(&r, RequestError::TooManyDescriptors);
    assert_eq!(data(&m, 0, 1), vec![0xee]);

    // An indirect table whose length is not a multiple of 16: nothing to parse.
    let bad = desc(table, 20, VRING_DESC_F_INDIRECT as u16);
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &[bad],
        &mut disk,
        &props(false),
    );
    assert_dropped(&r, RequestError::EmptyChain);
}

#[test]
fn buffers_across_memory_regions() {
    // Two adjacent regions: a buffer may span them.
    let m = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x2_1000),
        (GuestAddress(0x2_1000), 0xd_f000),
    ])
    .unwrap();
    let mut disk = patterned_disk();
    let descs = [
        desc(HDR, 16, R),
        desc(0x2_1000 - 256, 1024, W),
        desc(STATUS, 1, W),
    ];
    let r = run(
        &m,
        &header(VIRTIO_BLK_T_IN, 0),
        &descs,
        &mut disk,
        &props(false),
    );
    assert_eq!(r.done.status, Some(STATUS_OK));
    let mut got = vec![0; 1024];
    m.read_slice(&mut got, GuestAddress(0x2_1000 - 256))
        .unwrap();
    assert_eq!(got, [vec![1; 512], vec![2; 512]].concat());
}

#[test]
fn file_backend() {
    let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
    let mut file = f.into_file();
    file.set_len(CAPACITY * SECTOR_SIZE).unwrap();
    let m = mem();
    m.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
    m.write_slice(&header(VIRTIO_BLK_T_OUT, 7), GuestAddress(HDR))
        .unwrap();
    let vq = MockSplitQueue::new(&m, 16);
    let descs = [desc(HDR, 16, R), desc(DATA, 512, R), desc(STATUS, 1, W)];
    let chain = vq.build_desc_chain(&descs).unwrap();
    let done = handle_chain(&chain, &mut file, &props(false));
    assert_eq!(done.status, Some(STATUS_OK));
    let mut back = [0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 7 * 512).unwrap();
    assert_eq!(back, [0x42; 512]);

    m.write_slice(&header(VIRTIO_BLK_T_IN, 7), GuestAddress(HDR))
        .unwrap();
    let descs = [
        desc(HDR, 16, R),
        desc(DATA + 0x1000, 512, W),
        desc(STATUS, 1, W),
    ];
    let chain = vq.build_desc_chain(&descs).unwrap();
    let done = handle_chain(&chain, &mut file, &props(false));
    assert_eq!(done.status, Some(STATUS_OK));
    assert_eq!(data(&m, 0x1000, 512), vec![0x42; 512]);
}
