//! `husk-agent serve`: the agent API on the host, for tests. The same
//! server as in the guest, with a Unix socket for the API and one for the
//! stdio port, container state under `--root`, and the sandbox set-up
//! re-rooted under `<root>/sandbox` (see [`crate::sandbox::setup`]).
//!
//! As in the guest, one loop reaps children on SIGCHLD and hands the
//! statuses of container processes to the engine; the process is a child
//! subreaper, so container processes whose parents exit become its
//! children.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use crate::reaper::{Reaper, ReaperError};
use crate::rpc::{self, RpcError, ServeArgs, ServeConfig};
use crate::sandbox::setup::Target;
use crate::sys::SignalFd;
use tracing::info;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("Cannot set up the SIGCHLD signalfd")]
    Signals(#[source] io::Error),
    #[error("Cannot read a signal")]
    ReadSignal(#[source] io::Error),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Reaper(#[from] ReaperError),
}

/// Serves until the process is killed.
pub fn run(args: ServeArgs) -> Result<Infallible, HostError> {
    // Blocked before any thread starts, so every thread inherits the mask
    // and SIGCHLD reaches only the signalfd.
    let signals = SignalFd::new(&[libc::SIGCHLD]).map_err(HostError::Signals)?;
    let reaper = Arc::new(Reaper::new());
    let server = rpc::serve(ServeConfig {
        listen: args.listen,
        stdio: args.stdio,
        forward: args.forward,
        target: Target::Host(args.root.join("sandbox")),
        root: args.root,
        reaper: reaper.clone(),
        power_off: None,
    })?;
    info!(
        "Serving {} on {}, stdio on {}, port-forward on {}",
        husk_protocol::API_VERSION,
        server.addr(),
        server.stdio_addr(),
        server.forward_addr()
    );
    loop {
        signals.read_signal().map_err(HostError::ReadSignal)?;
        if let Err(e) = reaper.reap_orphans() {
            tracing::warn!("{}", husk_errors::chain(&e));
        }
    }
}
