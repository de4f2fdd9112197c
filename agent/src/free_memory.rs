//! Zeroing the guest's free memory before a template snapshot (PrepareSnapshot).
//!
//! husk-vmm's snapshot leaves zero pages out, and every pod restored from a template
//! copies the snapshot's pages into its own guest RAM. A freshly booted guest's free
//! memory is not zero: the kernel freed the compressed kernel image, the initramfs
//! archive (the agent's 5 MiB once more) and its init sections without clearing them. The
//! agent zeroes it the only way user space can: it takes free memory into anonymous
//! mappings (the kernel hands out pages it has cleared), then gives it back, now zero.
//! It stops short of a reserve, so that the kernel never runs short while it holds them
//! (the agent is PID 1: an out-of-memory guest would have nothing to kill but panic).

use std::io;

/// How much is taken per mapping at most (each is populated at once).
const CHUNK: u64 = 16 << 20;
/// Mappings smaller than this are not worth a call.
const MIN_CHUNK: u64 = 1 << 20;
/// The reserve is at least this.
const MIN_RESERVE: u64 = 8 << 20;

/// What [`zero_free_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zeroed {
    /// Bytes taken and given back, zero.
    pub zeroed: u64,
    /// Free bytes after, left as they were but for the reserve.
    pub left: u64,
}

/// Free memory the kernel keeps for itself while the agent holds the rest: four times
/// its own minimum (`vm.min_free_kbytes`, below which allocations reclaim or fail), 1/32
/// of the RAM, or 8 MiB, whichever is most.
pub fn reserve(total: u64, min_free: u64) -> u64 {
    MIN_RESERVE.max(min_free.saturating_mul(4)).max(total / 32)
}

/// The next mapping's size with `free` bytes free and `reserve` kept: up to [`CHUNK`],
/// whole pages, none when less than [`MIN_CHUNK`] is left above the reserve.
pub fn next_chunk(free: u64, reserve: u64, page: u64) -> Option<u64> {
    let room = free.saturating_sub(reserve).min(CHUNK);
    let room = room - room % page.max(1);
    (room >= MIN_CHUNK).then_some(room)
}

/// (total, free) RAM in bytes, from sysinfo(2).
fn ram() -> io::Result<(u64, u64)> {
    // SAFETY: `sysinfo` is plain integers (and padding): all zeroes is a valid value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo that outlives the call, which fills it.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = u64::from(info.mem_unit.max(1));
    Ok((info.totalram as u64 * unit, info.freeram as u64 * unit))
}

/// An anonymous private mapping, populated (written) at once; unmapped on drop.
struct Taken {
    addr: *mut libc::c_void,
    len: usize,
}

impl Taken {
    fn new(len: u64) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // MAP_POPULATE on a private writable mapping write-faults every page in: each is a
        // page the kernel cleared.
        // SAFETY: a new anonymous mapping, at an address the kernel picks: aliases nothing.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { addr, len })
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        // SAFETY: `addr` and `len` are this mapping's, which nothing else refers to.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// The kernel's `vm.min_free_kbytes`, in bytes (0 if unreadable).
fn min_free() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/min_free_kbytes")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Syncs, drops clean caches, then takes all free memory above [`reserve`] and gives it
/// back zeroed. In the guest only: on any other machine it would take that machine's
/// memory.
pub fn zero_free_memory() -> io::Result<Zeroed> {
    crate::sys::sync();
    // Clean page cache, dentries and inodes: more free memory, then zeroed. (The rootfs
    // is the initramfs's, which no cache drop frees.)
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    // SAFETY: sysconf with a constant name.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let (total, _) = ram()?;
    let keep = reserve(total, min_free());
    let mut taken = Vec::new();
    let mut zeroed = 0;
    while let Some(len) = next_chunk(ram()?.1, keep, page) {
        taken.push(Taken::new(len)?);
        zeroed += len;
    }
    drop(taken);
    Ok(Zeroed {
        zeroed,
        left: ram()?.1.saturating_sub(zeroed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_reserve_is_the_largest_of_three() {
        // A 256 MiB guest: 1/32 is 8 MiB, as is the floor.
        assert_eq!(reserve(256 * MIB, 1400 * 1024), 8 * MIB);
        // A large min_free_kbytes wins.
        assert_eq!(reserve(256 * MIB, 4 * MIB), 16 * MIB);
        // A 4 GiB guest keeps 128 MiB.
        assert_eq!(reserve(4096 * MIB, 8 * MIB), 128 * MIB);
        // Tiny or absurd inputs keep the floor, never overflow.
        assert_eq!(reserve(0, 0), 8 * MIB);
        assert_eq!(reserve(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn chunks_stop_at_the_reserve() {
        assert_eq!(next_chunk(200 * MIB, 8 * MIB, 4096), Some(CHUNK));
        assert_eq!(next_chunk(20 * MIB, 8 * MIB, 4096), Some(12 * MIB));
        // Whole pages only.
        assert_eq!(next_chunk(8 * MIB + MIB + 100, 8 * MIB, 4096), Some(MIB));
        // Less than a MiB above the reserve, or below it: done.
        assert_eq!(next_chunk(8 * MIB + MIB - 4096, 8 * MIB, 4096), None);
        assert_eq!(next_chunk(4 * MIB, 8 * MIB, 4096), None);
        assert_eq!(next_chunk(0, 0, 0), None);
    }
}
