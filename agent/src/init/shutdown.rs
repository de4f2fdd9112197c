//! Powering the guest off.
//!
//! The guest has no ACPI, so a real power-off would only halt the CPUs. The
//! kernel is booted with `reboot=k panic=-1`: a restart is an i8042 (keyboard
//! controller) reset, which the VMM treats as a clean exit of the VM.

use std::convert::Infallible;
use std::io;

use crate::sys;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("reboot(LINUX_REBOOT_CMD_RESTART) failed")]
    Restart(#[source] io::Error),
    #[error("reboot(LINUX_REBOOT_CMD_CAD_OFF) failed")]
    CadOff(#[source] io::Error),
}

/// Makes ctrl-alt-del send SIGINT to PID 1 instead of restarting at once,
/// so it takes the same orderly path as SIGTERM and SIGPWR.
pub fn route_ctrl_alt_del_to_init() -> Result<(), ShutdownError> {
    sys::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF).map_err(ShutdownError::CadOff)
}

/// Flushes file systems and restarts the machine, which ends the VM.
/// Returns only if the kernel refused.
pub fn power_off() -> Result<Infallible, ShutdownError> {
    sys::sync();
    sys::reboot(libc::LINUX_REBOOT_CMD_RESTART).map_err(ShutdownError::Restart)?;
    // reboot(RESTART) does not return on success; if it ever does, say so.
    Err(ShutdownError::Restart(io::Error::other(
        "the kernel returned from a restart",
    )))
}
