//! Tap devices and handing their fds to husk-vmm.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The first fd number the child gets: its taps are 3, 4, ... in order.
pub const FIRST_CHILD_FD: RawFd = 3;

/// Creates the tap `name` in the calling thread's network namespace: opens
/// /dev/net/tun and attaches it with TUNSETIFF (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`),
/// as husk-vmm's virtio-net expects. The tap is not persistent: it goes when the last
/// fd (the VMM's) closes. TUNSETIFF on an existing persistent tap would silently attach
/// to it: the caller checks by netlink first that no link of that name exists (for a
/// clear error), and `IFF_TUN_EXCL` makes the kernel refuse (EBUSY) one created since.
pub fn create_tap(name: &str) -> io::Result<OwnedFd> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_TUN_EXCL)
            as libc::c_short;
    // SAFETY: TUNSETIFF reads (and writes back the name into) the ifreq we own, which
    // lives across the call; the fd is the tun device we just opened.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut ifr) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// Makes `fds` the child's fds 3, 4, ... (in order), without FD_CLOEXEC, so husk-vmm
/// inherits exactly those; every other fd of ours is close-on-exec. In the child each
/// source is first moved above the target range, so a source that already sits at a
/// target number is never overwritten before it is copied.
pub fn pass_fds(cmd: &mut Command, fds: &[RawFd]) {
    if fds.is_empty() {
        return;
    }
    let sources = fds.to_vec();
    let n = RawFd::try_from(sources.len()).unwrap_or(RawFd::MAX - FIRST_CHILD_FD);
    // Allocated here: the child may only make async-signal-safe calls.
    let mut moved = vec![-1; sources.len()];
    // The closure runs between fork and exec and allocates nothing: it writes only into
    // the buffer allocated above.
    // SAFETY: only fcntl and dup2 (async-signal-safe) on fds of the child's own table.
    unsafe {
        cmd.pre_exec(move || {
            for (slot, &fd) in moved.iter_mut().zip(&sources) {
                let m = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_CHILD_FD + n);
                if m < 0 {
                    return Err(io::Error::last_os_error());
                }
                *slot = m;
            }
            for (i, &m) in moved.iter().enumerate() {
                // dup2 clears FD_CLOEXEC on the new fd; `m` (close-on-exec) goes at exec.
                if libc::dup2(m, FIRST_CHILD_FD + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    use std::process::Stdio;

    use super::*;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are fresh and owned by nobody else.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn the_child_gets_the_passed_fds_at_3_and_4_in_order() {
        let (mut r1, w1) = pipe();
        let (mut r2, w2) = pipe();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("echo first >&3 && echo second >&4")
            .stdin(Stdio::null());
        // Passed in the opposite order of their numbers, to exercise the move.
        pass_fds(&mut cmd, &[w2.as_raw_fd(), w1.as_raw_fd()]);
        let status = cmd.status().unwrap();
        drop((w1, w2));
        assert!(status.success());
        let (mut a, mut b) = (String::new(), String::new());
        r2.read_to_string(&mut a).unwrap();
        r1.read_to_string(&mut b).unwrap();
        assert_eq!(a, "first\n", "the first fd passed is the child's 3");
        assert_eq!(b, "second\n", "the second is its 4");
    }

    #[test]
    fn only_the_passed_fds_are_added_to_the_child() {
        let (_r1, w1) = pipe();
        let (_r2, w2) = pipe();
        let (_r3, w3) = pipe(); // close-on-exec and not passed
        let mut cmd = Command::new("ls");
        cmd.arg("/proc/self/fd")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        pass_fds(&mut cmd, &[w1.as_raw_fd(), w2.as_raw_fd()]);
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let fds: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(fds.contains(&3) && fds.contains(&4), "{fds:?}");
        // Beyond 0-4, the child may have only what it inherits from the test harness
        // (fds of ours without FD_CLOEXEC) and ls's own directory fd: not w3, not the
        // close-on-exec sources, not their moved copies.
        let inheritable = |fd: i32| {
            // SAFETY: fcntl(F_GETFD) only queries our own fd table.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            flags >= 0 && flags & libc::FD_CLOEXEC == 0
        };
        let extra: Vec<i32> = fds
            .iter()
            .copied()
            .filter(|&fd| fd > 4 && !inheritable(fd))
            .collect();
        assert!(
            extra.len() <= 1,
            "fds leaked into the child: {extra:?} of {fds:?}"
        );
        drop((w1, w2, w3));
    }

    #[test]
    fn bad_tap_names_are_refused_before_any_syscall() {
        for bad in ["", "a-name-longer-than-15", "nul\0"] {
            let e = create_tap(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn no_fds_means_no_hook() {
        let mut cmd = Command::new("/bin/true");
        pass_fds(&mut cmd, &[]);
        assert!(cmd.status().unwrap().success());
    }
}
