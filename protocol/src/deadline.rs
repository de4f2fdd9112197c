//! Reads and writes on a Unix stream that must finish by a deadline: the peer is not
//! trusted, and a socket timeout alone bounds only each `read`, so a peer that sends one
//! byte just before every timeout would keep a reader for ever. Before each call the
//! socket's timeout is set to what is left of the deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The time left until `deadline`, or a `TimedOut` error once it has passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer did not finish in time",
        ));
    }
    Ok(left)
}

/// A would-block from a socket timeout is a timeout.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "the peer did not finish in time")
    } else {
        e
    }
}

/// Fills `buf` from `s` by `deadline` (`UnexpectedEof` if the stream ends first). Leaves
/// the socket's read timeout set.
pub fn read_exact_by(mut s: &UnixStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        s.set_read_timeout(Some(left(deadline)?))?;
        match s.read(&mut buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    Ok(())
}

/// Writes all of `buf` to `s` by `deadline`. Leaves the socket's write timeout set.
pub fn write_all_by(mut s: &UnixStream, buf: &[u8], deadline: Instant) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        s.set_write_timeout(Some(left(deadline)?))?;
        match s.write(&buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    Ok(())
}

/// A `Read` over a stream whose every read must finish by one deadline.
pub struct ReadBy<'a> {
    pub stream: &'a UnixStream,
    pub deadline: Instant,
}

impl Read for ReadBy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(left(self.deadline)?))?;
        let mut s = self.stream;
        s.read(buf).map_err(timed_out)
    }
}

/// Guest-supplied text as the host shows it (in errors to containerd, in logs): at most
/// `max` bytes (whole characters, saying how much of the input was cut), control
/// characters but newline and tab replaced, so that a hostile agent cannot flood or forge
/// lines.
pub fn guest_text(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    let mut taken = 0;
    for (at, c) in s.char_indices() {
        let shown = if c.is_control() && c != '\n' && c != '\t' {
            '\u{fffd}'
        } else {
            c
        };
        if out.len() + shown.len_utf8() > max {
            break;
        }
        out.push(shown);
        taken = at + c.len_utf8();
    }
    if taken < s.len() {
        out.push_str(&format!(" [{} more bytes cut]", s.len() - taken));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickling_peer_is_cut_off_at_the_deadline() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            // One byte every 50 ms: each read alone would finish well within its timeout.
            for _ in 0..40 {
                if (&b).write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let start = Instant::now();
        let mut buf = [0u8; 40];
        let e = read_exact_by(&a, &mut buf, start + Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(start.elapsed() < Duration::from_millis(1500));
        drop(a);
        t.join().unwrap();
    }

    #[test]
    fn whole_reads_and_writes_and_an_early_end() {
        let (a, b) = UnixStream::pair().unwrap();
        let far = Instant::now() + Duration::from_secs(10);
        write_all_by(&b, b"hello", far).unwrap();
        let mut buf = [0u8; 5];
        read_exact_by(&a, &mut buf, far).unwrap();
        assert_eq!(&buf, b"hello");
        write_all_by(&b, b"he", far).unwrap();
        drop(b);
        let e = read_exact_by(&a, &mut buf, far).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // A peer that never reads: the write gives up at its deadline.
        let (a, _b) = UnixStream::pair().unwrap();
        let e = write_all_by(
            &a,
            &vec![0u8; 8 << 20],
            Instant::now() + Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    #[test]
    fn guest_text_is_bounded_and_has_no_control_characters() {
        assert_eq!(guest_text("fine\nline\ttab", 100), "fine\nline\ttab");
        assert_eq!(guest_text("a\x1b[2Jb\rc", 100), "a\u{fffd}[2Jb\u{fffd}c");
        assert_eq!(guest_text("abcdef", 3), "abc [3 more bytes cut]");
        // Never inside a character: "é" is two bytes.
        assert_eq!(guest_text("éé", 3), "é [2 more bytes cut]");
        let huge = "x".repeat(4 << 20);
        assert!(guest_text(&huge, 4096).len() < 4200);
        // Replacements count against the bound too (U+FFFD is three bytes).
        let escapes = "\x1b".repeat(10_000);
        assert!(guest_text(&escapes, 4096).len() < 4200);
    }
}
