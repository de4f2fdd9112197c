//! Thin, safe wrappers around the raw system calls the agent makes.
//!
//! Every `unsafe` call to `libc` of the crate lives here, so the rest of the
//! agent is safe Rust and the pure logic can be unit-tested without root.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Process id of the calling process.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid() has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

fn path_to_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn str_to_cstring(s: &str) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

/// `mount(2)`.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = str_to_cstring(source)?;
    let target = path_to_cstring(target)?;
    let fstype = str_to_cstring(fstype)?;
    let data = data.map(str_to_cstring).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: all pointers are valid NUL-terminated strings (or NULL for
    // `data`) that outlive the call; the kernel copies them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `sync(2)`: flush all file systems.
pub fn sync() {
    // SAFETY: sync() has no preconditions.
    unsafe { libc::sync() }
}

/// `reboot(2)` with one of the `LINUX_REBOOT_CMD_*` commands.
///
/// For commands that restart or halt the machine it returns only on error.
pub fn reboot(cmd: libc::c_int) -> io::Result<()> {
    // SAFETY: reboot() takes a plain integer; an invalid command is reported
    // as EINVAL, it has no memory-safety preconditions.
    let rc = unsafe { libc::reboot(cmd) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel release from `uname(2)`, e.g. `6.1.0-husk`.
pub fn kernel_release() -> io::Result<String> {
    let mut uts = MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: `uts` points to writable memory of the size uname() expects.
    let rc = unsafe { libc::uname(uts.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: uname() succeeded, so it initialised the whole struct.
    let uts = unsafe { uts.assume_init() };
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// What a file descriptor of the standard trio currently refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdState {
    /// Not open.
    Closed,
    /// Open on the null device (char 1:3), e.g. because the Rust runtime
    /// replaced a closed descriptor with /dev/null before `main`.
    DevNull,
    /// Open on anything else.
    Other,
}

/// Inspects file descriptor `fd` with `fstat(2)`.
pub fn fd_state(fd: RawFd) -> FdState {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` points to writable memory of the size fstat() expects; an
    // invalid descriptor is reported as EBADF.
    let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if rc != 0 {
        return FdState::Closed;
    }
    // SAFETY: fstat() succeeded, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    let is_chr = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    if is_chr && libc::major(st.st_rdev) == 1 && libc::minor(st.st_rdev) == 3 {
        FdState::DevNull
    } else {
        FdState::Other
    }
}

/// Opens `path` read-write without making it the controlling terminal.
/// The descriptor is not close-on-exec: it is meant to become stdio.
pub fn open_console(path: &Path) -> io::Result<OwnedFd> {
    let path = path_to_cstring(path)?;
    // SAFETY: `path` is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open() just returned this descriptor, nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `dup2(2)`: makes `target` refer to the same open file as `src`.
pub fn dup2(src: &OwnedFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2() on a valid source descriptor; `target` is one of the
    // stdio numbers that the caller intends to (re)place, so closing
    // whatever was there is the point of the call.
    let rc = unsafe { libc::dup2(src.as_raw_fd(), target) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Gives up ownership of `fd` without closing it (it now *is* a stdio fd).
pub fn leak_fd(fd: OwnedFd) -> RawFd {
    fd.into_raw_fd()
}

/// Outcome of one non-blocking `waitpid(-1, ..., WNOHANG)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// A child changed state and was reaped; `status` is the raw wait status.
    Reaped {
        pid: libc::pid_t,
        status: libc::c_int,
    },
    /// Children exist but none has exited yet.
    NoneReady,
    /// There are no children at all (ECHILD).
    NoChildren,
}

/// `waitpid(-1, &status, WNOHANG)`, retried on EINTR.
pub fn wait_any_nohang() -> io::Result<WaitOutcome> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable c_int.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            return Ok(WaitOutcome::Reaped { pid, status });
        }
        if pid == 0 {
            return Ok(WaitOutcome::NoneReady);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(WaitOutcome::NoChildren),
            _ => return Err(err),
        }
    }
}

/// Signals delivered through a `signalfd(2)`.
///
/// Creating it blocks the signals for the calling thread (and so for every
/// thread created afterwards), so they are queued for the descriptor instead
/// of being delivered asynchronously. For PID 1 this also matters because the
/// kernel drops signals to init that it neither blocks nor handles.
#[derive(Debug)]
pub struct SignalFd {
    file: File,
}

impl SignalFd {
    /// Blocks `signals` and returns a descriptor that reads them.
    pub fn new(signals: &[libc::c_int]) -> io::Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset() initialises the set it is given.
        if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sigemptyset() succeeded, so the set is initialised.
        let mut set = unsafe { set.assume_init() };
        for &sig in signals {
            // SAFETY: `set` is an initialised sigset_t; an invalid signal
            // number is reported as EINVAL.
            if unsafe { libc::sigaddset(&mut set, sig) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `set` is initialised; we do not ask for the old mask.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new descriptor; `set` is initialised.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd() just returned this descriptor, nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(Self { file })
    }

    /// Blocks until one of the signals arrives and returns its number.
    pub fn read_signal(&self) -> io::Result<libc::c_int> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: `info` is writable memory of exactly `size` bytes.
            let n = unsafe {
                libc::read(
                    self.file.as_raw_fd(),
                    info.as_mut_ptr().cast::<libc::c_void>(),
                    size,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n as usize != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short read from signalfd",
                ));
            }
            // SAFETY: the kernel filled the whole struct (n == size).
            let info = unsafe { info.assume_init() };
            return Ok(info.ssi_signo as libc::c_int);
        }
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_is_not_empty() {
        assert!(!kernel_release().unwrap().is_empty());
    }

    #[test]
    fn fd_state_of_a_closed_descriptor() {
        assert_eq!(fd_state(-1), FdState::Closed);
    }

    #[test]
    fn fd_state_recognises_dev_null() {
        let f = File::open("/dev/null").unwrap();
        assert_eq!(fd_state(f.as_raw_fd()), FdState::DevNull);
        let f = File::open("/proc/self/stat").unwrap();
        assert_eq!(fd_state(f.as_raw_fd()), FdState::Other);
    }

    #[test]
    fn nul_in_path_is_an_error_not_a_panic() {
        let err = mount("none", Path::new("/a\0b"), "tmpfs", 0, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
