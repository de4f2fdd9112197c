//! Writing guest RAM into a snapshot's memory file, sparsely: only pages holding something
//! other than zeros are written, the rest stay holes (a 256 MiB guest that touched 40 MiB
//! makes a file with 40 MiB on disk, and restores read no more).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::{
    Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use super::format::MEMORY_DATA_OFFSET;
use crate::guest_ram::{data_extents, Backing};

const PAGE: usize = 4096;
/// Guest RAM is copied out through a buffer this large.
const CHUNK: usize = 1 << 20;

/// What writing guest RAM did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryWritten {
    /// Bytes of guest RAM looked at (data extents of the backing file).
    pub scanned: u64,
    /// Bytes written to the file (non-zero pages).
    pub written: u64,
}

/// Writes every region of `mem` (in address order, back to back) from
/// [`MEMORY_DATA_OFFSET`] of `out`, which must already be that long plus the RAM, with
/// holes. With a memfd backing only its data extents are read (reading a memfd's hole
/// would allocate the page); a private file mapping is read page by page.
pub fn write_guest_memory(
    mem: &GuestMemoryMmap,
    backing: Backing,
    out: &File,
) -> io::Result<MemoryWritten> {
    let mut stats = MemoryWritten::default();
    let mut buf = vec![0u8; CHUNK];
    let mut file_offset = MEMORY_DATA_OFFSET;
    for region in mem.iter() {
        let len = region.len();
        let extents = match (backing, region.file_offset()) {
            (Backing::SharedMemfd, Some(fo)) => {
                data_extents(fo.file().as_raw_fd(), fo.start(), len)?
            }
            _ => vec![(0, len)],
        };
        for (start, end) in extents {
            let mut pos = start;
            while pos < end {
                let n = (end - pos).min(CHUNK as u64) as usize;
                region
                    .read_slice(&mut buf[..n], MemoryRegionAddress(pos))
                    .map_err(|e| io::Error::other(e.to_string()))?;
                stats.written += write_nonzero_pages(out, &buf[..n], file_offset + pos)?;
                stats.scanned += n as u64;
                pos += n as u64;
            }
        }
        file_offset += len;
    }
    Ok(stats)
}

/// Writes the runs of non-zero pages of `data` at `offset` (+ their place in `data`).
fn write_nonzero_pages(out: &File, data: &[u8], offset: u64) -> io::Result<u64> {
    let mut written = 0;
    let mut run: Option<usize> = None;
    let pages = data.len().div_ceil(PAGE);
    for i in 0..=pages {
        let page = data.get(i * PAGE..((i + 1) * PAGE).min(data.len()));
        let zero = page.is_none_or(|p| p.iter().all(|&b| b == 0));
        match (run, zero) {
            (None, false) => run = Some(i * PAGE),
            (Some(from), true) => {
                let to = (i * PAGE).min(data.len());
                out.write_all_at(&data[from..to], offset + from as u64)?;
                written += (to - from) as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::guest_ram;

    const MIB: u64 = 1 << 20;

    fn out_file(size: u64) -> File {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.set_len(MEMORY_DATA_OFFSET + size).unwrap();
        f
    }

    fn on_disk(f: &File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        f.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn only_written_pages_reach_the_file() {
        let size = 64 * MIB;
        let mem = guest_ram::shared(size).unwrap();
        mem.write_slice(&[0x11; 10], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[0x22; 4096], GuestAddress(20 * MIB))
            .unwrap();
        // Touched but zero: read, not written.
        mem.write_slice(&[0; 4096], GuestAddress(30 * MIB)).unwrap();
        mem.write_slice(&[0x33; 2], GuestAddress(size - 2)).unwrap();
        let out = out_file(size);
        let stats = write_guest_memory(&mem, Backing::SharedMemfd, &out).unwrap();
        assert_eq!(stats.written, 3 * 4096);
        // The memfd's data extents: four pages, or four huge pages where the host gives
        // shared memory huge pages (shmem_enabled=advise): only non-zero pages are written
        // either way.
        assert!(
            stats.scanned == 4 * 4096 || stats.scanned == 4 * 2 * MIB,
            "scanned {}",
            stats.scanned
        );
        assert!(
            on_disk(&out) <= 64 * 1024,
            "{} bytes on disk",
            on_disk(&out)
        );

        // Mapped back, it is the same memory.
        let back = guest_ram::private_from_file(&out, MEMORY_DATA_OFFSET, size).unwrap();
        let mut got = [0u8; 10];
        back.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, [0x11; 10]);
        assert_eq!(
            back.read_obj::<u8>(GuestAddress(20 * MIB + 4095)).unwrap(),
            0x22
        );
        assert_eq!(
            back.read_obj::<u16>(GuestAddress(size - 2)).unwrap(),
            0x3333
        );
        assert_eq!(back.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 0);

        // A private mapping is scanned whole: a page the clone wrote where the file has
        // a hole is kept.
        back.write_obj(0x44u8, GuestAddress(40 * MIB)).unwrap();
        let again = out_file(size);
        let stats = write_guest_memory(&back, Backing::PrivateFile, &again).unwrap();
        assert_eq!(stats.scanned, size);
        assert_eq!(stats.written, 4 * 4096);
        let third = guest_ram::private_from_file(&again, MEMORY_DATA_OFFSET, size).unwrap();
        assert_eq!(third.read_obj::<u8>(GuestAddress(40 * MIB)).unwrap(), 0x44);
        assert_eq!(third.read_obj::<u8>(GuestAddress(0x1009)).unwrap(), 0x11);
    }

    #[test]
    fn runs_of_pages() {
        let out = out_file(MIB);
        let mut data = vec![0u8; 5 * PAGE + 100];
        data[PAGE] = 1;
        data[2 * PAGE + 7] = 2;
        data[5 * PAGE + 99] = 3;
        let n = write_nonzero_pages(&out, &data, MEMORY_DATA_OFFSET).unwrap();
        assert_eq!(n, 2 * PAGE as u64 + 100);
        let mut back = vec![0u8; data.len()];
        out.read_exact_at(&mut back, MEMORY_DATA_OFFSET).unwrap();
        assert_eq!(back, data);
    }
}
