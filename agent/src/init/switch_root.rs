//! Leaving the initramfs for a tmpfs root, before anything is mounted.
//!
//! The kernel's initial root (rootfs, a ramfs or tmpfs) can never be
//! unmounted, so `pivot_root(2)` refuses it: every container's mount
//! namespace, copied from PID 1's, would have rootfs as its root and
//! libcontainer's pivot_root into the container's rootfs fails with
//! EINVAL. Like `switch_root`, PID 1 mounts a fresh tmpfs, moves it onto
//! `/` and chroots into it; that root is a real mount with a parent, so
//! pivot_root works in the containers (no chroot-only `no_pivot`, whose
//! root a process with CAP_SYS_CHROOT could escape to the guest's mounts).
//!
//! The agent keeps running from the initramfs's /init (already in memory);
//! the new root starts empty and the guest's mounts are made in it.

use std::io;
use std::path::Path;

use crate::sys;

/// ramfs's and tmpfs's `statfs` magic numbers: what rootfs can be.
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where the new root is prepared.
const NEW_ROOT: &str = "/newroot";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SwitchRootError {
    #[error("Cannot {step} while leaving the initramfs")]
    Step {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> SwitchRootError {
    move |source| SwitchRootError::Step { step, source }
}

/// Whether `/` is the kernel's initial ramfs/tmpfs, whose root has no
/// parent mount.
pub fn root_is_initramfs() -> io::Result<bool> {
    let magic = sys::statfs_magic(Path::new("/"))?;
    Ok(magic == RAMFS_MAGIC || magic == TMPFS_MAGIC)
}

/// Moves PID 1 onto a fresh tmpfs root. Returns whether it did (false:
/// the root is not an initramfs, nothing to do).
pub fn leave_initramfs() -> Result<bool, SwitchRootError> {
    if !root_is_initramfs().map_err(step("statfs /"))? {
        return Ok(false);
    }
    let new_root = Path::new(NEW_ROOT);
    match std::fs::create_dir(new_root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(step("create /newroot")(e)),
    }
    sys::mount("tmpfs", new_root, "tmpfs", 0, Some("mode=0755"))
        .map_err(step("mount a tmpfs on /newroot"))?;
    std::env::set_current_dir(new_root).map_err(step("chdir to /newroot"))?;
    sys::mount(".", Path::new("/"), "", libc::MS_MOVE, None)
        .map_err(step("move /newroot onto /"))?;
    sys::chroot(Path::new(".")).map_err(step("chroot into the new root"))?;
    std::env::set_current_dir("/").map_err(step("chdir to the new /"))?;
    Ok(true)
}
