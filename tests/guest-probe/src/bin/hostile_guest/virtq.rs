//! Just enough of a virtio-mmio driver to break every rule on purpose: the device's
//! register window and a reserved stretch of guest RAM, both mapped from /dev/mem, and
//! split virtqueues whose descriptors, rings and indices this program writes itself.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

/// virtio-mmio registers (virtio 1.2, 4.2.2).
pub mod reg {
    pub const DEVICE_ID: u64 = 0x008;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG: u64 = 0x100;
}

pub const ACKNOWLEDGE: u32 = 1;
pub const DRIVER: u32 = 2;
pub const DRIVER_OK: u32 = 4;
pub const FEATURES_OK: u32 = 8;
pub const DEVICE_NEEDS_RESET: u32 = 64;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// A physical range mapped from /dev/mem.
pub struct PhysMap {
    ptr: *mut u8,
    len: usize,
    pub base: u64,
}

// SAFETY: the mapping is plain memory (or device registers) owned by this process for
// its whole life; accesses are volatile.
unsafe impl Send for PhysMap {}

impl PhysMap {
    /// Maps `len` bytes of physical memory at `base` (`uncached` for device registers).
    pub fn new(base: u64, len: usize, uncached: bool) -> io::Result<Self> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(if uncached { libc::O_SYNC } else { 0 })
            .open("/dev/mem")?;
        let off = libc::off_t::try_from(base)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh shared mapping of /dev/mem; the kernel checks the range. It is
        // never unmapped, so the pointer stays valid for the program's life.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            base,
        })
    }

    fn at<T>(&self, off: u64) -> *mut T {
        let off = usize::try_from(off).expect("offset fits");
        assert!(
            off + std::mem::size_of::<T>() <= self.len,
            "offset {off:#x} outside the mapping"
        );
        // SAFETY: checked to lie inside the mapping just above.
        unsafe { self.ptr.add(off).cast() }
    }

    pub fn read<T: Copy>(&self, off: u64) -> T {
        // SAFETY: inside the mapping (see `at`); volatile, as the device may change it.
        unsafe { std::ptr::read_volatile(self.at::<T>(off)) }
    }

    pub fn write<T: Copy>(&self, off: u64, v: T) {
        // SAFETY: inside the mapping (see `at`); volatile, as the device reads it.
        unsafe { std::ptr::write_volatile(self.at::<T>(off), v) }
    }

    pub fn fill(&self, off: u64, len: usize, byte: u8) {
        for i in 0..len as u64 {
            self.write::<u8>(off + i, byte);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

/// One virtio-mmio device's register window.
pub struct Device {
    pub regs: PhysMap,
}

impl Device {
    pub fn open(base: u64) -> io::Result<Self> {
        Ok(Self {
            regs: PhysMap::new(base, 0x1000, true)?,
        })
    }

    pub fn r(&self, off: u64) -> u32 {
        self.regs.read::<u32>(off)
    }

    pub fn w(&self, off: u64, v: u32) {
        self.regs.write::<u32>(off, v);
    }

    pub fn id(&self) -> u32 {
        self.r(reg::DEVICE_ID)
    }

    pub fn status(&self) -> u32 {
        self.r(reg::STATUS)
    }

    pub fn reset(&self) {
        self.w(reg::STATUS, 0);
    }

    /// Reset, ACKNOWLEDGE, DRIVER and `features`; true if FEATURES_OK stuck.
    pub fn negotiate(&self, features: u64) -> bool {
        self.reset();
        self.w(reg::STATUS, ACKNOWLEDGE);
        self.w(reg::STATUS, ACKNOWLEDGE | DRIVER);
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, features as u32);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.w(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.status() & FEATURES_OK != 0
    }

    /// Programs queue `index` with `q`'s rings and marks it ready.
    pub fn setup_queue(&self, index: u32, q: &Queue) {
        self.w(reg::QUEUE_SEL, index);
        self.w(reg::QUEUE_NUM, u32::from(q.size));
        let (d, a, u) = (q.desc_addr(), q.avail_addr(), q.used_addr());
        self.w(reg::QUEUE_DESC_LOW, d as u32);
        self.w(reg::QUEUE_DESC_HIGH, (d >> 32) as u32);
        self.w(reg::QUEUE_DRIVER_LOW, a as u32);
        self.w(reg::QUEUE_DRIVER_HIGH, (a >> 32) as u32);
        self.w(reg::QUEUE_DEVICE_LOW, u as u32);
        self.w(reg::QUEUE_DEVICE_HIGH, (u >> 32) as u32);
        self.w(reg::QUEUE_READY, 1);
    }

    pub fn driver_ok(&self) -> u32 {
        self.w(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.status()
    }

    pub fn notify(&self, queue: u32) {
        fence(Ordering::SeqCst);
        self.w(reg::QUEUE_NOTIFY, queue);
    }

    pub fn ack_interrupts(&self) {
        let s = self.r(reg::INTERRUPT_STATUS);
        self.w(reg::INTERRUPT_ACK, s);
    }
}

/// A split virtqueue in the reserved RAM: the descriptor table, the available ring and the
/// used ring each on a page of their own, `size` entries.
pub struct Queue<'a> {
    pub mem: &'a PhysMap,
    /// Offset of the queue's first page in `mem`.
    pub off: u64,
    pub size: u16,
    /// The driver's available index (what it last published).
    pub avail_idx: u16,
    /// The used index this driver has read up to.
    pub used_seen: u16,
}

pub const QUEUE_PAGES: u64 = 3;

impl<'a> Queue<'a> {
    pub fn new(mem: &'a PhysMap, off: u64, size: u16) -> Self {
        let q = Self {
            mem,
            off,
            size,
            avail_idx: 0,
            used_seen: 0,
        };
        mem.fill(off, (QUEUE_PAGES * 4096) as usize, 0);
        q
    }

    pub fn desc_addr(&self) -> u64 {
        self.mem.base + self.off
    }
    pub fn avail_addr(&self) -> u64 {
        self.desc_addr() + 4096
    }
    pub fn used_addr(&self) -> u64 {
        self.desc_addr() + 8192
    }

    /// Writes descriptor `i` as it is, wherever its fields point.
    pub fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.off + 16 * u64::from(i);
        self.mem.write::<u64>(at, addr.to_le());
        self.mem.write::<u32>(at + 8, len.to_le());
        self.mem.write::<u16>(at + 12, flags.to_le());
        self.mem.write::<u16>(at + 14, next.to_le());
    }

    /// Puts `head` in the next available slot and publishes it.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write::<u16>(self.off + 4096 + 4 + 2 * slot, head.to_le());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available index as it is (a lie, if the caller wants).
    pub fn set_avail_idx(&self, idx: u16) {
        fence(Ordering::SeqCst);
        self.mem.write::<u16>(self.off + 4096 + 2, idx.to_le());
    }

    pub fn used_idx(&self) -> u16 {
        fence(Ordering::SeqCst);
        u16::from_le(self.mem.read::<u16>(self.off + 8192 + 2))
    }

    /// The used element `n` (id, len).
    pub fn used_elem(&self, n: u16) -> (u32, u32) {
        let slot = u64::from(n % self.size);
        let at = self.off + 8192 + 4 + 8 * slot;
        (
            u32::from_le(self.mem.read::<u32>(at)),
            u32::from_le(self.mem.read::<u32>(at + 4)),
        )
    }

    /// Waits until the used index passes `used_seen + want` (or `timeout`), then returns
    /// the new used elements and moves `used_seen` past them.
    pub fn wait_used(&mut self, want: u16, timeout: Duration) -> Vec<(u32, u32)> {
        let start = Instant::now();
        while self.used_idx().wrapping_sub(self.used_seen) < want && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(5));
        }
        let now = self.used_idx();
        let mut out = Vec::new();
        while self.used_seen != now {
            out.push(self.used_elem(self.used_seen));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// The devices the VMM put on the command line: `virtio_mmio.device=4K@<base>:<irq>`.
pub fn cmdline_devices(cmdline: &str) -> Vec<(u64, u32)> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("virtio_mmio.device="))
        .filter_map(|spec| {
            let (_, rest) = spec.split_once('@')?;
            let (base, irq) = rest.split_once(':')?;
            let base = u64::from_str_radix(base.trim_start_matches("0x"), 16).ok()?;
            Some((base, irq.parse().ok()?))
        })
        .collect()
}

/// The end of guest RAM, from /proc/iomem's "System RAM" lines.
pub fn ram_end() -> u64 {
    std::fs::read_to_string("/proc/iomem")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim_start() == *l && l.ends_with(": System RAM"))
        .filter_map(|l| {
            let range = l.split_whitespace().next()?;
            let (_, end) = range.split_once('-')?;
            u64::from_str_radix(end, 16).ok()
        })
        .max()
        .map_or(0, |e| e + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_from_the_command_line() {
        let c = "console=ttyS0 virtio_mmio.device=4K@0xc0000000:5 quiet \
                 virtio_mmio.device=4K@0xc0001000:6";
        assert_eq!(cmdline_devices(c), [(0xc000_0000, 5), (0xc000_1000, 6)]);
    }
}
