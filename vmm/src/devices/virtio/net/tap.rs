//! The tap backend: opening a tap by name or checking an inherited fd, and the
//! [`TapIo`] trait the queue logic uses (so tests use a fake).
//!
//! Syscalls, by thread: [`Tap::open`] and [`Tap::from_fd`] run on the main thread while the
//! VM is built (open /dev/net/tun, ioctl TUNSETIFF or TUNGETIFF, ioctl TUNSETVNETHDRSZ,
//! fcntl F_GETFL/F_SETFL); [`TapIo::set_offload`] (ioctl TUNSETOFFLOAD) and the frame
//! reads and writes run on the `vmm-events` thread.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// Errors opening or checking a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("Cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("Cannot attach to tap {name} (TUNSETIFF)")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("Fd {fd} is not a tun/tap device (TUNGETIFF)")]
    GetIff {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error(
        "Fd {fd} is tun/tap device {name} with flags {flags:#x}, not a tap with IFF_NO_PI and \
         IFF_VNET_HDR"
    )]
    WrongFlags { fd: RawFd, name: String, flags: u16 },
    #[error("Cannot make tap fd {fd} close-on-exec")]
    CloseOnExec {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("Cannot set the vnet header size of tap {name} (TUNSETVNETHDRSZ)")]
    VnetHdrSize {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("Cannot make tap {name} non-blocking")]
    NonBlocking {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// What the queue logic needs from a tap: non-blocking reads and writes of one frame
/// (vnet header included), and the offloads it may hand us.
pub trait TapIo {
    /// Reads one frame into `buf`; `WouldBlock` when none is queued.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame; `WouldBlock` when the tap cannot take it now.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// TUNSETOFFLOAD: which offloaded frames (TUN_F_*) the tap may give us.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

/// An open tap: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte vnet headers, non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const REQUIRED_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

impl Tap {
    /// Opens (or creates, with CAP_NET_ADMIN) the tap `name` in the VMM's network namespace.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: REQUIRED_FLAGS as libc::c_short,
            _pad: [0; 22],
        };
        let n = name.len().min(libc::IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq` matches in
        // layout and size (40 bytes); the fd is ours and open.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::SetIff {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Self {
            file,
            name: ifname(&req.name),
        };
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    /// Takes over an inherited tap fd: checks with TUNGETIFF that it is a tap with
    /// IFF_NO_PI and IFF_VNET_HDR, owns it from then on (close-on-exec, non-blocking) and
    /// sets the vnet header size.
    pub fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes one `struct ifreq` into `req`; on a fd that is not a tun
        // device it fails without touching memory.
        if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } < 0 {
            return Err(TapError::GetIff {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let name = ifname(&req.name);
        let flags = req.flags as u16;
        // IFF_TUN and IFF_TAP are the low type bits: the type must be tap.
        if i32::from(req.flags) & 0x000f != libc::IFF_TAP
            || i32::from(req.flags) & REQUIRED_FLAGS != REQUIRED_FLAGS
        {
            return Err(TapError::WrongFlags { fd, name, flags });
        }
        // SAFETY: F_SETFD sets a flag of the descriptor and touches no memory.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(TapError::CloseOnExec {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: the parent passed this fd for this device alone and TUNGETIFF showed it
        // is open; from here the File owns it and no other code in the VMM uses it.
        let file = unsafe { File::from_raw_fd(fd) };
        let tap = Self { file, name };
        tap.set_nonblocking()?;
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    /// The interface name the kernel reported.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_vnet_hdr_size(&self) -> Result<(), TapError> {
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which lives for the call.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(TapError::VnetHdrSize {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn set_nonblocking(&self) -> Result<(), TapError> {
        let fd = self.file.as_raw_fd();
        let err = |source| TapError::NonBlocking {
            name: self.name.clone(),
            source,
        };
        // SAFETY: F_GETFL and F_SETFL read and set flags of our own fd; no memory involved.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn ifname(raw: &[u8; libc::IFNAMSIZ]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl TapIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_is_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn an_fd_that_is_not_a_tap_is_refused() {
        let f = File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        let e = Tap::from_fd(fd).unwrap_err();
        assert!(
            matches!(e, TapError::GetIff { fd: n, .. } if n == fd),
            "{e}"
        );
        assert!(e.to_string().contains("not a tun/tap device"));
    }

    /// Needs CAP_NET_ADMIN and /dev/net/tun: a tap made here, then a tun and a tap
    /// without a vnet header passed as fds.
    #[test]
    fn real_taps_are_checked() {
        let Ok(_) = File::open("/dev/net/tun") else {
            eprintln!("skipped: no /dev/net/tun");
            return;
        };
        let name = format!("hk{}", std::process::id() % 100_000);
        let tap = match Tap::open(&name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: cannot create a tap (needs CAP_NET_ADMIN): {e}");
                return;
            }
        };
        assert_eq!(tap.name(), name);
        // SAFETY: F_GETFL on our own fd.
        let fl = unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(fl & libc::O_NONBLOCK, 0);
        let mut tap = tap;
        tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
            .unwrap();
        // Nothing queued: WouldBlock, not a hang.
        let mut buf = [0u8; 2048];
        let e = tap.read_frame(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        // A second, differently flagged queue of a new device, passed as an fd.
        let open_with = |flags: libc::c_int, n: &str| -> RawFd {
            // SAFETY: a NUL-terminated path; the fd is checked below.
            let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR) };
            assert!(fd >= 0);
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags: flags as libc::c_short,
                _pad: [0; 22],
            };
            req.name[..n.len()].copy_from_slice(n.as_bytes());
            // SAFETY: as in `Tap::open`.
            assert!(unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) } >= 0);
            fd
        };
        let fd = open_with(
            libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
            &format!("{name}u"),
        );
        let e = Tap::from_fd(fd).unwrap_err();
        assert!(matches!(e, TapError::WrongFlags { .. }), "{e}");
        // SAFETY: our fd, refused above and so still open.
        unsafe { libc::close(fd) };
        let fd = open_with(libc::IFF_TAP | libc::IFF_NO_PI, &format!("{name}n"));
        assert!(matches!(Tap::from_fd(fd), Err(TapError::WrongFlags { .. })));
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        let fd = open_with(REQUIRED_FLAGS, &format!("{name}v"));
        let t = Tap::from_fd(fd).unwrap();
        assert_eq!(t.name(), format!("{name}v"));
        assert_eq!(t.as_raw_fd(), fd);
        // SAFETY: F_GETFD touches no memory.
        let fdfl = unsafe { libc::fcntl(t.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(fdfl & libc::FD_CLOEXEC, 0);
    }
}
