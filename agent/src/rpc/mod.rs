//! The agent API server: `husk.agent.v1` over ttrpc.
//!
//! The same [`service::AgentService`] is served on two kinds of listener
//! ([`ListenAddr`]): vsock port 1024 when the agent is PID 1 of the guest,
//! a Unix socket when it runs on the host for tests (`husk-agent serve
//! --listen unix:/path`). Next to it listens the stdio port ([`crate::stdio`]):
//! vsock port 1025 in the guest; on the host `--stdio-listen ADDR`, by
//! default the API socket's path with `.stdio` appended; and the port-forward
//! port ([`crate::forward`]): vsock port 1026, on the host the API socket's path
//! with `.forward` appended.
//!
//! ttrpc's synchronous, thread-based server is used rather than its tokio one:
//! the guest agent is a static musl binary that is all of the initramfs, and
//! the sync server needs no async runtime (smaller binary, fewer threads in
//! the guest, no second event loop next to PID 1's signalfd loop). Its
//! threads never fork or wait for children, so PID 1's reaping stays the
//! only `waitpid(-1)` in the guest.

pub mod service;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use husk_protocol::{agent_ttrpc, ttrpc, PORT_FORWARD_VSOCK_PORT, STDIO_VSOCK_PORT};

use self::service::{AgentService, PowerOff};
use crate::forward;
pub use crate::listen::ListenAddr;
use crate::listen::{self, ListenError, StreamListener};
use crate::reaper::Reaper;
use crate::sandbox::setup::Target;
use crate::sandbox::{Sandbox, SandboxError};
use crate::stdio;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("Usage: husk-agent serve --listen <unix:PATH|vsock:PORT> [--stdio-listen <unix:PATH|vsock:PORT>] [--root DIR]: {0}")]
    Usage(String),
    #[error("Cannot set up the agent's state")]
    Sandbox(#[source] SandboxError),
    #[error("Cannot start the {0} thread")]
    Thread(&'static str, #[source] io::Error),
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
    /// The port-forward port (always next to `listen`).
    pub forward: ListenAddr,
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
    let stdio = stdio_listen.unwrap_or_else(|| default_stdio_addr(&listen));
    if stdio == listen {
        return Err(usage("--stdio-listen must differ from --listen".into()));
    }
    let forward = default_forward_addr(&listen);
    if forward == stdio {
        return Err(usage(
            "--stdio-listen must differ from the port-forward port".into(),
        ));
    }
    Ok(ServeArgs {
        listen,
        stdio,
        forward,
        root: root.unwrap_or_else(|| PathBuf::from(DEFAULT_HOST_ROOT)),
    })
}

/// The default stdio address for an API address: `<path>.stdio` next to a Unix socket,
/// vsock port 1025 for vsock.
pub fn default_stdio_addr(api: &ListenAddr) -> ListenAddr {
    api.companion(".stdio", STDIO_VSOCK_PORT)
}

/// The port-forward address for an API address: `<path>.forward` next to a Unix
/// socket, vsock port 1026 for vsock.
pub fn default_forward_addr(api: &ListenAddr) -> ListenAddr {
    api.companion(".forward", PORT_FORWARD_VSOCK_PORT)
}

/// What the server needs.
pub struct ServeConfig {
    pub listen: ListenAddr,
    pub stdio: ListenAddr,
    pub forward: ListenAddr,
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
    forward: ListenAddr,
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

    /// Where the port-forward port listens.
    pub fn forward_addr(&self) -> &ListenAddr {
        &self.forward
    }

    /// Stops accepting connections and closes the open ones.
    pub fn shutdown(self) {
        self.server.shutdown();
    }
}

/// Binds the three listeners and starts serving the agent API on ttrpc's own
/// threads and the stdio and port-forward ports on ours; returns once all
/// listen, so a client may connect right away.
pub fn serve(config: ServeConfig) -> Result<RunningServer, RpcError> {
    let addr = config.listen;
    if let ListenAddr::Unix(path) = &addr {
        listen::remove_stale_socket(path).map_err(|source| RpcError::RemoveStaleSocket {
            path: path.clone(),
            source,
        })?;
    }
    let sandbox = Arc::new(
        Sandbox::new(&config.root, config.reaper, config.target).map_err(RpcError::Sandbox)?,
    );
    let stdio_listener = StreamListener::bind(&config.stdio)?;
    stdio::spawn(stdio_listener, sandbox.clone()).map_err(|e| RpcError::Thread("stdio", e))?;
    let forward_listener = StreamListener::bind(&config.forward)?;
    forward::spawn(forward_listener).map_err(|e| RpcError::Thread("port-forward", e))?;
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
        forward: config.forward,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
