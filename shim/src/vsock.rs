//! The host side of husk-vmm's hybrid vsock: `CONNECT <port>\n` → `OK <hostport>\n` on
//! the VMM's Unix socket, and the stdio-port handshake (`StdioAttach` framed as a 4-byte
//! big-endian length and the protobuf bytes, answered the same way).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use husk_protocol::agent::{StdioAttach, StdioAttachResponse, StdioStream};
use husk_protocol::protobuf::Message;

/// The largest handshake message accepted from the guest (the agent is untrusted input).
const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("Cannot reach husk-vmm's vsock socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Guest port {port} refused the connection (nobody listens there yet)")]
    Refused { port: u32 },
    #[error("Unexpected reply to CONNECT {port}: {reply:?}")]
    BadReply { port: u32, reply: String },
    #[error("I/O on the vsock connection")]
    Io(#[from] std::io::Error),
    #[error("Bad stdio handshake frame: {0}")]
    Frame(String),
    #[error("The agent refused the {stream:?} stream of {container}/{exec}: {reason}")]
    AttachRefused {
        container: String,
        exec: String,
        stream: StdioStream,
        reason: String,
    },
}

/// Opens a stream to guest `port`. One attempt: a refusal is [`VsockError::Refused`].
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let s = UnixStream::connect(uds).map_err(|source| VsockError::Connect {
        path: uds.display().to_string(),
        source,
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    (&s).write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte: whatever follows the newline already belongs to the guest.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if (&s).read(&mut b)? == 0 {
            return Err(VsockError::Refused { port });
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 64 {
            return Err(VsockError::BadReply {
                port,
                reply: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }
    let reply = String::from_utf8_lossy(&line);
    if !reply.starts_with("OK ") {
        return Err(VsockError::BadReply {
            port,
            reply: reply.into_owned(),
        });
    }
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}

/// Frames a handshake message: 4-byte big-endian length, then the bytes.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body.len());
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Reads one frame, refusing lengths over [`MAX_FRAME`].
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, VsockError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(VsockError::Frame(format!(
            "length {len} is over the {MAX_FRAME}-byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Attaches one standard stream of a process (`exec` empty for the init process): from
/// then on `stream` carries that stream's raw bytes.
pub fn stdio_attach(
    mut stream: UnixStream,
    container: &str,
    exec: &str,
    which: StdioStream,
    timeout: Duration,
) -> Result<UnixStream, VsockError> {
    let mut req = StdioAttach::new();
    req.container_id = container.to_owned();
    req.exec_id = exec.to_owned();
    req.stream = which.into();
    let body = req
        .write_to_bytes()
        .map_err(|e| VsockError::Frame(e.to_string()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(&frame(&body))?;
    let reply = read_frame(&mut stream)?;
    let resp = StdioAttachResponse::parse_from_bytes(&reply)
        .map_err(|e| VsockError::Frame(e.to_string()))?;
    if !resp.error.is_empty() {
        return Err(VsockError::AttachRefused {
            container: container.to_owned(),
            exec: exec.to_owned(),
            stream: which,
            reason: resp.error,
        });
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn tmp_sock(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("husk-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A fake husk-vmm: answers CONNECT with `reply` (or closes), then runs `then`.
    fn fake_vmm(
        path: &Path,
        reply: Option<&'static str>,
        then: impl FnOnce(UnixStream) + Send + 'static,
    ) -> std::thread::JoinHandle<String> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            match reply {
                Some(r) => {
                    s.write_all(r.as_bytes()).unwrap();
                    then(s);
                }
                None => drop(s),
            }
            String::from_utf8(line).unwrap()
        })
    }

    #[test]
    fn connect_speaks_the_hybrid_handshake() {
        let p = tmp_sock("ok");
        let t = fake_vmm(&p, Some("OK 1073741824\nguest-bytes"), |_| {});
        let mut s = connect(&p, 1024, Duration::from_secs(5)).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(
            rest, "guest-bytes",
            "bytes after the OK line belong to the guest"
        );
        assert_eq!(t.join().unwrap(), "CONNECT 1024");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn refusal_and_garbage_are_errors() {
        let p = tmp_sock("refused");
        let t = fake_vmm(&p, None, |_| {});
        assert!(matches!(
            connect(&p, 1025, Duration::from_secs(5)),
            Err(VsockError::Refused { port: 1025 })
        ));
        t.join().unwrap();
        std::fs::remove_file(&p).unwrap();
        let p = tmp_sock("garbage");
        let t = fake_vmm(&p, Some("NO\n"), |_| {});
        assert!(matches!(
            connect(&p, 1024, Duration::from_secs(5)),
            Err(VsockError::BadReply { .. })
        ));
        t.join().unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(
            connect(&p, 1024, Duration::from_secs(1)),
            Err(VsockError::Connect { .. })
        ));
    }

    #[test]
    fn frames_round_trip_and_oversize_is_refused() {
        let f = frame(b"abc");
        assert_eq!(f, [0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(read_frame(&mut &f[..]).unwrap(), b"abc");
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(VsockError::Frame(_))
        ));
        assert!(read_frame(&mut &[0u8, 0, 0, 9, 1][..]).is_err());
    }

    fn attach_against(answer: StdioAttachResponse) -> Result<(UnixStream, StdioAttach), String> {
        let (a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let req = StdioAttach::parse_from_bytes(&read_frame(&mut b).unwrap()).unwrap();
            b.write_all(&frame(&answer.write_to_bytes().unwrap()))
                .unwrap();
            // After a refusal the shim side may be gone already.
            let _ = b.write_all(b"out");
            req
        });
        let r = stdio_attach(
            a,
            "c1",
            "e1",
            StdioStream::STDIO_STREAM_STDOUT,
            Duration::from_secs(5),
        );
        let req = t.join().unwrap();
        r.map(|s| (s, req)).map_err(|e| e.to_string())
    }

    #[test]
    fn stdio_attach_sends_the_request_and_checks_the_answer() {
        let (mut s, req) = attach_against(StdioAttachResponse::new()).unwrap();
        assert_eq!(req.container_id, "c1");
        assert_eq!(req.exec_id, "e1");
        assert_eq!(
            req.stream.enum_value(),
            Ok(StdioStream::STDIO_STREAM_STDOUT)
        );
        let mut out = [0u8; 3];
        s.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"out");

        let mut refused = StdioAttachResponse::new();
        refused.error = "no such process".into();
        let e = attach_against(refused).unwrap_err();
        assert!(e.contains("no such process"), "{e}");
    }
}
