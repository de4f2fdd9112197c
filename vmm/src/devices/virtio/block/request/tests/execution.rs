//! Well-formed requests executed against the in-memory and file disks: reads, writes,
//! flushes, GET_ID, unsupported types, out-of-range sectors, read-only disks, disk errors.

use super::*;

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
