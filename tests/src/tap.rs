//! Taps for the tests that give a guest a virtio-net device: created here, handed to
//! husk-vmm as an inherited fd (`--net fd=N`) as the shim does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

/// A tap this test created: its fd (not close-on-exec, so husk-vmm inherits it) and name.
/// The tap is not persistent: it goes away with the last fd.
pub struct HostTap {
    pub fd: OwnedFd,
    pub name: String,
}

impl HostTap {
    pub fn create(name: &str) -> std::io::Result<Self> {
        // SAFETY: a NUL-terminated path; no O_CLOEXEC on purpose (the child inherits it).
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
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
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            name: name.to_owned(),
        })
    }
}

/// Runs `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tap of our own named `<prefix><pid>` (at most 15 bytes: keep the prefix short), or
/// why the test cannot make one here (a failure under `HUSK_REQUIRE_KVM=1`).
pub fn host_tap(test: &str, prefix: &str) -> Option<HostTap> {
    let name = format!("{prefix}{}", std::process::id() % 100_000);
    match HostTap::create(&name) {
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
