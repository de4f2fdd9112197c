//! `SIGUSR1` asks husk-vmm to log its devices' state at info level: how an operator sees
//! why a guest's I/O waits (credit, queues, sockets, interrupts) without stopping the VM.
//!
//! The signal handler only writes to eventfds, one per listening device; each device's
//! event loop handler reads its own and logs. The vsock and virtio-fs devices answer.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// At most this many devices listen (one vsock, virtio-fs tags, room to spare).
const MAX_LISTENERS: usize = 16;

static LISTENER_FDS: [AtomicI32; MAX_LISTENERS] = [const { AtomicI32::new(-1) }; MAX_LISTENERS];
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Errors installing the handler.
#[derive(Debug, thiserror::Error)]
pub enum StateDumpError {
    #[error("Cannot install the SIGUSR1 handler")]
    Sigaction(#[source] std::io::Error),
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    for slot in &LISTENER_FDS {
        let fd = slot.load(Ordering::Relaxed);
        if fd >= 0 {
            let one = 1u64;
            // SAFETY: write(2) is async-signal-safe; `one` is 8 readable bytes on our
            // stack and fd is a listener's eventfd, leaked so it stays open for the life
            // of the process.
            unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
        }
    }
}

/// Installs the SIGUSR1 handler (once; later calls do nothing).
pub fn install() -> Result<(), StateDumpError> {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
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
        INSTALLED.store(false, Ordering::SeqCst);
        return Err(StateDumpError::Sigaction(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A new eventfd, signalled at every SIGUSR1 from now on, for one device to poll. None
/// before [`install`] (unit tests, library users that never asked for dumps) or when
/// [`MAX_LISTENERS`] devices already listen. The eventfd lives as long as the process.
pub fn listener() -> Option<&'static EventFd> {
    if !INSTALLED.load(Ordering::SeqCst) {
        return None;
    }
    let evt = EventFd::new(libc::EFD_NONBLOCK).ok()?;
    let fd = evt.as_raw_fd();
    LISTENER_FDS
        .iter()
        .any(|s| {
            s.compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })
        .then(|| &*Box::leak(Box::new(evt)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_reaches_every_listener() {
        install().unwrap();
        install().unwrap();
        let a = listener().unwrap();
        let b = listener().unwrap();
        // SAFETY: raising a signal whose handler we just installed.
        unsafe { libc::raise(libc::SIGUSR1) };
        assert_eq!(a.read().unwrap(), 1);
        assert_eq!(b.read().unwrap(), 1);
    }
}
