//! The host side of husk-vmm's hybrid vsock (Firecracker's design): connect to the VMM's
//! Unix socket, write `CONNECT <port>\n`, read `OK <hostport>\n`; from then on the stream
//! is the guest's. The VMM closes the connection when nothing listens on the guest port.
//! One attempt per call: a caller that waits for a guest to come up retries.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::deadline::{write_all_by, ReadBy};

/// The longest `OK <hostport>` line accepted (the VMM's reply is under 20 bytes).
pub const MAX_REPLY_LINE: usize = 64;

/// Why a connection to a guest port could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Cannot reach husk-vmm's vsock socket {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Guest port {port} refused the connection (nobody listens there yet)")]
    Refused { port: u32 },
    #[error("Unexpected reply to CONNECT {port}: {reply:?}")]
    BadReply { port: u32, reply: String },
    #[error("I/O on the vsock connection to guest port {port}")]
    Io {
        port: u32,
        #[source]
        source: io::Error,
    },
}

/// Opens a stream to guest `port` through the VMM's socket `uds`; the handshake may take
/// at most `timeout` in all (the VMM answers once the guest accepted, so the guest sets
/// the pace). The returned stream has no timeouts.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, ConnectError> {
    let s = UnixStream::connect(uds).map_err(|source| ConnectError::Socket {
        path: uds.to_owned(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    let io = |source| ConnectError::Io { port, source };
    write_all_by(&s, format!("CONNECT {port}\n").as_bytes(), deadline).map_err(io)?;
    read_reply_line(
        &mut ReadBy {
            stream: &s,
            deadline,
        },
        port,
    )?;
    s.set_read_timeout(None).map_err(io)?;
    s.set_write_timeout(None).map_err(io)?;
    Ok(s)
}

/// Reads the reply line byte by byte (whatever follows the newline is the guest's) and
/// returns the host port it names.
fn read_reply_line(s: &mut impl Read, port: u32) -> Result<u32, ConnectError> {
    let mut line = ReplyLine::default();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Err(ConnectError::Refused { port }),
            Ok(_) => match line.push(b[0]) {
                ReplyStep::More => {}
                ReplyStep::Accepted(host_port) => return Ok(host_port),
                ReplyStep::Bad(reply) => return Err(ConnectError::BadReply { port, reply }),
            },
            // A reset instead of a close also means nobody accepted.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ConnectError::Refused { port })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ConnectError::Io { port, source }),
        }
    }
}

/// What one more byte of the VMM's reply gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStep {
    /// Not done yet: read another byte.
    More,
    /// `OK <hostport>`: from the next byte on the stream is the guest's.
    Accepted(u32),
    /// Anything else, or a line over [`MAX_REPLY_LINE`] bytes (lossily decoded, for the
    /// error message).
    Bad(String),
}

/// The VMM's reply line, fed one byte at a time. The VMM is not trusted: it holds at most
/// [`MAX_REPLY_LINE`] bytes before the newline.
#[derive(Debug, Default)]
pub struct ReplyLine {
    line: Vec<u8>,
}

impl ReplyLine {
    /// Takes the next byte. After anything but [`ReplyStep::More`] the line is done with.
    pub fn push(&mut self, byte: u8) -> ReplyStep {
        if byte == b'\n' {
            return match parse_ok_reply(&self.line) {
                Some(host_port) => ReplyStep::Accepted(host_port),
                None => ReplyStep::Bad(String::from_utf8_lossy(&self.line).into_owned()),
            };
        }
        self.line.push(byte);
        if self.line.len() > MAX_REPLY_LINE {
            return ReplyStep::Bad(String::from_utf8_lossy(&self.line).into_owned());
        }
        ReplyStep::More
    }
}

/// Parses `OK <hostport>` (the newline already stripped): decimal digits only, the port a
/// u32.
pub fn parse_ok_reply(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"OK ")?;
    if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    use super::*;

    fn tmp_sock(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("husk-hvsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A fake husk-vmm: reads the CONNECT line, answers `reply` (or closes).
    fn fake_vmm(path: &Path, reply: Option<&'static [u8]>) -> std::thread::JoinHandle<String> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            if let Some(r) = reply {
                s.write_all(r).unwrap();
            }
            String::from_utf8(line).unwrap()
        })
    }

    #[test]
    fn speaks_the_handshake_and_leaves_the_guest_bytes() {
        let p = tmp_sock("ok");
        let t = fake_vmm(&p, Some(b"OK 1073741824\nguest-bytes"));
        let mut s = connect(&p, 1024, Duration::from_secs(5)).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "guest-bytes");
        assert_eq!(t.join().unwrap(), "CONNECT 1024");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn refusal_garbage_and_overlong_replies_are_errors() {
        for (name, reply) in [
            ("refused", None),
            ("garbage", Some(&b"NO\n"[..])),
            ("long", Some(&[b'O'; 200][..])),
        ] {
            let p = tmp_sock(name);
            let t = fake_vmm(&p, reply);
            let e = connect(&p, 1025, Duration::from_secs(5)).unwrap_err();
            match name {
                "refused" => assert!(matches!(e, ConnectError::Refused { port: 1025 }), "{e}"),
                _ => assert!(
                    matches!(e, ConnectError::BadReply { port: 1025, .. }),
                    "{e}"
                ),
            }
            t.join().unwrap();
            std::fs::remove_file(&p).unwrap();
        }
    }

    fn feed(bytes: &[u8]) -> Vec<ReplyStep> {
        let mut l = ReplyLine::default();
        bytes.iter().map(|&b| l.push(b)).collect()
    }

    #[test]
    fn reply_line_ends_at_the_newline_or_its_limit() {
        let steps = feed(b"OK 1073741824\n");
        assert_eq!(steps.last(), Some(&ReplyStep::Accepted(1 << 30)));
        assert!(steps[..steps.len() - 1]
            .iter()
            .all(|s| *s == ReplyStep::More));
        let mut longest = b"OK ".to_vec();
        longest.resize(MAX_REPLY_LINE - 1, b'0');
        longest.extend_from_slice(b"9\n");
        assert_eq!(feed(&longest).last(), Some(&ReplyStep::Accepted(9)));
        longest.insert(3, b'0');
        let steps = feed(&longest);
        assert!(
            matches!(&steps[MAX_REPLY_LINE], ReplyStep::Bad(r) if r.len() == MAX_REPLY_LINE + 1)
        );
        assert_eq!(
            feed(b"NO\xff\n").last(),
            Some(&ReplyStep::Bad("NO\u{fffd}".into()))
        );
    }

    #[test]
    fn reply_port_is_plain_decimal_u32() {
        assert_eq!(parse_ok_reply(b"OK 4294967295"), Some(u32::MAX));
        for bad in [
            &b"OK 4294967296"[..],
            b"OK ",
            b"OK",
            b"OK +1",
            b"OK 1 2",
            b"ok 1",
            b"OK 1\r",
        ] {
            assert_eq!(parse_ok_reply(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_missing_socket_names_its_path_and_keeps_the_errno() {
        let p = tmp_sock("missing");
        let e = connect(&p, 1024, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        let src = std::error::Error::source(&e).expect("a cause");
        assert!(src.to_string().contains("No such file"), "{src}");
    }

    #[test]
    fn a_silent_vmm_times_out() {
        let p = tmp_sock("silent");
        let l = UnixListener::bind(&p).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(500));
            drop(s);
        });
        let e = connect(&p, 1024, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, ConnectError::Io { port: 1024, .. }), "{e}");
        t.join().unwrap();
        std::fs::remove_file(&p).unwrap();
    }
}
