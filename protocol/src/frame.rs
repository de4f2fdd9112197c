//! The stdio port's handshake framing: a 4-byte big-endian length, then that many bytes
//! of protobuf (a `StdioAttach` one way, a `StdioAttachResponse` the other; see the
//! .proto's header). Both ends read frames from a peer they do not trust, so both refuse
//! a length over [`MAX_FRAME`] before allocating anything.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::deadline::{write_all_by, ReadBy};

/// Largest handshake message either side accepts: a `StdioAttach` holds two ids and an
/// enum and a `StdioAttachResponse` one error string, so anything near this is not one.
pub const MAX_FRAME: usize = 4096;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("Frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLong(usize),
    #[error("Connection ended inside a frame")]
    Truncated,
    #[error("Frame I/O failed")]
    Io(#[source] io::Error),
}

/// Reads one frame's payload, leaving whatever follows it unread.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, FrameError> {
    let eof = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    };
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(eof)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(eof)?;
    Ok(payload)
}

/// The bytes of `payload` as one frame.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLong(payload.len()));
    }
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Writes `payload` as one frame (in one write, so a peer never sees half a header).
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> Result<(), FrameError> {
    let frame = encode_frame(payload)?;
    w.write_all(&frame).map_err(FrameError::Io)?;
    w.flush().map_err(FrameError::Io)
}

/// Sends `payload` as one frame on `stream` and reads the peer's one-frame answer, the
/// whole exchange within `timeout` (not each read: a peer trickling a byte at a time is
/// cut off too). Leaves the socket's timeouts set; clear them before streaming.
pub fn exchange(
    stream: &UnixStream,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, FrameError> {
    let deadline = Instant::now() + timeout;
    write_all_by(stream, &encode_frame(payload)?, deadline).map_err(FrameError::Io)?;
    read_frame(&mut ReadBy { stream, deadline })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn round_trip_and_what_follows_is_left_unread() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        assert_eq!(&buf[..4], &[0, 0, 0, 5]);
        buf.extend_from_slice(b"raw bytes");
        let mut r = Cursor::new(buf);
        assert_eq!(read_frame(&mut r).unwrap(), b"hello");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"raw bytes");
    }

    #[test]
    fn empty_frame_is_valid() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"").unwrap();
        assert_eq!(buf, [0, 0, 0, 0]);
        assert_eq!(read_frame(&mut Cursor::new(buf)).unwrap(), b"");
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let buf = u32::MAX.to_be_bytes().to_vec();
        assert!(matches!(
            read_frame(&mut Cursor::new(buf)),
            Err(FrameError::TooLong(n)) if n == u32::MAX as usize
        ));
        let mut buf = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        buf.extend(vec![0; MAX_FRAME + 1]);
        assert!(matches!(
            read_frame(&mut Cursor::new(buf)),
            Err(FrameError::TooLong(_))
        ));
        // The limit is inclusive, and a writer cannot produce what a reader refuses.
        let at_limit = encode_frame(&[7; MAX_FRAME]).unwrap();
        assert_eq!(read_frame(&mut &at_limit[..]).unwrap().len(), MAX_FRAME);
        assert!(matches!(
            encode_frame(&[0; MAX_FRAME + 1]),
            Err(FrameError::TooLong(_))
        ));
    }

    #[test]
    fn an_exchange_has_one_deadline_for_all_of_it() {
        let (a, b) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let got = read_frame(&mut &b).unwrap();
            // The answer's header, one byte every 100 ms: each read is quick.
            for byte in encode_frame(b"late").unwrap() {
                if (&b).write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            got
        });
        let start = Instant::now();
        let e = exchange(&a, b"ask", Duration::from_millis(250)).unwrap_err();
        assert!(
            matches!(&e, FrameError::Io(io) if io.kind() == io::ErrorKind::TimedOut),
            "{e}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(peer.join().unwrap(), b"ask");
        // In time: the answer.
        let (a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let got = read_frame(&mut &b).unwrap();
            write_frame(&mut &b, &got).unwrap();
        });
        assert_eq!(
            exchange(&a, b"echo", Duration::from_secs(5)).unwrap(),
            b"echo"
        );
    }

    #[test]
    fn truncated_frames_are_errors() {
        for buf in [vec![], vec![0, 0], vec![0, 0, 0, 9, 1, 2, 3]] {
            assert!(matches!(
                read_frame(&mut Cursor::new(buf)),
                Err(FrameError::Truncated)
            ));
        }
    }
}
