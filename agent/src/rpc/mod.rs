//! The agent API server: `husk.agent.v1` over ttrpc.
//!
//! The same [`service::AgentService`] is served on two kinds of listener
//! ([`ListenAddr`]): vsock port 1024 when the agent is PID 1 of the guest,
//! a Unix socket when it runs on the host for tests (`husk-agent serve
//! --listen unix:/path`). Next to it listens the stdio port ([`crate::stdio`]):
//! vsock port 1025 in the guest; on the host `--stdio-listen ADDR`, by
//! default the API socket's path with `.stdio` appended.
//!
//! ttrpc's synchronous, thread-based server is used rather than its tokio one:
//! the guest agent is a static musl binary that is all of the initramfs, and
//! the sync server needs no async runtime (smaller binary, fewer threads in
//! the guest, no second event loop next to PID 1's signalfd loop). Its
//! threads never fork or wait for children, so PID 1's reaping stays the
//! only `waitpid(-1)` in the guest.

pub mod service;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use husk_protocol::{agent_ttrpc, ttrpc, AGENT_VSOCK_PORT};

use self::service::{AgentService, PowerOff};
use crate::init::reaper::Reaper;
use crate::sandbox::setup::Target;
use crate::sandbox::{Sandbox, SandboxError};
use crate::stdio::{self, StdioError, StdioListener};

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// AF_VSOCK, any CID, this port (the guest).
    Vsock { port: u32 },
    /// A Unix stream socket at this path (the host, for tests).
    Unix(PathBuf),
}

impl ListenAddr {
    /// Where PID 1 serves the API in the guest.
    pub const GUEST: ListenAddr = ListenAddr::Vsock {
        port: AGENT_VSOCK_PORT,
    };

    /// Parses `unix:<path>` or `vsock:<port>`.
    pub fn parse(s: &str) -> Result<Self, RpcError> {
        let bad = |why: &str| RpcError::BadListenAddr {
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
    fn ttrpc_addr(&self) -> String {
        match self {
            // ttrpc turns "-1" into VMADDR_CID_ANY.
            ListenAddr::Vsock { port } => format!("vsock://-1:{port}"),
            ListenAddr::Unix(path) => format!("unix://{}", path.display()),
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

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("Bad listen address {addr:?}: {why}")]
    BadListenAddr { addr: String, why: String },
    #[error("Usage: husk-agent serve --listen <unix:PATH|vsock:PORT> [--stdio-listen <unix:PATH|vsock:PORT>] [--root DIR]: {0}")]
    Usage(String),
    #[error("Cannot set up the agent's state")]
    Sandbox(#[source] SandboxError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error("Cannot start the stdio thread")]
    StdioThread(#[source] io::Error),
    #[error("Failed to remove the stale socket {path}")]
    RemoveStaleSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to listen on {addr}")]
    Bind {
        addr: ListenAddr,
        #[source]
        source: ttrpc::Error,
    },
    #[error("Failed to start the ttrpc server on {addr}")]
    Start {
        addr: ListenAddr,
        #[source]
        source: ttrpc::Error,
    },
}

/// Where `husk-agent serve` keeps container state unless `--root` says.
pub const DEFAULT_HOST_ROOT: &str = "/run/husk-agent";

/// Where PID 1 keeps container state in the guest (/run is a tmpfs).
pub const GUEST_ROOT: &str = "/run/husk";

/// The arguments of `husk-agent serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    /// `--listen`: the API.
    pub listen: ListenAddr,
    /// `--stdio-listen`: the stdio port (default from `listen`).
    pub stdio: ListenAddr,
    /// `--root`: container state, and the re-rooted sandbox set-up.
    pub root: PathBuf,
}

/// Parses `--listen <addr>` (required), `--stdio-listen <addr>` and
/// `--root <dir>`, each also as `--flag=value`.
pub fn parse_serve_args(args: &[String]) -> Result<ServeArgs, RpcError> {
    let usage = |why: String| RpcError::Usage(why);
    let mut listen = None;
    let mut stdio_listen = None;
    let mut root = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg.as_str(), None),
        };
        if !matches!(flag, "--listen" | "--stdio-listen" | "--root") {
            return Err(usage(format!("unexpected argument {arg:?}")));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| usage(format!("{flag} needs a value")))?
                .as_str(),
        };
        let twice = match flag {
            "--listen" => listen.replace(ListenAddr::parse(value)?).is_some(),
            "--stdio-listen" => stdio_listen.replace(ListenAddr::parse(value)?).is_some(),
            _ => {
                if value.is_empty() {
                    return Err(usage("--root needs a directory".into()));
                }
                root.replace(PathBuf::from(value)).is_some()
            }
        };
        if twice {
            return Err(usage(format!("{flag} given twice")));
        }
    }
    let listen = listen.ok_or_else(|| usage("missing --listen <unix:PATH|vsock:PORT>".into()))?;
    let stdio = stdio_listen.unwrap_or_else(|| stdio::default_stdio_addr(&listen));
    if stdio == listen {
        return Err(usage("--stdio-listen must differ from --listen".into()));
    }
    Ok(ServeArgs {
        listen,
        stdio,
        root: root.unwrap_or_else(|| PathBuf::from(DEFAULT_HOST_ROOT)),
    })
}

/// What the server needs.
pub struct ServeConfig {
    pub listen: ListenAddr,
    pub stdio: ListenAddr,
    /// Container state.
    pub root: PathBuf,
    /// Where CreateSandbox acts.
    pub target: Target,
    /// The reaper that some loop drives on SIGCHLD.
    pub reaper: Arc<Reaper>,
    /// DestroySandbox's last step, if any.
    pub power_off: Option<PowerOff>,
}

/// A running API server. Its threads serve until the process ends.
pub struct RunningServer {
    addr: ListenAddr,
    stdio: ListenAddr,
    server: ttrpc::Server,
}

impl RunningServer {
    /// Where it listens.
    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// Where the stdio port listens.
    pub fn stdio_addr(&self) -> &ListenAddr {
        &self.stdio
    }

    /// Stops accepting connections and closes the open ones.
    pub fn shutdown(self) {
        self.server.shutdown();
    }
}

/// Binds both listeners and starts serving the agent API on ttrpc's own
/// threads and the stdio port on ours; returns once both listen, so a
/// client may connect right away.
pub fn serve(config: ServeConfig) -> Result<RunningServer, RpcError> {
    let addr = config.listen;
    if let ListenAddr::Unix(path) = &addr {
        remove_stale_socket(path)?;
    }
    let sandbox = Arc::new(
        Sandbox::new(&config.root, config.reaper, config.target).map_err(RpcError::Sandbox)?,
    );
    let stdio_listener = StdioListener::bind(&config.stdio)?;
    stdio_listener
        .spawn(sandbox.clone())
        .map_err(RpcError::StdioThread)?;
    let service = Arc::new(AgentService::new(sandbox, config.power_off));
    let mut server = ttrpc::Server::new()
        .bind(&addr.ttrpc_addr())
        .map_err(|source| RpcError::Bind {
            addr: addr.clone(),
            source,
        })?
        .register_service(agent_ttrpc::create_agent(service));
    server.start().map_err(|source| RpcError::Start {
        addr: addr.clone(),
        source,
    })?;
    Ok(RunningServer {
        addr,
        stdio: config.stdio,
        server,
    })
}

/// A socket left by an earlier run would make bind() fail with EADDRINUSE;
/// anything that is not a socket is left alone (and bind() reports it).
fn remove_stale_socket(path: &Path) -> Result<(), RpcError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| RpcError::RemoveStaleSocket {
                path: path.to_path_buf(),
                source,
            })
        }
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

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn serve_args() {
        let a = parse_serve_args(&args(&["--listen", "unix:/tmp/a.sock"])).unwrap();
        assert_eq!(a.listen, ListenAddr::Unix("/tmp/a.sock".into()));
        assert_eq!(a.stdio, ListenAddr::Unix("/tmp/a.sock.stdio".into()));
        assert_eq!(a.root, PathBuf::from(DEFAULT_HOST_ROOT));
        let b = parse_serve_args(&args(&[
            "--listen=unix:/tmp/a.sock",
            "--stdio-listen",
            "unix:/tmp/s",
            "--root=/tmp/r",
        ]))
        .unwrap();
        assert_eq!(b.stdio, ListenAddr::Unix("/tmp/s".into()));
        assert_eq!(b.root, PathBuf::from("/tmp/r"));
        let v = parse_serve_args(&args(&["--listen", "vsock:1024"])).unwrap();
        assert_eq!(v.stdio, ListenAddr::Vsock { port: 1025 });
        for bad in [
            &[][..],
            &["--listen"],
            &["--port", "3"],
            &["--listen", "vsock:1", "--listen", "vsock:2"],
            &["--listen", "nope"],
            &["--listen", "unix:/a", "--stdio-listen", "unix:/a"],
            &["--listen", "unix:/a", "--root="],
        ] {
            assert!(parse_serve_args(&args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["unix:/tmp/x.sock", "vsock:1024"] {
            assert_eq!(ListenAddr::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn stale_socket_is_removed_other_files_are_not() {
        let dir = std::env::temp_dir().join(format!("husk-rpc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        remove_stale_socket(&sock).unwrap();
        assert!(!sock.exists());
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        remove_stale_socket(&file).unwrap();
        assert!(file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
