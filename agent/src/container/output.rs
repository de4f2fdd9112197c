//! A container's stdout/stderr pipes, handed to the caller with a guarantee:
//! [`super::Container::wait`] returns only after every stream was read to
//! its end (or dropped by the caller), so no byte is lost behind an exit
//! status (the bug Kata had: kata-containers #1713, #9186).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Counts the output streams not yet drained; `wait` blocks on it.
#[derive(Debug, Default)]
pub(crate) struct DrainGate {
    open: Mutex<usize>,
    drained: Condvar,
}

impl DrainGate {
    pub(crate) fn new(open: usize) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(open),
            drained: Condvar::new(),
        })
    }

    fn close_one(&self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        *open = open.saturating_sub(1);
        if *open == 0 {
            self.drained.notify_all();
        }
    }

    /// Blocks until every stream reached its end or was dropped.
    pub(crate) fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        while *open > 0 {
            open = self
                .drained
                .wait(open)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The read end of one of a container's output pipes.
///
/// Read it (from a thread other than the one that calls `wait`) until it
/// returns 0. Reaching the end, or dropping the stream, releases `wait`.
/// [`AsFd`] is offered for readiness polling; read through [`Read`], not
/// the raw fd, or the end is not seen.
#[derive(Debug)]
pub struct OutputStream {
    pipe: File,
    gate: Arc<DrainGate>,
    at_end: bool,
}

impl OutputStream {
    pub(crate) fn new(pipe: OwnedFd, gate: Arc<DrainGate>) -> Self {
        Self {
            pipe: File::from(pipe),
            gate,
            at_end: false,
        }
    }

    fn mark_end(&mut self) {
        if !self.at_end {
            self.at_end = true;
            self.gate.close_one();
        }
    }
}

impl Read for OutputStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at_end {
            return Ok(0);
        }
        let n = self.pipe.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.mark_end();
        }
        Ok(n)
    }
}

impl AsFd for OutputStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        self.mark_end();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::thread;

    use super::*;

    fn pipe() -> (OwnedFd, File) {
        let (r, w) = std::io::pipe().unwrap();
        (OwnedFd::from(r), File::from(OwnedFd::from(w)))
    }

    #[test]
    fn gate_opens_after_eof_and_drop() {
        let gate = DrainGate::new(2);
        let (r1, mut w1) = pipe();
        let (r2, _w2) = pipe();
        let mut s1 = OutputStream::new(r1, gate.clone());
        let s2 = OutputStream::new(r2, gate.clone());
        w1.write_all(b"hello").unwrap();
        drop(w1);
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            s1.read_to_end(&mut got).unwrap();
            drop(s2);
            got
        });
        gate.wait();
        assert_eq!(reader.join().unwrap(), b"hello");
    }
}
