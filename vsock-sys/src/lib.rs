//! AF_VSOCK stream sockets over libc, for the guest side of husk's vsock: the agent (PID 1
//! of the guest) and the device tests' probe (PID 1 of the probe initramfs). Only `libc`,
//! so the probe stays a small static binary. The host side speaks vsock through the VMM's
//! hybrid vsock Unix socket instead.
//!
//! Every descriptor is close-on-exec; errors are the system call's `io::Error`.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// The host's CID, as seen from a guest.
pub const HOST_CID: u32 = libc::VMADDR_CID_HOST;

/// The backlog of [`listen`].
const BACKLOG: libc::c_int = 128;

/// A listening stream socket on `port`, any CID.
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    let sock = socket()?;
    let addr = address(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a live sockaddr_vm and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen() on a bound socket we own.
    if unsafe { libc::listen(sock.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// A stream socket connected to `port` of `cid`.
pub fn connect(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let sock = socket()?;
    let addr = address(cid, port);
    // SAFETY: `addr` is a live sockaddr_vm and the length passed is its size.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// The next connection on a listening socket; retried when a signal interrupts the wait.
pub fn accept(listener: &impl AsFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: NULL address pointers are allowed: the peer address is not asked for.
        let fd = unsafe {
            libc::accept4(
                listener.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4() just returned this descriptor, nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes plain integers.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket() just returned this descriptor, nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value of it.
    let mut addr: libc::sockaddr_vm = unsafe { mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The address a socket is bound to.
    fn local_address(sock: &OwnedFd) -> libc::sockaddr_vm {
        let mut addr = address(0, 0);
        let mut len = mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` and `len` are live and `len` is the size of `addr`.
        let rc = unsafe {
            libc::getsockname(
                sock.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_vm).cast::<libc::sockaddr>(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockname: {}", io::Error::last_os_error());
        addr
    }

    fn int_option(sock: &OwnedFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are live and `len` is the size of `value`.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast::<libc::c_void>(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
        value
    }

    #[test]
    fn listens_on_a_port_the_kernel_picks() {
        let sock = match listen(libc::VMADDR_PORT_ANY) {
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                eprintln!("SKIPPED: this kernel has no AF_VSOCK");
                return;
            }
            other => other.expect("listen"),
        };
        let addr = local_address(&sock);
        assert_eq!(addr.svm_family, libc::AF_VSOCK as libc::sa_family_t);
        assert_eq!(addr.svm_cid, libc::VMADDR_CID_ANY);
        assert_ne!(addr.svm_port, libc::VMADDR_PORT_ANY);
        assert_eq!(int_option(&sock, libc::SOL_SOCKET, libc::SO_ACCEPTCONN), 1);
        // SAFETY: F_GETFD on a descriptor we own takes no pointer.
        let flags = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn accept_on_a_non_socket_is_an_error() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = accept(&file).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK));
    }
}
