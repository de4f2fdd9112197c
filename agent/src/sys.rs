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

/// `chroot(2)`.
pub fn chroot(path: &Path) -> io::Result<()> {
    let path = path_to_cstring(path)?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::chroot(path.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The file system type (`f_type`, a magic number) of the file system
/// holding `path`.
pub fn statfs_magic(path: &Path) -> io::Result<i64> {
    let path = path_to_cstring(path)?;
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string; `st` is writable
    // memory of the size statfs() expects.
    if unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs() succeeded, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // c_long on glibc, c_ulong on musl
    Ok(st.f_type as i64)
}

/// `umount2(path, MNT_DETACH)`.
pub fn umount_detach(target: &Path) -> io::Result<()> {
    let target = path_to_cstring(target)?;
    // SAFETY: `target` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// Undoes, in a process about to exec a container's program, what the
/// agent's own signal set-up would pass on through exec: every signal
/// unblocked (PID 1 blocks the ones its signalfd reads) and every ignored
/// signal back to its default action (the Rust runtime ignores SIGPIPE, and
/// the agent may have been started with others ignored).
pub fn reset_signals_for_exec() -> io::Result<()> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset() initialises the set it is given.
    if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigemptyset() succeeded, so the set is initialised.
    let set = unsafe { set.assume_init() };
    // SAFETY: `set` is initialised; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    /// The kernel's `struct sigaction` (x86_64): the C library's refuses
    /// the signals it reserves (32, 33), which may be ignored too.
    #[repr(C)]
    #[derive(Default)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    const SIG_IGN: usize = 1;
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = KernelSigaction::default();
        // SAFETY: rt_sigaction with a NULL new action only writes the old
        // one into `old`, a live struct of the kernel's layout; 8 is the
        // size of the kernel's signal set.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<KernelSigaction>(),
                &mut old as *mut KernelSigaction,
                8usize,
            )
        };
        if rc != 0 || old.handler != SIG_IGN {
            continue;
        }
        let default = KernelSigaction::default();
        // SAFETY: as above; the new action (SIG_DFL, no flags, empty mask)
        // is a live struct of the kernel's layout.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `ioctl(TIOCSWINSZ)`: sets the window size of the terminal behind `fd`.
pub fn set_window_size(fd: &impl AsRawFd, rows: u16, columns: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a struct winsize from the pointer, which
    // points to a live, initialised one.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Milliseconds of `CLOCK_BOOTTIME` (since the kernel's timekeeping started, early in its
/// boot; suspend included), or `None` if the clock cannot be read.
pub fn boottime_ms() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let ms = u64::try_from(ts.tv_nsec).ok()? / 1_000_000;
    secs.checked_mul(1000)?.checked_add(ms)
}

/// `clock_settime(CLOCK_REALTIME)`.
pub fn set_realtime_clock(sec: i64, nsec: u32) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: sec as _,
        tv_nsec: nsec as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])` (linux/random.h).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }` holding
/// `bytes`, credited at 8 bits a byte, as the u32 words the ioctl reads.
pub fn rand_pool_info(bytes: &[u8]) -> Vec<u32> {
    let mut words = vec![0u32; 2 + bytes.len().div_ceil(4)];
    words[0] = (bytes.len() * 8) as u32;
    words[1] = bytes.len() as u32;
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        words[2 + i] = u32::from_ne_bytes(w);
    }
    words
}

/// Adds `bytes` to the kernel's input pool, credited as entropy (RNDADDENTROPY; needs
/// CAP_SYS_ADMIN), then has the CRNG reseed from the pool now (RNDRESEEDCRNG) instead of
/// at its next scheduled reseed, so the very next read of /dev/urandom or getrandom(2)
/// depends on them.
pub fn add_entropy_and_reseed(bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/urandom")?;
    let info = rand_pool_info(bytes);
    // SAFETY: `info` is a complete rand_pool_info whose buf_size matches the words that
    // follow its header; the kernel only reads it, within the call.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG as _, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `sethostname(2)`.
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the bytes of `name`, which
    // outlive the call; the kernel copies them.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast::<libc::c_char>(), name.len()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `shutdown(2)` of one or both directions of a socket. Unlike `close`,
/// the peer sees the end even when a copy of the descriptor lives on in
/// another process.
pub fn shutdown(fd: &impl AsRawFd, how: std::net::Shutdown) -> io::Result<()> {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown() on a descriptor we own; no memory is passed.
    if unsafe { libc::shutdown(fd.as_raw_fd(), how) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_RCVTIMEO` on a socket; `None` blocks forever.
pub fn set_recv_timeout(fd: &impl AsRawFd, timeout: Option<std::time::Duration>) -> io::Result<()> {
    let tv = match timeout {
        Some(d) => libc::timeval {
            tv_sec: d.as_secs() as _,
            tv_usec: d.subsec_micros() as _,
        },
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    // SAFETY: the option value points to a live timeval of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast::<libc::c_void>(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is readable (or at its end, or in error), at most
/// `timeout_ms` milliseconds (-1: no limit). Returns whether it is.
pub fn poll_readable(fd: &impl AsRawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one live pollfd, matching the count of 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(rc > 0);
    }
}

/// Receives one file descriptor sent with SCM_RIGHTS on a Unix socket (how
/// a container's init hands the agent its terminal's master side).
pub fn recv_fd(sock: &impl AsRawFd) -> io::Result<OwnedFd> {
    let mut data = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast::<libc::c_void>(),
        iov_len: data.len(),
    };
    // Room for one cmsghdr carrying a few fds (more would be closed).
    let mut cmsg_buf = [0u64; 16];
    // SAFETY: an all-zero msghdr is a valid value of the struct.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast::<libc::c_void>();
    msg.msg_controllen = mem::size_of_val(&cmsg_buf) as _;
    let n = loop {
        // SAFETY: `msg` points to live buffers of the sizes it declares.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut received = Vec::new();
    // SAFETY: `msg` was filled in by recvmsg; the CMSG_* macros walk the
    // control buffer within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / mem::size_of::<RawFd>();
                let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(first.add(i));
                    received.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let mut fds = received.into_iter();
    match fds.next() {
        Some(fd) => Ok(fd),
        None if n == 0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the socket without sending a descriptor",
        )),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no descriptor in the message",
        )),
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
    fn rand_pool_info_layout() {
        let info = rand_pool_info(&[1, 2, 3, 4, 5]);
        assert_eq!(info[0], 40, "entropy_count in bits");
        assert_eq!(info[1], 5, "buf_size in bytes");
        assert_eq!(info[2], u32::from_ne_bytes([1, 2, 3, 4]));
        assert_eq!(info[3], u32::from_ne_bytes([5, 0, 0, 0]));
        assert_eq!(info.len(), 4);
        assert_eq!(rand_pool_info(&[7; 32]).len(), 2 + 8);
        // The ioctl numbers the kernel defines.
        let ioc = |dir: libc::c_ulong, nr: libc::c_ulong, size: libc::c_ulong| {
            (dir << 30) | (size << 16) | (libc::c_ulong::from(b'R') << 8) | nr
        };
        assert_eq!(RNDADDENTROPY, ioc(1, 3, 8));
        assert_eq!(RNDRESEEDCRNG, ioc(0, 7, 0));
    }

    #[test]
    fn nul_in_path_is_an_error_not_a_panic() {
        let err = mount("none", Path::new("/a\0b"), "tmpfs", 0, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
