//! The CRI streaming protocol, client side: what `kubectl exec -it` and `kubectl
//! attach` speak to a runtime's streaming server at the URL an Exec or Attach call
//! returns. WebSocket (RFC 6455) with the `v4.channel.k8s.io` subprotocol: each binary
//! message starts with its channel, 0 stdin, 1 stdout, 2 stderr, 3 the final status (a
//! JSON `metav1.Status`), 4 terminal resize (`{"Width":W,"Height":H}`).
//!
//! Port-forward (`kubectl port-forward`) speaks the same framing with two channels per
//! port: 0 data both ways, 1 the server's errors; each starts with the port number.
//!
//! Only what a test needs: one session that sends a resize and stdin (or, forwarding,
//! the bytes for the port), then collects the output until the server closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("Streaming URL {0:?} is not http://HOST:PORT/PATH")]
    Url(String),
    #[error("Streaming connection to {url}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Streaming server at {url} refused the WebSocket upgrade: {status}")]
    Upgrade { url: String, status: String },
    #[error("Streaming server at {url} sent a malformed frame: {why}")]
    Frame { url: String, why: &'static str },
}

/// What a session produced.
#[derive(Debug, Default)]
pub struct Session {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The status message of channel 3 (JSON), if the server sent one.
    pub status: String,
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

/// An upgraded streaming connection.
struct Conn {
    url: String,
    w: TcpStream,
    r: BufReader<TcpStream>,
    /// A fragmented message being put together.
    partial: Vec<u8>,
}

impl Conn {
    /// Connects to `url` and upgrades to a WebSocket with `v4.channel.k8s.io`; reads
    /// wait at most `timeout`.
    fn open(url: &str, timeout: Duration) -> Result<Self, StreamError> {
        let io = |source| StreamError::Io {
            url: url.to_owned(),
            source,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| StreamError::Url(url.to_owned()))?;
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| StreamError::Url(url.to_owned()))?;
        let mut s = TcpStream::connect(host).map_err(io)?;
        s.set_read_timeout(Some(timeout)).map_err(io)?;
        // The key only has to be 16 bytes, base64; the server's answer is not checked
        // beyond its status line.
        // One write: `write!` on the socket would send each piece of the format separately.
        let request = format!(
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: aHVzay1jcmktc3RyZWFtIQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
        );
        s.write_all(request.as_bytes()).map_err(io)?;
        let mut r = BufReader::new(s.try_clone().map_err(io)?);
        let mut status = String::new();
        r.read_line(&mut status).map_err(io)?;
        if !status.starts_with("HTTP/1.1 101") {
            return Err(StreamError::Upgrade {
                url: url.to_owned(),
                status: status.trim().to_owned(),
            });
        }
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(io)? == 0 || line == "\r\n" {
                break;
            }
        }
        Ok(Self {
            url: url.to_owned(),
            w: s,
            r,
            partial: Vec::new(),
        })
    }

    fn io(&self, source: std::io::Error) -> StreamError {
        StreamError::Io {
            url: self.url.clone(),
            source,
        }
    }

    /// One binary message on `channel`.
    fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), StreamError> {
        send(&mut self.w, channel, data).map_err(|e| self.io(e))
    }

    /// The next whole message as (channel, data), answering pings on the way; `None`
    /// once the server closes.
    fn next_message(&mut self) -> Result<Option<(u8, Vec<u8>)>, StreamError> {
        let frame = |url: &str, why| StreamError::Frame {
            url: url.to_owned(),
            why,
        };
        loop {
            let mut head = [0u8; 2];
            match self.r.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(self.io(e)),
            }
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            if head[1] & 0x80 != 0 {
                return Err(frame(&self.url, "a server frame is masked"));
            }
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.r.read_exact(&mut b).map_err(|e| self.io(e))?;
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.r.read_exact(&mut b).map_err(|e| self.io(e))?;
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            if len > 16 << 20 {
                return Err(frame(&self.url, "a frame is over 16 MiB"));
            }
            let mut payload = vec![0u8; len as usize];
            self.r.read_exact(&mut payload).map_err(|e| self.io(e))?;
            match opcode {
                // Continuation, text, binary: data.
                0..=2 => {
                    self.partial.extend_from_slice(&payload);
                    if !fin {
                        continue;
                    }
                    let m = std::mem::take(&mut self.partial);
                    if let Some((&channel, data)) = m.split_first() {
                        return Ok(Some((channel, data.to_vec())));
                    }
                }
                // Close.
                8 => return Ok(None),
                // Ping: answer it.
                9 => frame_out(&mut self.w, 0x8a, &payload).map_err(|e| self.io(e))?,
                _ => {}
            }
        }
    }
}

/// Runs one streaming session at `url`: sends a terminal size (if any), then `stdin`,
/// then reads until the server closes the connection (the process or the attach ended),
/// at most `timeout` between messages.
pub fn session(
    url: &str,
    size: Option<(u16, u16)>,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Session, StreamError> {
    let mut c = Conn::open(url, timeout)?;
    if let Some((w, h)) = size {
        let msg = format!(r#"{{"Width":{w},"Height":{h}}}"#);
        c.send(RESIZE, msg.as_bytes())?;
    }
    if !stdin.is_empty() {
        c.send(STDIN, stdin)?;
    }
    let mut out = Session::default();
    while let Some((channel, data)) = c.next_message()? {
        match channel {
            STDOUT => out.stdout.extend_from_slice(&data),
            STDERR => out.stderr.extend_from_slice(&data),
            STATUS => out.status.push_str(&String::from_utf8_lossy(&data)),
            _ => {}
        }
    }
    Ok(out)
}

/// What a port-forward session of one port produced.
#[derive(Debug, Default)]
pub struct Forwarded {
    /// The bytes the pod's port sent back (data channel 0).
    pub data: Vec<u8>,
    /// The server's error message for the port (error channel 1), empty if none.
    pub error: String,
}

/// Runs one port-forward session of a single port at `url` (a PortForward call's,
/// kubectl port-forward's WebSocket protocol): each channel first carries the port
/// number (2 bytes, little-endian), which must be `port`; then `send` goes to the pod's
/// port on data channel 0, and what comes back is read until the server closes (the
/// pod's end closed the connection), at most `timeout` between messages.
pub fn port_forward(
    url: &str,
    port: u16,
    send: &[u8],
    timeout: Duration,
) -> Result<Forwarded, StreamError> {
    const DATA: u8 = 0;
    let mut c = Conn::open(url, timeout)?;
    if !send.is_empty() {
        c.send(DATA, send)?;
    }
    let mut out = Forwarded::default();
    let mut announced = [false; 2];
    while let Some((channel, mut data)) = c.next_message()? {
        let Some(seen) = announced.get_mut(usize::from(channel)) else {
            continue;
        };
        if !*seen {
            if data.len() < 2 || u16::from_le_bytes([data[0], data[1]]) != port {
                return Err(StreamError::Frame {
                    url: url.to_owned(),
                    why: "a channel did not start with the forwarded port",
                });
            }
            *seen = true;
            data.drain(..2);
        }
        match channel {
            DATA => out.data.extend_from_slice(&data),
            // The error channel, 1.
            _ => out.error.push_str(&String::from_utf8_lossy(&data)),
        }
    }
    Ok(out)
}

/// One binary message on `channel`.
fn send(s: &mut TcpStream, channel: u8, data: &[u8]) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    frame_out(s, 0x82, &m)
}

/// A client frame: FIN and `first` (opcode), masked as RFC 6455 requires of clients.
fn frame_out(s: &mut TcpStream, first: u8, payload: &[u8]) -> std::io::Result<()> {
    let mask = [0x68u8, 0x75, 0x73, 0x6b];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that upgrades, records the client's frames, and sends `frames`.
    fn server(frames: Vec<Vec<u8>>) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/exec/tok", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut req = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                req.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            assert!(req.starts_with("GET /exec/tok HTTP/1.1"), "{req}");
            assert!(req.contains("v4.channel.k8s.io"), "{req}");
            c.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
                .unwrap();
            for f in frames {
                c.write_all(&f).unwrap();
            }
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            got
        });
        (url, h)
    }

    fn unmask(frames: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < frames.len() {
            let len = usize::from(frames[i + 1] & 0x7f);
            let mask = &frames[i + 2..i + 6];
            let p: Vec<u8> = frames[i + 6..i + 6 + len]
                .iter()
                .enumerate()
                .map(|(k, b)| b ^ mask[k % 4])
                .collect();
            out.push((frames[i], p));
            i += 6 + len;
        }
        out
    }

    #[test]
    fn a_session_sends_resize_and_stdin_and_sorts_the_channels() {
        let (url, h) = server(vec![
            vec![0x82, 1, STDOUT],             // an empty "channel ready" message
            vec![0x02, 3, STDOUT, b'h', b'i'], // stdout "hi" in two fragments
            vec![0x80, 1, b'!'],
            vec![0x82, 4, STDERR, b'e', b'r', b'r'], // stderr
            vec![0x82, 5, STATUS, b'{', b'o', b'k', b'}'],
            vec![0x88, 0],
        ]);
        let s = session(&url, Some((100, 30)), b"ls\n", Duration::from_secs(5)).unwrap();
        assert_eq!(s.stdout, b"hi!");
        assert_eq!(s.stderr, b"err");
        assert_eq!(s.status, "{ok}");
        let sent = unmask(&h.join().unwrap());
        assert_eq!(sent[0].0, 0x82);
        assert_eq!(sent[0].1, b"\x04{\"Width\":100,\"Height\":30}");
        assert_eq!(sent[1].1, b"\x00ls\n");
    }

    #[test]
    fn a_port_forward_strips_the_port_announcements_and_sorts_data_and_errors() {
        let (url, h) = server(vec![
            vec![0x82, 3, 0, 0x90, 0x1f], // data channel: port 8080, little-endian
            vec![0x82, 3, 1, 0x90, 0x1f], // error channel: port 8080
            vec![0x82, 4, 0, b'o', b'k', b'!'],
            vec![0x82, 5, 1, b'o', b'o', b'p', b's'],
            vec![0x88, 0],
        ]);
        let f = port_forward(&url, 8080, b"GET /", Duration::from_secs(5)).unwrap();
        assert_eq!(f.data, b"ok!");
        assert_eq!(f.error, "oops");
        let sent = unmask(&h.join().unwrap());
        assert_eq!(sent[0].1, b"\x00GET /");
    }

    #[test]
    fn a_port_forward_on_the_wrong_port_is_an_error() {
        let (url, h) = server(vec![vec![0x82, 3, 0, 0x50, 0x00], vec![0x88, 0]]);
        let e = port_forward(&url, 8080, b"", Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("forwarded port"), "{e}");
        drop(h);
    }

    #[test]
    fn a_refused_upgrade_and_a_bad_url_are_errors() {
        assert!(matches!(
            session("https://x/y", None, b"", Duration::from_secs(1)),
            Err(StreamError::Url(_))
        ));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/exec/x", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // The whole request first: closing on unread bytes would reset the
            // connection, and the client could see the reset instead of the 404.
            let mut req = Vec::new();
            let mut b = [0u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            c.write_all(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap();
        });
        let e = session(&url, None, b"", Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        h.join().unwrap();
    }
}
