//! Where the agent's ports listen and how a stream is accepted on them: AF_VSOCK in the
//! guest, a Unix socket on the host (`husk-agent serve`, for tests). The API server
//! ([`crate::rpc`]), the stdio port ([`crate::stdio`]) and the port-forward port
//! ([`crate::forward`]) all listen through here.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use husk_protocol::AGENT_VSOCK_PORT;

/// Where a port listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// AF_VSOCK, any CID, this port (the guest).
    Vsock { port: u32 },
    /// A Unix stream socket at this path (the host, for tests).
    Unix(PathBuf),
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("Bad listen address {addr:?}: {why}")]
    BadAddr { addr: String, why: String },
    #[error("Cannot listen on {addr}")]
    Bind {
        addr: ListenAddr,
        #[source]
        source: io::Error,
    },
}

impl ListenAddr {
    /// Where PID 1 serves the API in the guest.
    pub const GUEST: ListenAddr = ListenAddr::Vsock {
        port: AGENT_VSOCK_PORT,
    };

    /// Parses `unix:<path>` or `vsock:<port>`.
    pub fn parse(s: &str) -> Result<Self, ListenError> {
        let bad = |why: &str| ListenError::BadAddr {
            addr: s.to_string(),
            why: why.to_string(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            // Tolerate the URL form unix:///path too.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            if path.contains('\0') {
                return Err(bad("NUL byte in socket path"));
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else if let Some(port) = s.strip_prefix("vsock:") {
            let port = port
                .strip_prefix("//")
                .unwrap_or(port)
                .parse::<u32>()
                .map_err(|_| bad("port is not a number"))?;
            Ok(ListenAddr::Vsock { port })
        } else {
            Err(bad("expected unix:<path> or vsock:<port>"))
        }
    }

    /// The address in the form `ttrpc::Server::bind` takes.
    pub fn ttrpc_addr(&self) -> String {
        match self {
            // ttrpc turns "-1" into VMADDR_CID_ANY.
            ListenAddr::Vsock { port } => format!("vsock://-1:{port}"),
            ListenAddr::Unix(path) => format!("unix://{}", path.display()),
        }
    }

    /// The address of a companion port of the API address `self`: vsock `port` in the
    /// guest, the API socket's path with `suffix` appended on the host.
    pub fn companion(&self, suffix: &str, port: u32) -> ListenAddr {
        match self {
            ListenAddr::Unix(path) => {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                ListenAddr::Unix(PathBuf::from(p))
            }
            ListenAddr::Vsock { .. } => ListenAddr::Vsock { port },
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Vsock { port } => write!(f, "vsock:{port}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound stream listener of one of the agent's byte-stream ports.
#[derive(Debug)]
pub enum StreamListener {
    Unix(UnixListener),
    Vsock(OwnedFd),
}

impl StreamListener {
    /// Binds `addr` (a stale Unix socket left by an earlier run is removed first).
    pub fn bind(addr: &ListenAddr) -> Result<Self, ListenError> {
        let err = |source| ListenError::Bind {
            addr: addr.clone(),
            source,
        };
        match addr {
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).map_err(err)?;
                UnixListener::bind(path).map(Self::Unix).map_err(err)
            }
            ListenAddr::Vsock { port } => {
                husk_vsock_sys::listen(*port).map(Self::Vsock).map_err(err)
            }
        }
    }

    /// The next connection, as a file (reads and writes are the socket's).
    pub fn accept(&self) -> io::Result<File> {
        match self {
            Self::Unix(l) => l.accept().map(|(s, _)| File::from(OwnedFd::from(s))),
            Self::Vsock(fd) => husk_vsock_sys::accept(fd).map(File::from),
        }
    }
}

/// A socket left by an earlier run would make bind() fail with EADDRINUSE; anything
/// that is not a socket is left alone (and bind() reports it).
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_addresses() {
        assert_eq!(
            ListenAddr::parse("unix:/tmp/a.sock").unwrap(),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("unix:///tmp/a.sock").unwrap(),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        assert!(ListenAddr::parse("unix:").is_err());
        assert!(ListenAddr::parse("unix:/a\0b").is_err());
    }

    #[test]
    fn parses_vsock_addresses() {
        assert_eq!(
            ListenAddr::parse("vsock:1024").unwrap(),
            ListenAddr::Vsock { port: 1024 }
        );
        assert!(ListenAddr::parse("vsock:x").is_err());
        assert!(ListenAddr::parse("vsock:99999999999").is_err());
        assert!(ListenAddr::parse("tcp:1.2.3.4:5").is_err());
        assert!(ListenAddr::parse("/tmp/a.sock").is_err());
    }

    #[test]
    fn ttrpc_addresses() {
        assert_eq!(ListenAddr::GUEST.ttrpc_addr(), "vsock://-1:1024");
        assert_eq!(
            ListenAddr::Unix("/run/a.sock".into()).ttrpc_addr(),
            "unix:///run/a.sock"
        );
    }

    #[test]
    fn companion_ports() {
        assert_eq!(
            ListenAddr::Unix("/run/a.sock".into()).companion(".forward", 1026),
            ListenAddr::Unix("/run/a.sock.forward".into())
        );
        assert_eq!(
            ListenAddr::GUEST.companion(".forward", 1026),
            ListenAddr::Vsock { port: 1026 }
        );
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_file_is_not() {
        let dir = std::env::temp_dir().join(format!("husk-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("a.sock");
        drop(UnixListener::bind(&sock).unwrap());
        let addr = ListenAddr::Unix(sock.clone());
        let l = StreamListener::bind(&addr).unwrap();
        let c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        drop(c);
        l.accept().unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(StreamListener::bind(&ListenAddr::Unix(file.clone())).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
