//! The hybrid-vsock host handshake, both ways: the `CONNECT <port>\n` lines a host program
//! sends the VMM (`husk_vmm::devices::virtio::vsock::muxer::ConnectLine`, what the muxer
//! reads a byte at a time) and the `OK <hostport>\n` reply a (possibly compromised) VMM
//! sends the shim (`husk_protocol::hybrid_vsock::ReplyLine`). The input is read as lines
//! back to back, by both parsers. Each must stop within its bound, and accept exactly the
//! lines an independent reading of the grammar accepts, with the same port.
#![no_main]

use husk_protocol::hybrid_vsock::{ReplyLine, ReplyStep, MAX_REPLY_LINE};
use husk_vmm::devices::virtio::vsock::muxer::{ConnectLine, LineStep, MAX_CONNECT_LINE};
use libfuzzer_sys::fuzz_target;

/// `<prefix><decimal u32>` without sign, spaces or anything after it; leading zeros allowed.
fn reference(line: &[u8], prefix: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u32, |n, d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

fn connect_lines(mut data: &[u8]) {
    while !data.is_empty() {
        let mut line = ConnectLine::default();
        let mut used = 0;
        let mut step = LineStep::More;
        for &b in data {
            used += 1;
            step = line.push(b);
            if step != LineStep::More {
                break;
            }
        }
        assert!(
            used <= MAX_CONNECT_LINE,
            "read {used} bytes of a CONNECT line"
        );
        let consumed = &data[..used];
        match step {
            LineStep::More => {
                assert!(!consumed.contains(&b'\n'));
                assert!(used < MAX_CONNECT_LINE);
            }
            LineStep::Port(p) => {
                let (nl, text) = consumed.split_last().unwrap();
                assert_eq!(*nl, b'\n');
                assert_eq!(reference(text, b"CONNECT "), Some(p));
                // What the shim sends for that port is taken back.
                let mut again = ConnectLine::default();
                let sent = format!("CONNECT {p}\n");
                let last = sent.bytes().map(|b| again.push(b)).last();
                assert_eq!(last, Some(LineStep::Port(p)));
            }
            LineStep::Invalid => {
                if consumed.last() == Some(&b'\n') && used <= MAX_CONNECT_LINE {
                    assert_eq!(reference(&consumed[..used - 1], b"CONNECT "), None);
                } else {
                    assert_eq!(used, MAX_CONNECT_LINE);
                }
            }
        }
        data = &data[used..];
    }
}

fn reply_lines(mut data: &[u8]) {
    while !data.is_empty() {
        let mut line = ReplyLine::default();
        let mut used = 0;
        let mut step = ReplyStep::More;
        for &b in data {
            used += 1;
            step = line.push(b);
            if step != ReplyStep::More {
                break;
            }
        }
        assert!(used <= MAX_REPLY_LINE + 1, "read {used} bytes of a reply");
        let consumed = &data[..used];
        match step {
            ReplyStep::More => assert!(!consumed.contains(&b'\n') && used <= MAX_REPLY_LINE),
            ReplyStep::Accepted(p) => {
                let (nl, text) = consumed.split_last().unwrap();
                assert_eq!(*nl, b'\n');
                assert_eq!(reference(text, b"OK "), Some(p));
            }
            ReplyStep::Bad(reply) => {
                // The error message is the line, lossily decoded: bounded too.
                assert!(reply.len() <= 3 * (MAX_REPLY_LINE + 1));
                if consumed.last() == Some(&b'\n') {
                    assert_eq!(reference(&consumed[..used - 1], b"OK "), None);
                } else {
                    assert_eq!(used, MAX_REPLY_LINE + 1);
                }
            }
        }
        data = &data[used..];
    }
}

fuzz_target!(|data: &[u8]| {
    connect_lines(data);
    reply_lines(data);
});
