//! What the shim knows of each process it runs in the guest: a container's init process
//! or an exec, its stdio, and its exit, which is decided exactly once (by the agent's
//! WaitProcess answer after the output drained, or by the VM's death) and can be waited
//! for by any number of containerd calls.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::stdio::ProcessIo;

/// The status containerd reports when the VM ended under a process: a clear failure, not
/// any code the process itself could have chosen through the 128+N convention.
pub const VM_GONE_STATUS: u32 = 255;

/// A process's end.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

/// Set once, waited for by many.
#[derive(Default)]
pub struct ExitCell {
    exit: Mutex<Option<Exit>>,
    cond: Condvar,
    claimed: std::sync::atomic::AtomicBool,
}

impl ExitCell {
    /// Takes the right to record the exit: true for the first caller only. The taker
    /// publishes the exit, then [`Self::set`]s it, so that whoever waits sees the exit
    /// only after containerd got its TaskExit (and never issues a Delete before it).
    pub fn claim(&self) -> bool {
        !self.claimed.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Records the exit; false if one was recorded already (the first one stands).
    pub fn set(&self, exit: Exit) -> bool {
        let mut e = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_some() {
            return false;
        }
        *e = Some(exit);
        self.cond.notify_all();
        true
    }

    /// Ends every [`Self::wait`] with `exit` unless an exit is, or is being, recorded:
    /// for a process deleted before it exited (an exec that never started, a container
    /// of a VM gone), whose Wait would otherwise block its ttrpc handler, and with it the
    /// shim's exit, for good.
    pub fn release(&self, exit: Exit) {
        if self.claim() {
            self.set(exit);
        }
    }

    pub fn get(&self) -> Option<Exit> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Blocks until the exit is known.
    pub fn wait(&self) -> Exit {
        let mut e = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(x) = e.as_ref() {
                return x.clone();
            }
            e = self
                .cond
                .wait_timeout(e, Duration::from_secs(3600))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// containerd's stdio endpoints of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// One process.
pub struct Process {
    /// Empty for the container's init process.
    pub exec_id: String,
    /// The guest pid (0 until created in the guest).
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    pub exit: Arc<ExitCell>,
    pub io: Arc<ProcessIo>,
    /// An exec's OCI process object (JSON), kept from Exec for Start.
    pub spec: Vec<u8>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: StdioPaths) -> Self {
        Self {
            exec_id: exec_id.to_owned(),
            pid: 0,
            status: Status::CREATED,
            stdio,
            exit: Arc::default(),
            io: Arc::default(),
            spec: Vec::new(),
        }
    }

    /// The status containerd should see.
    pub fn status(&self) -> Status {
        if self.exit.get().is_some() {
            Status::STOPPED
        } else {
            self.status
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_exit_stands_and_wakes_every_waiter() {
        let cell = Arc::new(ExitCell::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let c = Arc::clone(&cell);
                std::thread::spawn(move || c.wait().status)
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        assert!(cell.set(Exit {
            status: 3,
            at: Timestamp::new()
        }));
        assert!(!cell.set(Exit {
            status: VM_GONE_STATUS,
            at: Timestamp::new()
        }));
        for w in waiters {
            assert_eq!(w.join().unwrap(), 3);
        }
        assert_eq!(cell.get().unwrap().status, 3);
    }

    #[test]
    fn status_is_stopped_once_exited() {
        let mut p = Process::new("", StdioPaths::default());
        assert_eq!(p.status(), Status::CREATED);
        p.status = Status::RUNNING;
        assert_eq!(p.status(), Status::RUNNING);
        p.exit.set(Exit {
            status: 0,
            at: Timestamp::new(),
        });
        assert_eq!(p.status(), Status::STOPPED);
    }
}
