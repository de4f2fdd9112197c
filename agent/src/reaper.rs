//! Reaping children as PID 1, without stealing the exit status of the
//! processes the agent itself launches.
//!
//! Every orphan in the guest becomes a child of PID 1, so PID 1 must call
//! `waitpid(-1, ...)` or zombies pile up. But a `waitpid(-1)` also reaps the
//! processes the agent started on purpose (container processes, execs), whose
//! statuses the agent must report. The [`Reaper`] therefore keeps a registry:
//! a process launched through [`Reaper::spawn_watched`] has its pid registered
//! *before* the reaper can see it exit (the registry lock is held across the
//! spawn and across each `waitpid`), and its status is forwarded to the
//! callback given at spawn time. Statuses of unregistered children (orphans)
//! are just logged.
//!
//! Consequence for code that launches processes: never call
//! `std::process::Child::wait` on them; use `spawn_watched` and its callback.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::sys::{self, WaitOutcome};

/// How a child ended, decoded from a raw wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// It called `exit(code)`.
    Exited(i32),
    /// A signal killed it.
    Signaled { signal: i32, core_dumped: bool },
}

impl ChildExit {
    /// Decodes a status from `waitpid()`; `None` for stop/continue reports,
    /// which the reaper does not ask for.
    pub fn from_wait_status(status: libc::c_int) -> Option<Self> {
        if libc::WIFEXITED(status) {
            Some(ChildExit::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ChildExit::Signaled {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            })
        } else {
            None
        }
    }

    /// The status a shell would report: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ChildExit::Exited(code) => code,
            ChildExit::Signaled { signal, .. } => 128 + signal,
        }
    }
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildExit::Exited(code) => write!(f, "exited with code {code}"),
            ChildExit::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by signal {signal}")?;
                if *core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// Where exit statuses come from: `waitpid(-1, WNOHANG)` in the guest, a
/// script in tests.
pub trait WaitSource {
    fn wait_any(&mut self) -> io::Result<WaitOutcome>;
}

/// The real `waitpid(-1, ..., WNOHANG)`.
#[derive(Debug, Default)]
pub struct SysWait;

impl WaitSource for SysWait {
    fn wait_any(&mut self) -> io::Result<WaitOutcome> {
        sys::wait_any_nohang()
    }
}

/// Called once with the exit status of a watched process.
pub type ExitCallback = Box<dyn FnOnce(ChildExit) + Send>;

/// One child the reaper collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: libc::pid_t,
    pub exit: ChildExit,
    /// Whether a watcher received the status (else it was an orphan).
    pub forwarded: bool,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("waitpid failed")]
    Wait(#[source] io::Error),
    #[error("Process {0} is already watched")]
    AlreadyWatched(libc::pid_t),
}

/// Reaps every child and forwards the statuses of registered ones.
#[derive(Default)]
pub struct Reaper {
    watched: Mutex<HashMap<libc::pid_t, ExitCallback>>,
}

impl fmt::Debug for Reaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pids: Vec<_> = self.lock().keys().copied().collect();
        f.debug_struct("Reaper").field("watched", &pids).finish()
    }
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<libc::pid_t, ExitCallback>> {
        // The map stays consistent even if a holder panicked.
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `spawn` (which starts a process and returns its pid) and registers
    /// the pid so that `on_exit` receives its exit status.
    ///
    /// The registry lock is held while `spawn` runs, so the reaper cannot
    /// collect the new process before it is registered, however fast it
    /// exits. `spawn` must therefore not call into this reaper.
    pub fn spawn_watched<E>(
        &self,
        spawn: impl FnOnce() -> Result<libc::pid_t, E>,
        on_exit: ExitCallback,
    ) -> Result<libc::pid_t, E>
    where
        E: From<ReaperError>,
    {
        let mut watched = self.lock();
        let pid = spawn()?;
        if watched.contains_key(&pid) {
            // A pid is reused only after it was reaped, which removes it.
            return Err(ReaperError::AlreadyWatched(pid).into());
        }
        watched.insert(pid, on_exit);
        Ok(pid)
    }

    /// Number of processes whose status is awaited.
    pub fn watched_count(&self) -> usize {
        self.lock().len()
    }

    /// Collects every child that has exited, without blocking; call it on each
    /// SIGCHLD (signals coalesce, so one SIGCHLD may stand for many exits).
    /// Callbacks run after the registry lock is released.
    /// What PID 1's (and `husk-agent serve`'s) SIGCHLD loop runs: reaps every exited
    /// child from the kernel, hands watched ones to their callbacks and logs orphans.
    pub fn reap_orphans(&self) -> Result<(), ReaperError> {
        for r in self.reap(&mut SysWait)? {
            if !r.forwarded {
                tracing::debug!("Reaped orphan {}: {}", r.pid, r.exit);
            }
        }
        Ok(())
    }

    pub fn reap(&self, source: &mut impl WaitSource) -> Result<Vec<Reaped>, ReaperError> {
        let mut reaped = Vec::new();
        let mut callbacks = Vec::new();
        let result = loop {
            let mut watched = self.lock();
            let (pid, status) = match source.wait_any() {
                Ok(WaitOutcome::Reaped { pid, status }) => (pid, status),
                Ok(WaitOutcome::NoneReady | WaitOutcome::NoChildren) => break Ok(()),
                Err(e) => break Err(ReaperError::Wait(e)),
            };
            let Some(exit) = ChildExit::from_wait_status(status) else {
                continue;
            };
            let callback = watched.remove(&pid);
            drop(watched);
            reaped.push(Reaped {
                pid,
                exit,
                forwarded: callback.is_some(),
            });
            if let Some(cb) = callback {
                callbacks.push((cb, exit));
            }
        };
        for (cb, exit) in callbacks {
            cb(exit);
        }
        result.map(|()| reaped)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::mpsc;

    use super::*;

    const fn exited(code: i32) -> libc::c_int {
        (code & 0xff) << 8
    }
    const fn signaled(sig: i32, core: bool) -> libc::c_int {
        sig | if core { 0x80 } else { 0 }
    }

    /// Plays back a script of waitpid results.
    struct Script(VecDeque<io::Result<WaitOutcome>>);

    impl Script {
        fn new(items: Vec<io::Result<WaitOutcome>>) -> Self {
            Self(items.into())
        }
    }

    impl WaitSource for Script {
        fn wait_any(&mut self) -> io::Result<WaitOutcome> {
            self.0.pop_front().unwrap_or(Ok(WaitOutcome::NoChildren))
        }
    }

    fn reaped(pid: libc::pid_t, status: libc::c_int) -> io::Result<WaitOutcome> {
        Ok(WaitOutcome::Reaped { pid, status })
    }

    fn watch(reaper: &Reaper, pid: libc::pid_t) -> mpsc::Receiver<ChildExit> {
        let (tx, rx) = mpsc::channel();
        reaper
            .spawn_watched::<ReaperError>(|| Ok(pid), Box::new(move |exit| tx.send(exit).unwrap()))
            .unwrap();
        rx
    }

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(
            ChildExit::from_wait_status(exited(0)),
            Some(ChildExit::Exited(0))
        );
        assert_eq!(
            ChildExit::from_wait_status(exited(3)),
            Some(ChildExit::Exited(3))
        );
        assert_eq!(
            ChildExit::from_wait_status(exited(255)),
            Some(ChildExit::Exited(255))
        );
        assert_eq!(
            ChildExit::from_wait_status(signaled(libc::SIGKILL, false)),
            Some(ChildExit::Signaled {
                signal: libc::SIGKILL,
                core_dumped: false
            })
        );
        assert_eq!(
            ChildExit::from_wait_status(signaled(libc::SIGSEGV, true)),
            Some(ChildExit::Signaled {
                signal: libc::SIGSEGV,
                core_dumped: true
            })
        );
        // Stopped (0x7f) and continued (0xffff) are not exits.
        assert_eq!(
            ChildExit::from_wait_status((libc::SIGSTOP << 8) | 0x7f),
            None
        );
        assert_eq!(ChildExit::from_wait_status(0xffff), None);
    }

    #[test]
    fn shell_codes_and_display() {
        assert_eq!(ChildExit::Exited(7).shell_code(), 7);
        let killed = ChildExit::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(killed.shell_code(), 137);
        assert_eq!(killed.to_string(), "killed by signal 9");
        assert_eq!(ChildExit::Exited(1).to_string(), "exited with code 1");
        assert_eq!(
            ChildExit::Signaled {
                signal: 11,
                core_dumped: true
            }
            .to_string(),
            "killed by signal 11 (core dumped)"
        );
    }

    #[test]
    fn orphans_are_reaped_and_not_forwarded() {
        let reaper = Reaper::new();
        let mut src = Script::new(vec![reaped(10, exited(0)), reaped(11, exited(1))]);
        let got = reaper.reap(&mut src).unwrap();
        assert_eq!(
            got,
            vec![
                Reaped {
                    pid: 10,
                    exit: ChildExit::Exited(0),
                    forwarded: false
                },
                Reaped {
                    pid: 11,
                    exit: ChildExit::Exited(1),
                    forwarded: false
                },
            ]
        );
    }

    #[test]
    fn watched_statuses_are_forwarded_exactly_once() {
        let reaper = Reaper::new();
        let rx = watch(&reaper, 42);
        assert_eq!(reaper.watched_count(), 1);
        let mut src = Script::new(vec![
            reaped(7, exited(0)),
            reaped(42, signaled(libc::SIGTERM, false)),
            Ok(WaitOutcome::NoneReady),
            reaped(99, exited(0)), // not reached in this call
        ]);
        let got = reaper.reap(&mut src).unwrap();
        assert_eq!(got.len(), 2);
        assert!(!got[0].forwarded);
        assert!(got[1].forwarded);
        assert_eq!(
            rx.try_recv().unwrap(),
            ChildExit::Signaled {
                signal: libc::SIGTERM,
                core_dumped: false
            }
        );
        assert_eq!(reaper.watched_count(), 0);

        // The next round reaps what was left; the callback is gone.
        let got = reaper.reap(&mut src).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].pid, 99);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_pid_can_be_watched_again_after_it_was_reaped() {
        let reaper = Reaper::new();
        let rx1 = watch(&reaper, 5);
        reaper
            .reap(&mut Script::new(vec![reaped(5, exited(1))]))
            .unwrap();
        let rx2 = watch(&reaper, 5);
        reaper
            .reap(&mut Script::new(vec![reaped(5, exited(2))]))
            .unwrap();
        assert_eq!(rx1.recv().unwrap(), ChildExit::Exited(1));
        assert_eq!(rx2.recv().unwrap(), ChildExit::Exited(2));
    }

    #[test]
    fn watching_a_pid_twice_is_an_error() {
        let reaper = Reaper::new();
        let _rx = watch(&reaper, 5);
        let err = reaper
            .spawn_watched::<ReaperError>(|| Ok(5), Box::new(|_| {}))
            .unwrap_err();
        assert!(matches!(err, ReaperError::AlreadyWatched(5)));
    }

    #[test]
    fn a_failed_spawn_registers_nothing() {
        #[derive(Debug)]
        enum SpawnErr {
            Io,
            Reaper,
        }
        impl From<ReaperError> for SpawnErr {
            fn from(_: ReaperError) -> Self {
                SpawnErr::Reaper
            }
        }
        let reaper = Reaper::new();
        let r = reaper.spawn_watched(|| Err(SpawnErr::Io), Box::new(|_| {}));
        assert!(matches!(r, Err(SpawnErr::Io)));
        assert_eq!(reaper.watched_count(), 0);
    }

    #[test]
    fn stop_reports_are_skipped() {
        let reaper = Reaper::new();
        let mut src = Script::new(vec![
            reaped(3, (libc::SIGSTOP << 8) | 0x7f),
            reaped(4, exited(0)),
        ]);
        let got = reaper.reap(&mut src).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].pid, 4);
    }

    #[test]
    fn wait_errors_are_reported_after_forwarding_what_was_reaped() {
        let reaper = Reaper::new();
        let rx = watch(&reaper, 8);
        let mut src = Script::new(vec![
            reaped(8, exited(0)),
            Err(io::Error::from_raw_os_error(libc::EINVAL)),
        ]);
        assert!(matches!(reaper.reap(&mut src), Err(ReaperError::Wait(_))));
        assert_eq!(rx.try_recv().unwrap(), ChildExit::Exited(0));
    }

    #[test]
    // The reaper under test is what waits for the child.
    #[allow(clippy::zombie_processes)]
    fn reaps_real_children() {
        // The test process is not PID 1, but it reaps its own children. A
        // SysWait would also collect other tests' children, so this source
        // waits for the one pid.
        struct One(libc::pid_t);
        impl WaitSource for One {
            fn wait_any(&mut self) -> io::Result<WaitOutcome> {
                if self.0 == 0 {
                    return Ok(WaitOutcome::NoChildren);
                }
                let mut status = 0;
                // SAFETY: `status` is a valid, writable c_int.
                let r = unsafe { libc::waitpid(self.0, &mut status, 0) };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                self.0 = 0;
                Ok(WaitOutcome::Reaped { pid: r, status })
            }
        }
        #[derive(Debug)]
        struct SpawnError;
        impl From<ReaperError> for SpawnError {
            fn from(_: ReaperError) -> Self {
                SpawnError
            }
        }
        let reaper = Reaper::new();
        let (tx, rx) = mpsc::channel();
        // How the agent will launch processes: spawn under the registry lock.
        let pid = reaper
            .spawn_watched(
                || {
                    std::process::Command::new("sh")
                        .args(["-c", "exit 5"])
                        .spawn()
                        .map(|child| child.id() as libc::pid_t)
                        .map_err(|_| SpawnError)
                },
                Box::new(move |e| tx.send(e).unwrap()),
            )
            .unwrap();
        reaper.reap(&mut One(pid)).unwrap();
        assert_eq!(rx.recv().unwrap(), ChildExit::Exited(5));
    }
}
