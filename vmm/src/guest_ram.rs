//! Guest RAM: how it is backed, and registering it with KVM.
//!
//! - A booted VM's RAM is one memfd, mapped range by range: its holes are the pages the
//!   guest never touched, which a snapshot leaves out without reading them.
//! - A VM restored from a snapshot maps the snapshot's memory file `MAP_PRIVATE`: pages
//!   are read from the file when the guest first touches them, every VM restored from
//!   one file shares the unchanged ones through the page cache, and what a guest writes
//!   becomes a private copy of its own. (No backend process maps guest RAM: virtio-fs's
//!   relay copies requests into a window of its own, `devices::virtio::fs::relay`.)
//! - The memfd asks for transparent huge pages (`MADV_HUGEPAGE`). KVM then maps guest
//!   memory 2 MiB at a time: a booting guest takes one nested page fault where it took
//!   512, and under nested virtualisation every fault is an expensive exit. The host
//!   decides: shmem (memfd) huge pages need `/sys/kernel/mm/transparent_hugepage/
//!   shmem_enabled` at `advise` (what `scripts/install.sh` sets) or `within_size`/`always`;
//!   at `never`, Linux's default, the advice is ignored and RAM stays in 4 KiB pages.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, RawFd};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::{FromRangesError, MmapRegionError};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionCollectionError, GuestRegionMmap, MmapRegion,
};

use crate::arch::x86_64::memory;

/// How guest RAM is backed (what a snapshot of it must read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// A shared memfd: its holes are pages the guest never touched.
    SharedMemfd,
    /// A private mapping of a snapshot's memory file: a hole in the file may be a page the
    /// guest has written since (a private copy), so every page must be looked at.
    PrivateFile,
}

/// Errors setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum GuestRamError {
    #[error("Cannot create the guest memory file")]
    MemoryFile(#[source] io::Error),
    #[error("Cannot allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] FromRangesError),
    #[error("Cannot map the snapshot's memory file")]
    Map(#[source] MmapRegionError),
    #[error("Guest memory regions overlap or are empty")]
    Regions(#[source] GuestRegionCollectionError),
    #[error("Cannot register guest memory with KVM")]
    Register(#[source] kvm_ioctls::Error),
}

/// A booted VM's RAM: `size` bytes of a new shared memfd.
pub fn shared(size: u64) -> Result<GuestMemoryMmap, GuestRamError> {
    let file = memfd(c"husk-guest-ram", size).map_err(GuestRamError::MemoryFile)?;
    let mut offset = 0;
    let mut ranges = Vec::new();
    for (start, len) in memory::ram_ranges(size) {
        let fd = file.try_clone().map_err(GuestRamError::MemoryFile)?;
        ranges.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::new(fd, offset)),
        ));
        offset += len;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files(ranges)
        .map_err(|e| GuestRamError::Allocate(size >> 20, e))?;
    for region in mem.iter() {
        advise_huge_pages(region.as_ptr(), region.len() as usize);
    }
    Ok(mem)
}

/// Asks for transparent huge pages over a mapping. Only a request: a kernel without THP
/// (EINVAL) or a host that keeps shmem in small pages leaves the memory as it was.
fn advise_huge_pages(addr: *mut u8, len: usize) {
    // SAFETY: MADV_HUGEPAGE only changes how the kernel backs this live mapping of ours
    // (page size); its contents and address stay the same.
    let rc = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        tracing::debug!(
            "madvise(MADV_HUGEPAGE) on guest RAM: {}",
            io::Error::last_os_error()
        );
    }
}

/// A restored VM's RAM, mapped private from `file`, whose guest RAM starts at
/// `data_offset` (the caller checked the file is `data_offset + size` bytes long).
pub fn private_from_file(
    file: &File,
    data_offset: u64,
    size: u64,
) -> Result<GuestMemoryMmap, GuestRamError> {
    let mut offset = data_offset;
    let mut regions = Vec::new();
    for (start, len) in memory::ram_ranges(size) {
        let fd = file.try_clone().map_err(GuestRamError::MemoryFile)?;
        let region = MmapRegion::build(
            Some(FileOffset::new(fd, offset)),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(GuestRamError::Map)?;
        // `new` fails only for a region that would wrap the address space.
        let region = GuestRegionMmap::new(region, GuestAddress(start)).ok_or(
            GuestRamError::Regions(GuestRegionCollectionError::NoMemoryRegion),
        )?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(GuestRamError::Regions)
}

/// Tells KVM where each region of `mem` is, slot by slot.
pub fn register(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), GuestRamError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem` of exactly `memory_size`
        // bytes, and `mem` outlives the VM: the `Vm` keeps it until the process exits.
        unsafe { vm_fd.set_user_memory_region(region_desc) }.map_err(GuestRamError::Register)?;
    }
    Ok(())
}

/// The ranges holding data in `len` bytes of `fd` from `start`, relative to `start`
/// (SEEK_DATA/SEEK_HOLE: a hole reads as zeros without being stored). A file system
/// without hole support reports everything as data, which is still right.
pub fn data_extents(fd: RawFd, start: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let end = start + len;
    let mut extents = Vec::new();
    let mut pos = start;
    while pos < end {
        // SAFETY: lseek on an fd we own; it only moves the file position (no one reads
        // these fds by position: guest RAM is mapped).
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            // ENXIO: no data past `pos`.
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let hole = (hole as u64).min(end);
        extents.push((data - start, hole - start));
        pos = hole;
    }
    Ok(extents)
}

/// A new memfd of `size` bytes (holes), named `name` in /proc/PID/maps.
pub(crate) fn memfd(name: &CStr, size: u64) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated string; the call only creates a new fd.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new file descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    use vm_memory::Bytes;

    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn extents_of_a_sparse_file() {
        let f = memfd(c"t", 8 * MIB).unwrap();
        assert!(data_extents(f.as_raw_fd(), 0, 8 * MIB).unwrap().is_empty());
        f.write_all_at(&[1; 4096], MIB).unwrap();
        f.write_all_at(&[2; 8192], 3 * MIB).unwrap();
        let e = data_extents(f.as_raw_fd(), 0, 8 * MIB).unwrap();
        assert_eq!(e, vec![(MIB, MIB + 4096), (3 * MIB, 3 * MIB + 8192)]);
        // Relative to the start, clipped to the window.
        let e = data_extents(f.as_raw_fd(), MIB + 1024, 2 * MIB).unwrap();
        assert_eq!(e, vec![(0, 3072), (2 * MIB - 1024, 2 * MIB)]);
        assert!(data_extents(f.as_raw_fd(), 4 * MIB, MIB)
            .unwrap()
            .is_empty());
    }

    /// A fake snapshot memory file: a header page, then RAM with two written pages.
    fn snapshot_file(size: u64) -> File {
        let f = memfd(c"t", 4096 + size).unwrap();
        f.write_all_at(b"header", 0).unwrap();
        f.write_all_at(&[0xaa; 4096], 4096 + 0x10_0000).unwrap();
        f.write_all_at(&[0xbb; 100], 4096 + size - 100).unwrap();
        f
    }

    #[test]
    fn private_mapping_reads_the_file_and_keeps_writes_to_itself() {
        let size = 64 * MIB;
        let f = snapshot_file(size);
        let a = private_from_file(&f, 4096, size).unwrap();
        let b = private_from_file(&f, 4096, size).unwrap();
        assert_eq!(a.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0xaa);
        assert_eq!(a.read_obj::<u8>(GuestAddress(size - 1)).unwrap(), 0xbb);
        assert_eq!(a.read_obj::<u8>(GuestAddress(0)).unwrap(), 0);
        a.write_obj(0x11u8, GuestAddress(0x10_0000)).unwrap();
        // Neither the other clone nor the file sees it.
        assert_eq!(b.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0xaa);
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, 4096 + 0x10_0000).unwrap();
        assert_eq!(byte[0], 0xaa);
    }

    #[test]
    fn ranges_above_the_mmio_gap() {
        // 3 GiB + 1 GiB: two regions, the second at 4 GiB, read from the right file offset.
        let size = 4u64 << 30;
        let f = memfd(c"t", 4096 + size).unwrap();
        f.write_all_at(&[0xcc; 8], 4096 + layout_gap()).unwrap();
        let mem = private_from_file(&f, 4096, size).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(1 << 32)).unwrap(), 0xcc);
    }

    fn layout_gap() -> u64 {
        crate::arch::x86_64::layout::MMIO_GAP_START
    }
}
