//! `SIGUSR1` asks husk-vmm to log its devices' state at info level: how an operator sees
//! why a guest's I/O waits (credit, queues, sockets) without stopping the VM.
//!
//! The signal handler only writes to an eventfd; the device event loop reads it and
//! logs. The vsock device is the one that answers today.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use vmm_sys_util::eventfd::EventFd;

static EVENT: OnceLock<EventFd> = OnceLock::new();
static EVENT_FD: AtomicI32 = AtomicI32::new(-1);

/// Errors installing the handler.
#[derive(Debug, thiserror::Error)]
pub enum StateDumpError {
    #[error("Cannot create the state-dump eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("Cannot install the SIGUSR1 handler")]
    Sigaction(#[source] std::io::Error),
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    let fd = EVENT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: write(2) is async-signal-safe; `one` is 8 readable bytes on our stack
        // and fd is the eventfd kept open for the life of the process.
        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
}

/// Installs the SIGUSR1 handler (once; later calls do nothing).
pub fn install() -> Result<(), StateDumpError> {
    if EVENT.get().is_some() {
        return Ok(());
    }
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(StateDumpError::EventFd)?;
    EVENT_FD.store(evt.as_raw_fd(), Ordering::Relaxed);
    let _ = EVENT.set(evt);
    // SAFETY: an all-zero sigaction is valid; we set a handler that only calls
    // async-signal-safe functions, with an empty mask, and check the result.
    let r = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(StateDumpError::Sigaction(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The eventfd a device polls to learn a dump was asked for (None before [`install`]).
pub fn event() -> Option<&'static EventFd> {
    EVENT.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_reaches_the_eventfd() {
        install().unwrap();
        install().unwrap();
        // SAFETY: raising a signal whose handler we just installed.
        unsafe { libc::raise(libc::SIGUSR1) };
        assert_eq!(event().unwrap().read().unwrap(), 1);
    }
}
