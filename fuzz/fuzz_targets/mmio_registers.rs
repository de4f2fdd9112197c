//! Drives the virtio-mmio transport (`husk_vmm::devices::virtio::mmio::MmioTransport`) as a
//! guest driver would, and as a hostile one might: arbitrary register reads and writes (any
//! offset, inside the register file, in config space or past the window; sizes 1, 2, 4 and
//! 8, aligned or not; any value), guest memory writes (descriptor tables, rings, requests)
//! and runs of the VMM's event loop, in front of a real virtio-blk device on a small
//! image. So the status state machine, feature negotiation, queue set-up with arbitrary
//! ring addresses and sizes, activation, QUEUE_NOTIFY, queue processing and reset are all
//! reached. Nothing may panic; a few invariants of the registers are checked.
//!
//! Input: byte 0 (bit 0: read-only image), then operations, each an opcode byte (taken
//! modulo 6) and its arguments (little-endian; a truncated one ends the input):
//! - 0 read:       size (u8: 1, 2, 4 or 8 by its low 2 bits), offset (u16)
//! - 1 write:      size (u8), offset (u16), value (u64; its first `size` bytes are written)
//! - 2 register:   index (u8; offset = 4 * index, so config space too), value (u32)
//! - 3 memory:     guest address (u32, modulo the guest span), length (u8), that many bytes
//! - 4 event loop: run it once (queue notifications, activation's kick)
//! - 5 far access: write? (u8, bit 0), size (u8), offset (u64), value (u64)
#![no_main]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use event_manager::{EventManager, SubscriberOps};
use husk_vmm::devices::bus::BusDevice;
use husk_vmm::devices::virtio::block::{Block, BlockConfig};
use husk_vmm::devices::virtio::mmio::MmioTransport;
use husk_vmm::devices::virtio::{status, IrqTrigger, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory: two adjacent regions (rings and buffers may span them), a hole, a small
/// third one.
const REGIONS: [(u64, usize); 3] = [(0, 0x2_0000), (0x2_0000, 0x2_0000), (0x5_0000, 0x1000)];
const SPAN_END: u64 = 0x5_1000;
const DISK_BYTES: u64 = 64 * 512;
/// Runs of the event loop per input, so a chain of self-requeued kicks stays bounded.
const MAX_LOOP_RUNS: usize = 64;

const MAGIC: u32 = 0x7472_6976;
const REG_MAGIC: u64 = 0x000;
const REG_STATUS: u64 = 0x070;
const CONFIG_OFFSET: u64 = 0x100;
/// virtio-blk's config space husk fills (capacity, size_max, seg_max); zero after it.
const CONFIG_LEN: u64 = 16;

/// The disk image: an unlinked temporary file, reached through /proc/self/fd so that
/// `Block::new` opens it by path like any image and nothing is left behind.
fn image() -> &'static (File, PathBuf) {
    static IMAGE: OnceLock<(File, PathBuf)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("husk-fuzz-mmio-{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("a temporary image");
        std::fs::remove_file(&path).expect("unlink the image");
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        (f, proc_path)
    })
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

fn size(sel: u8) -> usize {
    [1, 2, 4, 8][usize::from(sel & 3)]
}

fn read(t: &mut MmioTransport, offset: u64, len: usize) -> [u8; 8] {
    let mut buf = [0xa5u8; 8];
    t.read(offset, &mut buf[..len]);
    // Outside config space only aligned 4-byte reads answer; the rest read as zero.
    if offset < CONFIG_OFFSET && (len != 4 || !offset.is_multiple_of(4)) {
        assert_eq!(
            buf[..len],
            [0u8; 8][..len],
            "{len}-byte read at {offset:#x}"
        );
    }
    if offset == REG_MAGIC && len == 4 {
        assert_eq!(u32::from_le_bytes(buf[..4].try_into().unwrap()), MAGIC);
    }
    if offset >= CONFIG_OFFSET + CONFIG_LEN {
        assert_eq!(buf[..len], [0u8; 8][..len], "config read at {offset:#x}");
    }
    buf
}

fn status_reg(t: &mut MmioTransport) -> u32 {
    u32::from_le_bytes(read(t, REG_STATUS, 4)[..4].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(flags) = input.u8() else {
        return;
    };
    let (disk, path) = image();
    // A fresh, zeroed image each run.
    disk.set_len(0).unwrap();
    disk.set_len(DISK_BYTES).unwrap();
    let cfg = BlockConfig {
        path: path.clone(),
        read_only: flags & 1 != 0,
        id: Some("fuzz-disk".into()),
    };
    let block = Arc::new(Mutex::new(Block::new(&cfg).expect("the fuzz image opens")));
    let mem = GuestMemoryMmap::<()>::from_ranges(&REGIONS.map(|(a, len)| (GuestAddress(a), len)))
        .unwrap();
    let irq = Arc::new(IrqTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let mut loop_ = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    loop_.add_subscriber(block.clone());
    let dev: Arc<Mutex<dyn VirtioDevice>> = block.clone();
    let mut t = MmioTransport::new(dev, mem.clone(), irq);
    let mut loop_runs = 0;

    while let Some(op) = input.u8() {
        let done = match op % 6 {
            0 => (|| {
                let len = size(input.u8()?);
                let offset = input.u16()?;
                read(&mut t, u64::from(offset), len);
                Some(())
            })(),
            1 => (|| {
                let len = size(input.u8()?);
                let offset = input.u16()?;
                let value = input.u64()?.to_le_bytes();
                t.write(u64::from(offset), &value[..len]);
                Some(())
            })(),
            2 => (|| {
                let index = input.u8()?;
                let value = input.u32()?;
                t.write(u64::from(index) * 4, &value.to_le_bytes());
                Some(())
            })(),
            3 => (|| {
                let addr = u64::from(input.u32()?) % SPAN_END;
                let len = usize::from(input.u8()?);
                // A write into the hole or past the end is refused, as a DMA there would be.
                let _ = mem.write_slice(input.bytes(len), GuestAddress(addr));
                Some(())
            })(),
            4 => {
                if loop_runs < MAX_LOOP_RUNS {
                    loop_runs += 1;
                    loop_.run_with_timeout(0).unwrap();
                }
                Some(())
            }
            _ => (|| {
                let write = input.u8()? & 1 != 0;
                let len = size(input.u8()?);
                let offset = input.u64()?;
                let value = input.u64()?.to_le_bytes();
                if write {
                    t.write(offset, &value[..len]);
                } else {
                    read(&mut t, offset, len);
                }
                Some(())
            })(),
        };
        if done.is_none() {
            break;
        }
        // The device runs only behind a completed handshake.
        if block.lock().unwrap().is_activated() {
            let s = status_reg(&mut t);
            let want = status::FEATURES_OK | status::DRIVER_OK;
            assert_eq!(s & want, want, "active with status {s:#x}");
        }
    }
    // Whatever was kicked last is processed too.
    while loop_runs < MAX_LOOP_RUNS && loop_.run_with_timeout(0).unwrap() > 0 {
        loop_runs += 1;
    }
});
