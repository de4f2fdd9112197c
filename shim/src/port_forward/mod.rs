//! `kubectl port-forward` to a husk pod.
//!
//! containerd's CRI plugin forwards a port by entering the pod's network namespace on
//! the host and dialling 127.0.0.1:PORT there (then [::1]:PORT). Under runc the
//! container listens in that namespace; under husk it listens in the guest, and nothing
//! on the host would answer (Kata fails here: kata-containers issue 10843). So for a CRI
//! pod the shim listens on one port of 127.0.0.1 in the pod's namespace and steers every
//! TCP connection to 127.0.0.1 there to it, whatever its port ([`steer`]: a BPF
//! sk_lookup program, attached for as long as the shim lives). For each connection it
//! reads the port the client dialled (the accepted socket's local address), opens the
//! agent's port-forward port through husk-vmm's hybrid vsock, and the agent dials that
//! port on the guest's loopback ([`husk_protocol::port_forward`]); the two connections
//! are then joined both ways.
//!
//! Where the guest refuses (nothing listens on the port), the host connection is reset,
//! so containerd's copy fails and kubectl reports an error for that connection, as it
//! does when the dial itself fails under runc.

pub mod steer;

use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::{hybrid_vsock, port_forward, PORT_FORWARD_VSOCK_PORT};
use tracing::{debug, info, warn};

use crate::network::{self, NetError};

/// Errors of setting up the forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ForwardSetupError {
    #[error("Cannot open the network namespace {netns}")]
    OpenNetns {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot listen on 127.0.0.1 in the network namespace {netns}")]
    Listen {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetError),
    #[error("Cannot steer 127.0.0.1 connections in {netns} to the shim")]
    Steer {
        netns: PathBuf,
        #[source]
        source: steer::SteerError,
    },
    #[error("Cannot start the port-forward thread")]
    Thread(#[source] io::Error),
}

/// The forwarding of one pod: stops (and detaches the steering) when dropped.
#[derive(Debug)]
pub struct PortForwarder {
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    _steering: steer::Steering,
}

impl PortForwarder {
    /// Starts forwarding connections to 127.0.0.1 in `netns` to the guest behind the
    /// VMM's hybrid vsock socket `vsock`; each handshake step may take `timeout`.
    pub fn start(
        netns: &Path,
        vsock: PathBuf,
        timeout: Duration,
    ) -> Result<Self, ForwardSetupError> {
        let ns_file = File::open(netns).map_err(|source| ForwardSetupError::OpenNetns {
            netns: netns.to_owned(),
            source,
        })?;
        let listener = network::on_thread_in(netns, || Ok(TcpListener::bind(("127.0.0.1", 0))))?
            .map_err(|source| ForwardSetupError::Listen {
                netns: netns.to_owned(),
                source,
            })?;
        let steering =
            steer::steer(&ns_file, &listener).map_err(|source| ForwardSetupError::Steer {
                netns: netns.to_owned(),
                source,
            })?;
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let (l, st) = (Arc::clone(&listener), Arc::clone(&stopping));
        std::thread::Builder::new()
            .name("port-forward".into())
            .spawn(move || accept_loop(&l, &st, &vsock, timeout))
            .map_err(ForwardSetupError::Thread)?;
        info!(
            "port-forward: connections to 127.0.0.1 in {} go to the guest (relay on port {})",
            netns.display(),
            listener.local_addr().map(|a| a.port()).unwrap_or_default()
        );
        Ok(Self {
            listener,
            stopping,
            _steering: steering,
        })
    }
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop: accept() on a shut-down listener fails at once.
        // SAFETY: shutdown(2) on a socket fd this struct keeps open.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

fn accept_loop(listener: &TcpListener, stopping: &AtomicBool, vsock: &Path, timeout: Duration) {
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                let vsock = vsock.to_owned();
                let spawned = std::thread::Builder::new()
                    .name("forward".into())
                    .spawn(move || forward(conn, &vsock, timeout));
                if let Err(e) = spawned {
                    warn!("port-forward: cannot start a thread: {e}");
                }
            }
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                warn!("port-forward: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Why one forwarded connection failed.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("Cannot read the port the client dialled")]
    LocalAddr(#[source] io::Error),
    #[error(transparent)]
    Connect(#[from] hybrid_vsock::ConnectError),
    #[error(transparent)]
    Guest(#[from] port_forward::ForwardError),
}

/// Joins one connection to the guest's port, or resets it.
fn forward(conn: TcpStream, vsock: &Path, timeout: Duration) {
    let guest = conn
        .local_addr()
        .map_err(ForwardError::LocalAddr)
        .and_then(|addr| {
            let port = u32::from(addr.port());
            let stream = hybrid_vsock::connect(vsock, PORT_FORWARD_VSOCK_PORT, timeout)?;
            Ok((port, port_forward::open(stream, port, timeout)?))
        });
    match guest {
        Ok((port, guest)) => match port_forward::relay(conn, guest) {
            Ok(done) => debug!(
                "port-forward to port {port} ended: {} bytes in, {} out{}",
                done.a_to_b,
                done.b_to_a,
                done.error.map(|e| format!(" ({e})")).unwrap_or_default()
            ),
            Err(e) => warn!("port-forward to port {port}: {e}"),
        },
        Err(e) => {
            info!("port-forward: {}", husk_errors::chain(&e));
            reset(conn);
        }
    }
}

/// Closes `conn` with a reset (SO_LINGER 0), so the client sees an error rather than
/// an empty, orderly stream.
fn reset(conn: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a pointer to a linger struct that lives across the call
    // and its exact size.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(conn);
}

#[cfg(test)]
mod tests;
