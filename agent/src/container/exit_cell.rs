//! Where a process's exit status waits for its readers: set once (by the
//! reaper's callback or by `waitpid`), read by any number of waiters, any
//! number of times.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::ExitStatus;

/// A process's end: how, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    pub status: ExitStatus,
    /// Wall-clock time of the exit (for the shim).
    pub at: SystemTime,
    /// Monotonic time of the exit (for grace periods).
    pub at_instant: Instant,
}

/// A process's exit status, once known.
#[derive(Debug, Default)]
pub struct ExitCell {
    exited: Mutex<Option<Exited>>,
    changed: Condvar,
}

impl ExitCell {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the exit; a second call keeps the first status.
    pub fn set(&self, status: ExitStatus) {
        let mut exited = self.exited.lock().unwrap_or_else(PoisonError::into_inner);
        if exited.is_none() {
            *exited = Some(Exited {
                status,
                at: SystemTime::now(),
                at_instant: Instant::now(),
            });
            self.changed.notify_all();
        }
    }

    /// The exit, if it happened.
    pub fn get(&self) -> Option<Exited> {
        *self.exited.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exited {
        let mut exited = self.exited.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(e) = *exited {
                return e;
            }
            exited = self
                .changed
                .wait(exited)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Blocks until the process has exited or `timeout` passed.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Exited> {
        let deadline = Instant::now() + timeout;
        let mut exited = self.exited.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(e) = *exited {
                return Some(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            exited = self
                .changed
                .wait_timeout(exited, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use super::*;

    #[test]
    fn every_waiter_gets_the_first_status() {
        let cell = Arc::new(ExitCell::new());
        assert_eq!(cell.get(), None);
        assert_eq!(cell.wait_timeout(Duration::from_millis(10)), None);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let cell = cell.clone();
                thread::spawn(move || cell.wait().status)
            })
            .collect();
        cell.set(ExitStatus::Signaled(9));
        cell.set(ExitStatus::Exited(0));
        for w in waiters {
            assert_eq!(w.join().unwrap(), ExitStatus::Signaled(9));
        }
        assert_eq!(cell.wait().status, ExitStatus::Signaled(9));
        assert!(cell.wait_timeout(Duration::ZERO).is_some());
    }
}
