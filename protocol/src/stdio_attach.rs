//! The client side of the stdio port's handshake: send a framed `StdioAttach`, read the
//! framed `StdioAttachResponse`; after an empty `error` the connection carries the raw
//! bytes of that one stream (see the .proto's header). The server side is the agent's.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use protobuf::Message;

use crate::agent::{StdioAttach, StdioAttachResponse, StdioStream};
use crate::deadline::guest_text;
use crate::frame::{self, FrameError};

/// Why a stream could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("Stdio handshake frame")]
    Frame(#[from] FrameError),
    #[error("Cannot clear the handshake timeouts")]
    Timeout(#[source] std::io::Error),
    #[error("Cannot encode the StdioAttach")]
    Encode(#[source] protobuf::Error),
    #[error("Malformed StdioAttachResponse")]
    Decode(#[source] protobuf::Error),
    #[error("The agent refused the {stream:?} stream of {container}/{exec}: {reason}")]
    Refused {
        container: String,
        exec: String,
        stream: StdioStream,
        reason: String,
    },
}

/// Attaches stream `which` of process `exec` of `container` (`exec` empty for the
/// container's init process) on a fresh connection to the stdio port. The handshake may
/// take at most `timeout` in all; the returned stream has no timeouts.
pub fn attach(
    stream: UnixStream,
    container: &str,
    exec: &str,
    which: StdioStream,
    timeout: Duration,
) -> Result<UnixStream, AttachError> {
    let mut req = StdioAttach::new();
    req.container_id = container.to_owned();
    req.exec_id = exec.to_owned();
    req.stream = which.into();
    let body = req.write_to_bytes().map_err(AttachError::Encode)?;
    let reply = frame::exchange(&stream, &body, timeout)?;
    let resp = StdioAttachResponse::parse_from_bytes(&reply).map_err(AttachError::Decode)?;
    if !resp.error.is_empty() {
        return Err(AttachError::Refused {
            container: container.to_owned(),
            exec: exec.to_owned(),
            stream: which,
            reason: guest_text(&resp.error, frame::MAX_FRAME),
        });
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(AttachError::Timeout)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Runs `attach` against a peer that reads the request, answers `answer` bytes, then
    /// (for a complete answer) the first stream bytes `out`, and closes.
    fn against(answer: Vec<u8>) -> (Result<UnixStream, AttachError>, Option<StdioAttach>) {
        against_then(answer, b"out")
    }

    fn against_then(
        answer: Vec<u8>,
        then: &'static [u8],
    ) -> (Result<UnixStream, AttachError>, Option<StdioAttach>) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let req = frame::read_frame(&mut b)
                .ok()
                .and_then(|f| StdioAttach::parse_from_bytes(&f).ok());
            b.write_all(&answer).unwrap();
            // After a refusal the client may be gone already.
            let _ = b.write_all(then);
            req
        });
        let r = attach(
            a,
            "c1",
            "e1",
            StdioStream::STDIO_STREAM_STDOUT,
            Duration::from_secs(5),
        );
        (r, t.join().unwrap())
    }

    fn response(error: &str) -> Vec<u8> {
        let mut r = StdioAttachResponse::new();
        r.error = error.into();
        frame::encode_frame(&r.write_to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn sends_the_request_and_hands_over_the_stream() {
        let (r, req) = against(response(""));
        let req = req.unwrap();
        assert_eq!(req.container_id, "c1");
        assert_eq!(req.exec_id, "e1");
        assert_eq!(
            req.stream.enum_value(),
            Ok(StdioStream::STDIO_STREAM_STDOUT)
        );
        let mut out = [0u8; 3];
        r.unwrap().read_exact(&mut out).unwrap();
        assert_eq!(&out, b"out");
    }

    #[test]
    fn refusals_and_hostile_answers_are_errors() {
        let e = against(response("no such process")).0.unwrap_err();
        assert!(matches!(e, AttachError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("no such process"), "{e}");
        let huge = (frame::MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
        let e = against(huge).0.unwrap_err();
        assert!(
            matches!(e, AttachError::Frame(FrameError::TooLong(_))),
            "{e}"
        );
        let e = against(vec![0, 0, 0, 2, 0xff, 0xff]).0.unwrap_err();
        assert!(matches!(e, AttachError::Decode(_)), "{e}");
        let e = against_then(vec![0, 0], b"").0.unwrap_err();
        assert!(
            matches!(e, AttachError::Frame(FrameError::Truncated)),
            "{e}"
        );
    }
}
