//! libcontainer's build in a child process with one thread.
//!
//! libcontainer starts its intermediate process with a raw `clone3`
//! syscall, not libc's `fork()`, so libc does not take its internal locks
//! first. In a process with other threads (the agent's ttrpc workers, stdio
//! pumps, the OOM monitor) one of them may hold the allocator's lock at
//! that instant; the clone then starts with the lock held and nobody to
//! release it, and the first allocation there waits forever. The caller,
//! waiting for the intermediate's "ready" message, waits with it: an
//! ExecProcess that never answers (seen under emulation about one exec in
//! three).
//!
//! So the agent `fork()`s first: libc's fork takes and resets its locks,
//! and the child has one thread, from which libcontainer's clones are safe.
//! The child runs the build, writes one [`Report`] to a pipe and exits.
//! The container's init, the intermediate's sibling, is the child's child;
//! when the child exits it is re-parented to the agent (PID 1 in the guest,
//! a child subreaper on the host), which waits for it as before. This is
//! why Kata's agent, too, builds containers in a fresh process.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};

use super::{Error, ErrorKind};

/// What the child reports: the new process's pid, or why the build failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Report {
    Built(i32),
    Failed { kind: ErrorKind, message: String },
}

/// A report fits in the pipe's buffer (64 KiB; at least one page), so
/// the child never waits for the reader.
const MAX_MESSAGE: usize = 4000;
const BUILT: u8 = 0;
const FAILED: u8 = 1;

impl Report {
    fn encode(&self) -> Vec<u8> {
        match self {
            Self::Built(pid) => {
                let mut out = vec![BUILT];
                out.extend_from_slice(&pid.to_le_bytes());
                out
            }
            Self::Failed { kind, message } => {
                let mut out = vec![FAILED, kind.to_byte()];
                out.extend_from_slice(&message.as_bytes()[..message.len().min(MAX_MESSAGE)]);
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [BUILT, pid @ ..] => Some(Self::Built(i32::from_le_bytes(pid.try_into().ok()?))),
            [FAILED, kind, message @ ..] => Some(Self::Failed {
                kind: ErrorKind::from_byte(*kind)?,
                message: String::from_utf8_lossy(message).into_owned(),
            }),
            _ => None,
        }
    }
}

/// Runs `build` in a forked child and returns the pid it built, or its
/// error (its message and kind; the typed source stays in the child).
pub(super) fn build_in_child(build: impl FnOnce() -> Result<i32, Error>) -> Result<i32, Error> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::BuildProcess(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned these two fds, owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The child only runs `build` (libcontainer, written for a one-thread
    // process, which the child is) and `_exit`s.
    // SAFETY: libc's fork leaves its allocator and stdio usable in the child.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(Error::BuildProcess(io::Error::last_os_error()));
    }
    if child == 0 {
        drop(read_end);
        // libcontainer logs from the processes it forks from here, whose stderr becomes
        // the container's: its lines must never land in a container's output.
        crate::log::console_off();
        let report = match panic::catch_unwind(AssertUnwindSafe(build)) {
            Ok(Ok(pid)) => Report::Built(pid),
            Ok(Err(e)) => Report::Failed {
                kind: e.kind(),
                message: husk_errors::chain(&e),
            },
            Err(_) => Report::Failed {
                kind: ErrorKind::Internal,
                message: "the container build panicked".into(),
            },
        };
        let code = match File::from(write_end).write_all(&report.encode()) {
            Ok(()) => 0,
            Err(_) => 1,
        };
        // SAFETY: _exit ends this child without running the parent's
        // atexit handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    drop(write_end);
    drop(build);
    // The container's init inherits the pipe's write end and keeps it
    // until it execs (after StartContainer): so no read to the end of the
    // pipe. The child writes its short report and exits; once it is
    // reaped the report is in the pipe.
    let status = wait_child(child);
    let bytes = read_available(read_end).map_err(Error::BuildProcess)?;
    match Report::decode(&bytes) {
        Some(Report::Built(pid)) => Ok(pid),
        Some(Report::Failed { kind, message }) => Err(Error::Build { kind, message }),
        None => Err(Error::BuildProcess(io::Error::other(format!(
            "the build process {child} ended without a report ({})",
            match status {
                Ok(s) => describe_status(s),
                Err(e) => format!("waitpid: {e}"),
            }
        )))),
    }
}

/// What the pipe holds now, without waiting for more.
fn read_available(fd: OwnedFd) -> io::Result<Vec<u8>> {
    // SAFETY: fcntl on an fd this function owns.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut file = File::from(fd);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(bytes),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits for the build child (the caller's reaper, if any, waits for
/// nobody while a build runs).
fn wait_child(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status of our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Built(4242),
            Report::Failed {
                kind: ErrorKind::InvalidArgument,
                message: "Cannot create container c1: bad: ENOENT".into(),
            },
            Report::Failed {
                kind: ErrorKind::Internal,
                message: String::new(),
            },
        ] {
            assert_eq!(Report::decode(&r.encode()), Some(r));
        }
        assert_eq!(Report::decode(&[]), None);
        assert_eq!(Report::decode(&[BUILT, 1, 2]), None);
        assert_eq!(Report::decode(&[FAILED, 99]), None);
        assert_eq!(Report::decode(&[7]), None);
    }

    #[test]
    fn the_child_reports_its_pid_or_its_error() {
        assert_eq!(build_in_child(|| Ok(77)).unwrap(), 77);
        let e = build_in_child(|| Err(Error::Signal(99))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(e.to_string(), "Unknown signal 99");
    }

    #[test]
    fn the_build_runs_in_another_process() {
        let parent = std::process::id() as i32;
        // SAFETY: getpid takes nothing.
        let seen = build_in_child(|| Ok(unsafe { libc::getpid() })).unwrap();
        assert_ne!(seen, parent);
    }

    #[test]
    fn a_child_that_dies_is_an_error_with_its_status() {
        let e = build_in_child(|| {
            // SAFETY: ends the forked child at once, without a report.
            unsafe { libc::_exit(3) }
        })
        .unwrap_err();
        assert!(husk_errors::chain(&e).contains("without a report"), "{e}");
        assert!(
            husk_errors::chain(&e).contains("exit status 3"),
            "{}",
            husk_errors::chain(&e)
        );
        let e = build_in_child(|| panic!("boom")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the container build panicked",
            "{}",
            husk_errors::chain(&e)
        );
    }

    #[test]
    fn a_grandchild_holding_the_pipe_does_not_hold_the_answer() {
        // As a created container's init does until it execs: here it
        // waits until the test closes `release`.
        let mut fds = [0; 2];
        // SAFETY: pipe writes two fds into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe returned these fds, owned by nothing else.
        let (wait_end, release) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let wait_fd = wait_end.as_raw_fd();
        let release_fd = release.as_raw_fd();
        // The build runs on a thread so that a build waiting for the pipe's EOF (the
        // bug this test is about) fails the test after a while instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = build_in_child(move || {
                // The grandchild only calls read, close and _exit.
                // SAFETY: a plain fork, in the one-thread build child.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let mut b = 0u8;
                    // SAFETY: close and read on inherited fds; b is a live byte.
                    unsafe {
                        libc::close(release_fd);
                        libc::read(wait_fd, (&mut b as *mut u8).cast(), 1);
                        libc::_exit(0)
                    }
                }
                Ok(pid)
            });
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        let answer = rx.recv_timeout(std::time::Duration::from_secs(60));
        // Unblocks the grandchild whatever the answer (also on the panic below).
        drop(release);
        let grandchild = answer
            .expect("no answer while a grandchild held the report pipe")
            .unwrap();
        drop(wait_end);
        // The grandchild was re-parented to init or a subreaper; it exits
        // now that the last write end is closed.
        assert!(grandchild > 0);
    }

    #[test]
    fn other_threads_holding_the_allocator_do_not_block_the_child() {
        // Threads allocating all the time, as the agent's are.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let v: Vec<String> = (0..64).map(|i| i.to_string()).collect();
                        std::hint::black_box(v);
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            let pid = build_in_child(|| {
                let v: Vec<String> = (0..1000).map(|i| format!("{i}")).collect();
                Ok(v.len() as i32)
            })
            .unwrap();
            assert_eq!(pid, 1000);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
    }
}
