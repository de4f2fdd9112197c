//! `SIGUSR2` asks husk-vmm to snapshot the VM into the directory given with
//! `--snapshot-to` (whose files were opened at start-up, since no file can be opened once
//! the seccomp filters are on). The handler only writes an eventfd; [`SnapshotTrigger`],
//! on the device event loop, turns it into a [`VmEvent::Snapshot`] for the main thread and
//! then holds the event loop still (no device touches guest memory or its queues) until
//! the main thread is done. A signal is the same interface as the state dump's SIGUSR1:
//! the shim already signals its VMM, and no API socket (another thread, another seccomp
//! list, another parser of outside bytes) is needed for one command.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{channel, Sender};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::vm::VmEvent;

static TRIGGER_FD: AtomicI32 = AtomicI32::new(-1);

/// Errors installing the handler.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("Cannot create the snapshot trigger eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("Cannot install the SIGUSR2 handler")]
    Sigaction(#[source] std::io::Error),
}

extern "C" fn on_sigusr2(_: libc::c_int) {
    let fd = TRIGGER_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: write(2) is async-signal-safe; `one` is 8 bytes on our stack; fd is the
        // trigger's eventfd, which lives as long as the process once installed.
        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
}

/// Waits on the event loop for SIGUSR2.
pub struct SnapshotTrigger {
    evt: EventFd,
    events: Sender<VmEvent>,
    /// Whether a `--snapshot-to` directory was given.
    armed: bool,
}

impl SnapshotTrigger {
    /// Creates the trigger and points the SIGUSR2 handler at it (installing the handler
    /// the first time). The process keeps one trigger: a second replaces the first.
    pub fn install(events: Sender<VmEvent>, armed: bool) -> Result<Self, TriggerError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(TriggerError::EventFd)?;
        TRIGGER_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
        // SAFETY: an all-zero sigaction is valid; the handler only calls write(2) (async-
        // signal-safe); the mask is emptied and the result checked.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr2 as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(TriggerError::Sigaction(std::io::Error::last_os_error()));
        }
        Ok(Self { evt, events, armed })
    }
}

impl MutEventSubscriber for SnapshotTrigger {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("snapshot: cannot register the trigger: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        if !self.armed {
            tracing::warn!(
                "SIGUSR2 asks for a snapshot, but husk-vmm was started without --snapshot-to; \
                 ignored"
            );
            return;
        }
        let (done_tx, done_rx) = channel();
        if self.events.send(VmEvent::Snapshot(done_tx)).is_ok() {
            // Parked here: the main thread drops `done_tx` when it is done (if the VMM
            // does not end first).
            let _ = done_rx.recv();
        }
    }
}
