//! `SIGUSR1` asks husk-vmm to log its devices' state at info level: how an operator sees
//! why a guest's I/O waits (credit, queues, sockets, interrupts) without stopping the VM.
//!
//! The signal handler only writes to eventfds, one per listening device; each device's
//! event loop handler reads its own and logs. The vsock, virtio-fs and virtio-net devices answer.
//! vCPUs answer too: the handler bumps a generation counter and kicks every registered
//! vCPU thread out of KVM_RUN with a real-time signal; each logs its registers and LAPIC
//! before it re-enters the guest (where a guest spins or waits for an interrupt).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use vmm_sys_util::eventfd::EventFd;

use crate::config::MAX_VCPUS;

/// At most this many devices listen (one vsock, virtio-fs tags, room to spare).
const MAX_LISTENERS: usize = 16;

static LISTENER_FDS: [AtomicI32; MAX_LISTENERS] = [const { AtomicI32::new(-1) }; MAX_LISTENERS];
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// pthread_t of each running vCPU thread (0: none), one slot per possible vCPU.
static VCPU_THREADS: [AtomicU64; MAX_VCPUS as usize] =
    [const { AtomicU64::new(0) }; MAX_VCPUS as usize];
/// Bumped at every SIGUSR1; a vCPU that sees a new value logs its state.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The signal that kicks a vCPU thread out of KVM_RUN (its handler does nothing).
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Errors installing the handler.
#[derive(Debug, thiserror::Error)]
pub enum StateDumpError {
    #[error("Cannot install the SIGUSR1 handler")]
    Sigaction(#[source] std::io::Error),
}

/// Kicks every registered vCPU thread out of KVM_RUN (async-signal-safe: the SIGUSR1
/// handler calls it; so does a snapshot, to stop the vCPUs).
pub fn kick_vcpus() {
    for slot in &VCPU_THREADS {
        let t = slot.load(Ordering::SeqCst);
        if t != 0 {
            // SAFETY: pthread_kill is async-signal-safe; `t` is a vCPU thread that
            // registered itself and unregisters before it exits.
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    GENERATION.fetch_add(1, Ordering::SeqCst);
    kick_vcpus();
    for slot in &LISTENER_FDS {
        let fd = slot.load(Ordering::Relaxed);
        if fd >= 0 {
            let one = 1u64;
            // SAFETY: write(2) is async-signal-safe; `one` is 8 bytes on our stack; fd is
            // a listener's eventfd, leaked: open for the life of the process.
            unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
        }
    }
}

/// Installs the SIGUSR1 handler (once; later calls do nothing).
pub fn install() -> Result<(), StateDumpError> {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    // The kick has no SA_RESTART: KVM_RUN must return EINTR.
    for (signal, handler, flags) in [
        (
            libc::SIGUSR1,
            on_sigusr1 as extern "C" fn(libc::c_int),
            libc::SA_RESTART,
        ),
        (kick_signal(), on_kick as extern "C" fn(libc::c_int), 0),
    ] {
        // SAFETY: an all-zero sigaction is valid; we set a handler that only calls
        // async-signal-safe functions, with an empty mask, and check the result.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as usize;
            sa.sa_flags = flags;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            INSTALLED.store(false, Ordering::SeqCst);
            return Err(StateDumpError::Sigaction(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The dump generation: a vCPU logs its state when this differs from what it last saw.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// Registers the calling thread as vCPU `index` until the guard is dropped (which must
/// happen on the same thread, before it exits). Nothing is registered before [`install`].
pub fn register_vcpu_thread(index: u8) -> VcpuRegistration {
    let slot = VCPU_THREADS
        .get(usize::from(index))
        .filter(|_| INSTALLED.load(Ordering::SeqCst));
    if let Some(slot) = slot {
        // SAFETY: pthread_self has no preconditions.
        slot.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
    }
    VcpuRegistration { slot }
}

/// Keeps a vCPU thread kickable; unregisters it when dropped.
pub struct VcpuRegistration {
    slot: Option<&'static AtomicU64>,
}

impl Drop for VcpuRegistration {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            slot.store(0, Ordering::SeqCst);
        }
    }
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
