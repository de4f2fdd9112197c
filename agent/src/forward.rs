//! Forwarded TCP connections on the port-forward port (`kubectl port-forward`; the
//! handshake is in the .proto's header and [`husk_protocol::port_forward`]).
//!
//! containerd forwards a port of a runc pod by dialling 127.0.0.1:PORT in the pod's
//! network namespace on the host. A husk pod's network namespace is the guest's, so the
//! shim takes those connections on the host and opens one connection here per forwarded
//! connection; the agent dials the port on the guest's loopback the way containerd
//! would (127.0.0.1, then ::1) and joins the two.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use husk_protocol::agent::{PortForwardRequest, PortForwardResponse};
use husk_protocol::frame;
use husk_protocol::port_forward::{self, Endpoint};
use husk_protocol::protobuf::Message;

use crate::listen::StreamListener;
use crate::sys;
use tracing::{debug, warn};

/// How long a new connection may take to send its request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one connect to the forwarded port may take (a local port answers at once
/// or refuses; this bounds a port whose listen backlog is full).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves forwards on `listener` on a thread of its own, each connection on its own
/// thread for as long as it lasts.
pub fn spawn(listener: StreamListener) -> io::Result<()> {
    std::thread::Builder::new()
        .name("forward-accept".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok(conn) => {
                    let spawned = std::thread::Builder::new()
                        .name("forward".into())
                        .spawn(move || handle_connection(conn));
                    if let Err(e) = spawned {
                        warn!("Cannot start a port-forward thread: {e}");
                    }
                }
                Err(e) => {
                    warn!("Cannot accept a port-forward connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map(|_| ())
}

/// The shim's side of a forwarded connection (a vsock or Unix stream).
struct Channel(File);

impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Endpoint for Channel {
    fn duplicate(&self) -> io::Result<Self> {
        self.0.try_clone().map(Channel)
    }
    fn shut(&self, how: Shutdown) -> io::Result<()> {
        sys::shutdown(&self.0, how)
    }
}

/// Why the port could not be reached: the message for the shim and the last errno.
#[derive(Debug, PartialEq, Eq)]
pub struct DialError {
    pub message: String,
    pub errno: i32,
}

/// Validates the requested port.
pub fn requested_port(req: &PortForwardRequest) -> Result<u16, DialError> {
    match u16::try_from(req.port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(DialError {
            message: format!("{} is no TCP port", req.port),
            errno: libc::EINVAL,
        }),
    }
}

/// Connects to `port` on 127.0.0.1, then on ::1 (a server may listen on one family
/// only), as containerd does for a runc pod.
pub fn dial(port: u16) -> Result<TcpStream, DialError> {
    let mut failures = Vec::new();
    let mut errno = 0;
    for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
        let addr = SocketAddr::new(ip, port);
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => {
                errno = e.raw_os_error().unwrap_or(libc::EIO);
                failures.push(format!("{addr}: {e}"));
            }
        }
    }
    Err(DialError {
        message: format!("cannot connect to {}", failures.join(", ")),
        errno,
    })
}

fn handle_connection(mut conn: File) {
    let _ = sys::set_recv_timeout(&conn, Some(HANDSHAKE_TIMEOUT));
    let target = frame::read_frame(&mut conn)
        .map_err(|e| DialError {
            message: e.to_string(),
            errno: libc::EPROTO,
        })
        .and_then(|bytes| {
            PortForwardRequest::parse_from_bytes(&bytes).map_err(|e| DialError {
                message: format!("Malformed PortForwardRequest: {e}"),
                errno: libc::EPROTO,
            })
        })
        .and_then(|req| requested_port(&req))
        .and_then(|port| {
            debug!("Port-forward to port {port}");
            dial(port)
        });
    let mut response = PortForwardResponse::new();
    if let Err(e) = &target {
        debug!("Refusing a port-forward: {}", e.message);
        response.error = e.message.clone();
        response.errno = e.errno;
    }
    let bytes = response.write_to_bytes().unwrap_or_default();
    let written = frame::write_frame(&mut conn, &bytes);
    let _ = sys::set_recv_timeout(&conn, None);
    let tcp = match (target, written) {
        (Ok(tcp), Ok(())) => tcp,
        (_, written) => {
            if let Err(e) = written {
                debug!("Cannot answer a port-forward request: {e}");
            }
            let _ = sys::shutdown(&conn, Shutdown::Both);
            return;
        }
    };
    match port_forward::relay(Channel(conn), tcp) {
        Ok(done) => debug!(
            "Port-forward ended: {} bytes in, {} out{}",
            done.a_to_b,
            done.b_to_a,
            done.error.map(|e| format!(" ({e})")).unwrap_or_default()
        ),
        Err(e) => warn!("Cannot relay a port-forward: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn port_zero_and_out_of_range_are_refused() {
        for bad in [0, 65_536, u32::MAX] {
            let mut r = PortForwardRequest::new();
            r.port = bad;
            assert_eq!(requested_port(&r).unwrap_err().errno, libc::EINVAL);
        }
        let mut r = PortForwardRequest::new();
        r.port = 80;
        assert_eq!(requested_port(&r), Ok(80));
    }

    #[test]
    fn dial_names_both_refused_addresses() {
        // A port that was just free: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = dial(port).unwrap_err();
        assert!(
            e.message.contains(&format!("127.0.0.1:{port}")),
            "{}",
            e.message
        );
        assert!(
            e.message.contains(&format!("[::1]:{port}")),
            "{}",
            e.message
        );
        assert_ne!(e.errno, 0);
    }

    /// The whole connection: handshake through the shim's client, a server on loopback
    /// echoing upper-cased bytes, a half-close passed on.
    #[test]
    fn a_forwarded_connection_reaches_a_loopback_server() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(&got.to_ascii_uppercase()).unwrap();
        });
        let (shim, agent) = UnixStream::pair().unwrap();
        std::thread::spawn(move || handle_connection(File::from(OwnedFd::from(agent))));
        let mut s = port_forward::open(shim, u32::from(port), Duration::from_secs(10)).unwrap();
        s.write_all(b"hello pod").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        s.read_to_string(&mut back).unwrap();
        assert_eq!(back, "HELLO POD");
    }

    #[test]
    fn a_refused_port_comes_back_with_its_errno() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (shim, agent) = UnixStream::pair().unwrap();
        std::thread::spawn(move || handle_connection(File::from(OwnedFd::from(agent))));
        match port_forward::open(shim, u32::from(port), Duration::from_secs(10)) {
            Err(port_forward::ForwardError::Refused { errno, reason, .. }) => {
                assert!(reason.contains("127.0.0.1"), "{reason}");
                assert!(errno.is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
