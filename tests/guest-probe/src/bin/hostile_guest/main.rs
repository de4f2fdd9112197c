//! husk-hostile-guest: PID 1 of the hostile-guest test (tests/tests/hostile_guest.rs),
//! booted on the test-only kernel (guest-image/kernel/husk-guest-hostile.fragment: /dev/mem,
//! no virtio drivers). It plays a guest kernel an attacker owns: it finds husk-vmm's
//! virtio-mmio devices on the command line, maps their registers and a reserved stretch of
//! RAM (`memmap=` on the command line) from /dev/mem, and drives every device wrongly on
//! purpose: writes all over the register windows and the MMIO gap, broken status and
//! queue set-ups, malformed and looping descriptor chains, giant lengths, lying ring
//! indices, notify storms; on vsock also floods, credit overruns and connections it never
//! answers. Between the abuse, each device must still do a plain job right.
//!
//! It reports on the console, one line per step, `hostile: <step> key=value ...`, and
//! `hostile: FAIL <why>` for a device that misbehaved in return; then `hostile: done` and
//! a restart (husk-vmm's clean exit). The host test drives the other ends (a Unix listener
//! for vsock, the tap) and watches husk-vmm's memory and log meanwhile.

mod abuse;
mod blk_net;
mod virtq;
mod vsock;

use std::ffi::CString;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use virtq::{cmdline_devices, ram_end, Device, PhysMap};

/// Where the test's `memmap=16M$128M` reserves RAM for the rings and buffers.
pub const RESERVED_BASE: u64 = 128 << 20;
pub const RESERVED_LEN: usize = 16 << 20;

/// Offsets in the reserved RAM: each device's queues, then buffers.
pub mod layout {
    pub const VSOCK_QUEUES: u64 = 0x0;
    pub const BLK_QUEUE: u64 = 0x1_0000;
    pub const NET_QUEUES: u64 = 0x2_0000;
    pub const SCRATCH_QUEUE: u64 = 0x3_0000;
    pub const VSOCK_TX_BUFS: u64 = 0x10_0000;
    pub const VSOCK_RX_BUFS: u64 = 0x20_0000;
    pub const BLK_BUFS: u64 = 0x30_0000;
    pub const NET_BUFS: u64 = 0x40_0000;
    /// 64 KiB of payload that every flooding packet points at.
    pub const PAYLOAD: u64 = 0x50_0000;
}

/// Device types (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;

/// When this program started: every line says how long after (`t=` in seconds), so a slow
/// step shows in the test's output.
static START: OnceLock<Instant> = OnceLock::new();

pub fn say(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "hostile: {msg} t={:.1}", t.as_secs_f64());
    let _ = out.flush();
}

/// What every step shares: the reserved RAM and where guest RAM ends.
pub struct Ctx {
    pub mem: PhysMap,
    pub ram_end: u64,
    pub failures: std::cell::Cell<u32>,
}

impl Ctx {
    /// A device that did not do its plain job after the abuse.
    pub fn fail(&self, why: &str) {
        self.failures.set(self.failures.get() + 1);
        say(&format!("FAIL {why}"));
    }
}

fn main() {
    START.get_or_init(Instant::now);
    for (fstype, target) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(fstype, target) {
            say(&format!("mount {target}: {e}"));
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let devices = cmdline_devices(&cmdline);
    let mem = match PhysMap::new(RESERVED_BASE, RESERVED_LEN, false) {
        Ok(m) => m,
        Err(e) => {
            say(&format!(
                "FAIL cannot map the reserved RAM from /dev/mem: {e}"
            ));
            finish(1);
        }
    };
    let ctx = Ctx {
        mem,
        ram_end: ram_end(),
        failures: std::cell::Cell::new(0),
    };
    say(&format!(
        "ready devices={} ram_end={:#x}",
        devices.len(),
        ctx.ram_end
    ));
    let mut opened = Vec::new();
    for &(base, _irq) in &devices {
        match Device::open(base) {
            Ok(d) => opened.push(d),
            Err(e) => ctx.fail(&format!("cannot map the device at {base:#x}: {e}")),
        }
    }
    // The MMIO gap around and between the devices: nothing there, nothing must happen.
    abuse::mmio_gap(&devices);
    for d in &opened {
        abuse::registers(d);
    }
    for d in &opened {
        match d.id() {
            TYPE_VSOCK => vsock::run(&ctx, d),
            TYPE_BLOCK => blk_net::block(&ctx, d),
            TYPE_NET => blk_net::net(&ctx, d),
            other => say(&format!("skip device type {other}")),
        }
    }
    // Last, as it leaves vsock (which cannot be reset once active) needing a reset.
    for d in &opened {
        abuse::reset_storm(d);
    }
    say(&format!("done failures={}", ctx.failures.get()));
    finish(0);
}

fn finish(_code: i32) -> ! {
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sync and reboot take no pointers; as PID 1 we may restart the machine, which
    // with reboot=k is the VMM's clean exit.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn mount(fstype: &str, target: &str) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| std::io::ErrorKind::InvalidInput);
    let (src, fs, dst) = (c(fstype)?, c(fstype)?, c(target)?);
    // SAFETY: three valid NUL-terminated strings that outlive the call, no data.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
