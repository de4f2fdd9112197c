//! Malformed descriptor chains: misaligned, misdirected or out-of-memory buffers, short
//! or writable headers, unusable status bytes, loops, overflows and indirect tables.
//! Each is refused (IOERR or dropped) before any disk I/O.

use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;

use super::*;

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
