//! Host-side network ends for guests on a tap: the tap itself (created here, its fd handed
//! to husk-vmm as the shim does) and a raw packet socket on it, which sees the frames the
//! guest sends and sends frames to the guest.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A tap this test created: its fd (not close-on-exec, so husk-vmm inherits it) and name.
/// The tap is not persistent: it goes away with the last fd.
pub struct HostTap {
    pub fd: OwnedFd,
    pub name: String,
}

impl HostTap {
    pub fn create(name: &str) -> io::Result<Self> {
        // SAFETY: a NUL-terminated path; no O_CLOEXEC on purpose (the child inherits it).
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `ifreq` is plain old data; zeroes are a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, alive for the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            name: name.to_owned(),
        })
    }

    /// A tap named for this process, or why the test cannot make one here (a panic
    /// under `HUSK_REQUIRE_KVM=1`, where the test must run).
    pub fn for_test(test: &str, prefix: &str) -> Option<Self> {
        let name = format!("{prefix}{}", std::process::id() % 100_000);
        match Self::create(&name) {
            Ok(t) => Some(t),
            Err(e) => {
                let msg =
                    format!("{test}: cannot create tap {name} (needs root and /dev/net/tun): {e}");
                if std::env::var("HUSK_REQUIRE_KVM").as_deref() == Ok("1") {
                    panic!("{msg}");
                }
                eprintln!("SKIPPED {msg}");
                None
            }
        }
    }
}

/// Runs `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An `AF_PACKET` socket bound to one interface: every frame on it, both ways.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn bind(ifname: &str) -> io::Result<Self> {
        let name = std::ffi::CString::new(ifname).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: a plain socket call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(all),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = ifindex as i32;
        let addr = sockaddr_ll(ifindex, all);
        // SAFETY: `addr` is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Self { fd, ifindex })
    }

    /// Sends one Ethernet frame out of the interface (towards the guest, on a tap).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let addr = sockaddr_ll(self.ifindex, 0);
        // SAFETY: `frame` and `addr` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next frame seen on the interface, or `None` after the receive timeout.
    pub fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).ok()
    }

    /// Waits up to `timeout` for a frame containing `needle`.
    pub fn wait_for(&self, needle: &[u8], timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        let mut buf = vec![0u8; 65536];
        while start.elapsed() < timeout {
            if let Some(n) = self.recv(&mut buf) {
                if buf[..n].windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
        }
        false
    }
}

fn sockaddr_ll(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; zeroes are a valid value.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = protocol;
    a.sll_ifindex = ifindex;
    a
}
