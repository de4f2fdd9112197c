//! The port-forward port (vsock 1026 in the guest; see the .proto's header): the shim's
//! side of its handshake ([`open`]), and [`relay`], which both ends use to join the
//! forwarded connection to the local one afterwards.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use protobuf::Message;

use crate::agent::{PortForwardRequest, PortForwardResponse};
use crate::deadline::guest_text;
use crate::frame::{self, FrameError};

/// Why a forwarded connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("Port-forward handshake frame")]
    Frame(#[from] FrameError),
    #[error("Cannot clear the handshake timeouts")]
    Timeout(#[source] io::Error),
    #[error("Cannot encode the PortForwardRequest")]
    Encode(#[source] protobuf::Error),
    #[error("Malformed PortForwardResponse")]
    Decode(#[source] protobuf::Error),
    #[error("Port {port} in the pod: {reason}")]
    Refused {
        port: u32,
        reason: String,
        /// The errno of the guest's failed connect, if it sent one.
        errno: Option<i32>,
    },
}

/// Asks the agent on `stream` (a fresh connection to the port-forward port) to connect
/// to TCP `port` on the guest's loopback. The handshake may take `timeout` in all; the
/// returned stream, carrying that connection's bytes, has no timeouts.
pub fn open(stream: UnixStream, port: u32, timeout: Duration) -> Result<UnixStream, ForwardError> {
    let mut req = PortForwardRequest::new();
    req.port = port;
    let body = req.write_to_bytes().map_err(ForwardError::Encode)?;
    let reply = frame::exchange(&stream, &body, timeout)?;
    let resp = PortForwardResponse::parse_from_bytes(&reply).map_err(ForwardError::Decode)?;
    if !resp.error.is_empty() {
        return Err(ForwardError::Refused {
            port,
            reason: guest_text(&resp.error, frame::MAX_FRAME),
            errno: (resp.errno != 0).then_some(resp.errno),
        });
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(ForwardError::Timeout)?;
    Ok(stream)
}

/// One end of a relayed connection: a stream socket that can be duplicated (one handle
/// reads while the other writes) and half-closed.
pub trait Endpoint: Read + Write + Send + Sized + 'static {
    fn duplicate(&self) -> io::Result<Self>;
    fn shut(&self, how: Shutdown) -> io::Result<()>;
}

impl Endpoint for UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shut(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

impl Endpoint for TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shut(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

/// How a relay ended: the bytes each way, and the first error of either direction.
#[derive(Debug, Default)]
pub struct Relayed {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub error: Option<io::Error>,
}

/// Copies `from` into `to` until `from` ends, then half-closes `to` (the peer sees the
/// end of stream while the other direction goes on). On an error both ends are shut
/// down completely, so the other direction ends too instead of waiting forever.
fn pump<F: Endpoint, T: Endpoint>(mut from: F, mut to: T) -> (u64, Option<io::Error>) {
    let mut copied = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let error = loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(e),
        };
        if let Err(e) = to.write_all(&buf[..n]) {
            break Some(e);
        }
        copied += n as u64;
    };
    match &error {
        None => {
            let _ = to.shut(Shutdown::Write);
        }
        Some(_) => {
            let _ = to.shut(Shutdown::Both);
            let _ = from.shut(Shutdown::Both);
        }
    }
    (copied, error)
}

/// Joins `a` and `b` both ways until both directions have ended; runs the `b -> a`
/// direction on a thread of its own and returns when both are done.
pub fn relay<A: Endpoint, B: Endpoint>(a: A, b: B) -> io::Result<Relayed> {
    let (a_read, b_read) = (a.duplicate()?, b.duplicate()?);
    let back = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || pump(b_read, a))?;
    let (a_to_b, first) = pump(a_read, b);
    let (b_to_a, second) = back
        .join()
        .unwrap_or_else(|_| (0, Some(io::Error::other("relay thread panicked"))));
    Ok(Relayed {
        a_to_b,
        b_to_a,
        error: first.or(second),
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn against(answer: Vec<u8>) -> (Result<UnixStream, ForwardError>, Option<PortForwardRequest>) {
        against_then(answer, b"payload")
    }

    /// Runs `open` against a peer that reads the request, answers `answer`, then writes
    /// `then` (the first bytes of the forwarded stream) and closes.
    fn against_then(
        answer: Vec<u8>,
        then: &'static [u8],
    ) -> (Result<UnixStream, ForwardError>, Option<PortForwardRequest>) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let req = frame::read_frame(&mut b)
                .ok()
                .and_then(|f| PortForwardRequest::parse_from_bytes(&f).ok());
            b.write_all(&answer).unwrap();
            let _ = b.write_all(then);
            req
        });
        let r = open(a, 8080, Duration::from_secs(5));
        (r, t.join().unwrap())
    }

    fn response(error: &str, errno: i32) -> Vec<u8> {
        let mut r = PortForwardResponse::new();
        r.error = error.into();
        r.errno = errno;
        frame::encode_frame(&r.write_to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn an_accepted_forward_carries_the_bytes_after_the_answer() {
        let (r, req) = against(response("", 0));
        assert_eq!(req.unwrap().port, 8080);
        let mut s = r.unwrap();
        let mut got = [0u8; 7];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"payload");
    }

    #[test]
    fn a_refusal_keeps_the_reason_and_errno() {
        let (r, _) = against(response("connect 127.0.0.1:8080: Connection refused", 111));
        match r {
            Err(ForwardError::Refused {
                port: 8080,
                reason,
                errno: Some(111),
            }) => assert!(reason.contains("refused")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_truncated_or_oversized_answer_is_an_error() {
        let (r, _) = against_then(vec![0, 0], b"");
        assert!(matches!(r, Err(ForwardError::Frame(FrameError::Truncated))));
        let (r, _) = against(u32::MAX.to_be_bytes().to_vec());
        assert!(matches!(
            r,
            Err(ForwardError::Frame(FrameError::TooLong(_)))
        ));
        let (r, _) = against(frame::encode_frame(&[0xff, 0xff, 0xff]).unwrap());
        assert!(matches!(r, Err(ForwardError::Decode(_))));
    }

    /// A TCP client <-> relay <-> Unix peer: both directions arrive whole, each end of
    /// stream is passed on as a half-close while the other direction still flows.
    #[test]
    fn relay_copies_both_ways_and_passes_half_closes_on() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (unix_near, mut unix_far) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            relay(tcp, unix_near).unwrap()
        });
        let mut client = TcpStream::connect(addr).unwrap();
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let far = std::thread::spawn(move || {
            let mut got = Vec::new();
            unix_far.read_to_end(&mut got).unwrap();
            // The client's half-close arrived; this direction still works.
            unix_far.write_all(b"answer after your end").unwrap();
            unix_far.shutdown(Shutdown::Write).unwrap();
            got
        });
        client.write_all(&up).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"answer after your end");
        assert_eq!(far.join().unwrap(), up);
        let done = relay.join().unwrap();
        assert_eq!((done.a_to_b, done.b_to_a), (300_000, 21));
        assert!(done.error.is_none(), "{:?}", done.error);
    }
}
