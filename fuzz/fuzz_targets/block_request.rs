//! Fuzzes virtio-blk request parsing and execution: a descriptor chain and guest memory
//! built from the input, run through `Request::parse` and `handle_chain` against an
//! in-memory disk. Looks for panics, hangs, and a few invariants of the answer.

#![no_main]

use husk_vmm::devices::virtio::block::request::{
    handle_chain, DiskProperties, MemDisk, Request, RequestType, ID_LEN, MAX_DESCRIPTORS,
    SECTOR_SIZE,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Guest memory: two adjacent regions (buffers may span them), a hole, a small third one.
const REGIONS: [(u64, usize); 3] = [(0, 0x2_0000), (0x2_0000, 0x2_0000), (0x5_0000, 0x1000)];
/// Where the request header is written (descriptors still choose where to point).
const HEADER_ADDR: u64 = 0x1_0000;
const DATA_WINDOW: u64 = 0x1_8000;
const SPAN_END: u64 = 0x5_1000;
const QUEUE_SIZE: u16 = 256;
const DISK_SECTORS: u32 = 64;

/// Where a descriptor points: mostly somewhere useful, sometimes anywhere at all.
#[derive(Arbitrary, Debug)]
enum Addr {
    Header,
    /// An offset into a data window that crosses the boundary between the first two regions.
    Data(u16),
    /// Anywhere in the guest-physical span of the regions, holes included.
    Span(u32),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Len {
    /// A request header's length.
    Header,
    /// A status byte's.
    Status,
    Sectors(u8),
    Bytes(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Sector {
    /// Around the disk's end.
    Near(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Flags {
    Readable,
    Writable,
    /// Any flags: NEXT, WRITE, INDIRECT and undefined bits.
    Raw(u16),
}

#[derive(Arbitrary, Debug)]
struct FuzzDescriptor {
    addr: Addr,
    len: Len,
    flags: Flags,
    next: u16,
}

impl FuzzDescriptor {
    fn addr(&self) -> u64 {
        match self.addr {
            Addr::Header => HEADER_ADDR,
            Addr::Data(off) => DATA_WINDOW + u64::from(off),
            Addr::Span(x) => u64::from(x) % SPAN_END,
            Addr::Raw(a) => a,
        }
    }

    fn flags(&self) -> u16 {
        match self.flags {
            Flags::Readable => 0,
            Flags::Writable => VRING_DESC_F_WRITE as u16,
            Flags::Raw(f) => f,
        }
    }

    fn len(&self) -> u32 {
        match self.len {
            Len::Header => 16,
            Len::Status => 1,
            Len::Sectors(n) => u32::from(n) * 512,
            Len::Bytes(n) => u32::from(n),
            Len::Raw(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    kind: Kind,
    sector: Sector,
    read_only: bool,
    /// Link the descriptors in order (0 -> 1 -> ... -> last) instead of using their own
    /// NEXT flags and indices. (Fixed-size fields come before the vectors, whose lengths
    /// `arbitrary` takes from the end of the data.)
    linked: bool,
    /// Descriptor table entries from index 0; the chain starts at 0.
    descriptors: Vec<FuzzDescriptor>,
    /// Extra guest memory contents (indirect tables, data), at offsets into the first region.
    writes: Vec<(u16, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let Ok(mem) =
        GuestMemoryMmap::<()>::from_ranges(&REGIONS.map(|(a, len)| (GuestAddress(a), len)))
    else {
        return;
    };
    let mut header = [0u8; 16];
    let request_type = match input.kind {
        Kind::In => VIRTIO_BLK_T_IN,
        Kind::Out => VIRTIO_BLK_T_OUT,
        Kind::Flush => VIRTIO_BLK_T_FLUSH,
        Kind::GetId => VIRTIO_BLK_T_GET_ID,
        Kind::Raw(t) => t,
    };
    let sector = match input.sector {
        Sector::Near(n) => u64::from(n) % (u64::from(DISK_SECTORS) + 8),
        Sector::Raw(s) => s,
    };
    header[..4].copy_from_slice(&request_type.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    let _ = mem.write_slice(&header, GuestAddress(HEADER_ADDR));
    for (offset, bytes) in input.writes.iter().take(16) {
        let _ = mem.write_slice(bytes, GuestAddress(0x8000 + u64::from(*offset)));
    }

    let vq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    let descriptors: Vec<RawDescriptor> = input
        .descriptors
        .iter()
        .take(usize::from(QUEUE_SIZE))
        .map(|d| RawDescriptor::from(Descriptor::new(d.addr(), d.len(), d.flags(), d.next)))
        .collect();
    if descriptors.is_empty() {
        return;
    }
    let chain = if input.linked {
        vq.build_desc_chain(&descriptors)
    } else {
        vq.build_multiple_desc_chains(&descriptors)
    };
    let Ok(chain) = chain else {
        return;
    };

    let props = DiskProperties {
        capacity: u64::from(DISK_SECTORS),
        read_only: input.read_only,
        id: *b"fuzz-disk\0\0\0\0\0\0\0\0\0\0\0",
    };
    let mut disk = MemDisk::new(DISK_SECTORS);
    for (i, b) in disk.bytes.iter_mut().enumerate() {
        *b = i as u8;
    }
    let before = disk.clone();

    let parsed = Request::parse(&chain);
    if let Ok(req) = &parsed {
        assert!(req.data.len() <= MAX_DESCRIPTORS);
        assert_eq!(
            req.data_len,
            req.data.iter().map(|s| u64::from(s.len)).sum::<u64>()
        );
        for s in &req.data {
            assert!(mem.check_range(s.addr, s.len as usize, Permissions::Read));
        }
        assert!(mem.check_range(req.status_addr, 1, Permissions::Write));
        if matches!(req.request_type, RequestType::In | RequestType::Out) {
            assert_eq!(req.data_len % SECTOR_SIZE, 0);
        }
    }

    let done = handle_chain(&chain, &mut disk, &props);
    // A used length of 0 exactly when no status could be written.
    assert_eq!(done.used_len == 0, done.status.is_none());
    assert_eq!(done.malformed.is_some(), parsed.is_err());
    if done.status == Some(0) {
        assert!(done.failed.is_none() && done.malformed.is_none());
    }
    if let (Ok(req), Some(0)) = (&parsed, done.status) {
        let want = match req.request_type {
            RequestType::In => req.data_len + 1,
            RequestType::GetId => ID_LEN as u64 + 1,
            _ => 1,
        };
        assert_eq!(u64::from(done.used_len), want);
    }
    assert_eq!(disk.bytes.len(), before.bytes.len());
    if input.read_only || !matches!(&parsed, Ok(r) if r.request_type == RequestType::Out) {
        assert_eq!(
            disk.bytes, before.bytes,
            "the disk changed without a valid write"
        );
    }
});
