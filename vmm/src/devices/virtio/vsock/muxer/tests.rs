//! Muxer tests with real Unix sockets in a temporary directory.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;
use crate::devices::virtio::vsock::connection::{ConnState, CONN_BUF_SIZE};
use crate::devices::virtio::vsock::packet::{SHUTDOWN_RCV, SHUTDOWN_SEND};

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "husk-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn gpkt(op: u16, src_port: u32, dst_port: u32, payload: &[u8]) -> TxPacket {
    TxPacket {
        hdr: PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: payload.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        },
        payload: payload.to_vec(),
    }
}

fn setup() -> (TempDir, Muxer) {
    let dir = TempDir::new();
    let m = Muxer::new(3, &dir.0.join("v.sock")).unwrap();
    (dir, m)
}

fn rx(m: &mut Muxer) -> Option<(PacketHeader, Vec<u8>)> {
    let mut buf = vec![0u8; 4096];
    m.next_rx_packet(&mut buf)
        .map(|(h, n)| (h, buf[..n].to_vec()))
}

/// The fds the muxer asked to add, and drops the streams it asked to close.
fn added(m: &mut Muxer) -> Vec<RawFd> {
    m.take_ctl_ops()
        .into_iter()
        .filter_map(|op| match op {
            CtlOp::Add(fd, _) => Some(fd),
            _ => None,
        })
        .collect()
}

fn host_connect(dir: &TempDir, m: &mut Muxer, line: &[u8]) -> (UnixStream, RawFd) {
    let mut s = UnixStream::connect(dir.0.join("v.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(line).unwrap();
    m.accept();
    let fds = added(m);
    assert_eq!(fds.len(), 1);
    (s, fds[0])
}

/// The muxer closed its end (EOF, or a reset if it left input unread).
fn assert_closed(s: &mut UnixStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("not closed: {other:?}"),
    }
}

fn read_some(s: &mut UnixStream) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn bind_replaces_stale_socket_and_refuses_other_files() {
    let dir = TempDir::new();
    let path = dir.0.join("v.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(Muxer::new(3, &path).is_ok(), "stale socket replaced");
    let file = dir.0.join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Muxer::new(3, &file),
        Err(MuxerError::NotASocket(_))
    ));
    assert!(file.exists());
}

#[test]
fn host_initiated_connection_end_to_end() {
    let (dir, mut m) = setup();
    // The CONNECT line arrives in two pieces.
    let (mut host, fd) = host_connect(&dir, &mut m, b"CONN");
    m.handle_fd_event(fd, EventSet::IN);
    assert!(!m.has_rx());
    host.write_all(b"ECT 1024\n").unwrap();
    m.handle_fd_event(fd, EventSet::IN);
    let (h, _) = rx(&mut m).unwrap();
    assert_eq!(h.op, op::REQUEST);
    assert_eq!((h.src_port, h.dst_port), (FIRST_LOCAL_PORT, 1024));
    assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, 3));
    assert!(rx(&mut m).is_none());

    m.handle_guest_packet(&gpkt(op::RESPONSE, 1024, FIRST_LOCAL_PORT, b""));
    assert_eq!(read_some(&mut host), b"OK 1073741824\n");
    m.take_ctl_ops();

    host.write_all(b"ping").unwrap();
    m.handle_fd_event(fd, EventSet::IN);
    let (h, data) = rx(&mut m).unwrap();
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"ping"[..]));

    m.handle_guest_packet(&gpkt(op::RW, 1024, FIRST_LOCAL_PORT, b"pong"));
    assert_eq!(read_some(&mut host), b"pong");

    // Host half-closes: the guest gets SHUTDOWN(SEND), then both sides are done.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    m.handle_fd_event(fd, EventSet::IN);
    // The first read after the data saw WouldBlock; poll again.
    m.handle_fd_event(fd, EventSet::IN);
    let mut ops = Vec::new();
    while let Some((h, _)) = rx(&mut m) {
        ops.push(h.op);
    }
    assert_eq!(ops, [op::SHUTDOWN]);
    let mut p = gpkt(op::SHUTDOWN, 1024, FIRST_LOCAL_PORT, b"");
    p.hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    m.handle_guest_packet(&p);
    assert_eq!(rx(&mut m).unwrap().0.op, op::RST);
    assert_eq!(m.connection_count(), 0);
    drop(m.take_ctl_ops());
    assert_eq!(read_some(&mut host), b"", "host sees EOF");
}

#[test]
fn guest_rst_refuses_host_connection() {
    let (dir, mut m) = setup();
    let (mut host, fd) = host_connect(&dir, &mut m, b"CONNECT 77\n");
    m.handle_fd_event(fd, EventSet::IN);
    assert_eq!(rx(&mut m).unwrap().0.op, op::REQUEST);
    m.handle_guest_packet(&gpkt(op::RST, 77, FIRST_LOCAL_PORT, b""));
    assert!(!m.has_rx(), "no reply to an RST");
    assert_eq!(m.connection_count(), 0);
    drop(m.take_ctl_ops());
    assert_eq!(read_some(&mut host), b"");
}

#[test]
fn a_guest_that_never_answers_keeps_no_host_connection_the_host_gave_up() {
    let (dir, mut m) = setup();
    // Answered with nothing: the host program times out and closes.
    let (host, fd) = host_connect(&dir, &mut m, b"CONNECT 1024\n");
    m.handle_fd_event(fd, EventSet::IN);
    assert_eq!(rx(&mut m).unwrap().0.op, op::REQUEST);
    let ops = m.take_ctl_ops();
    assert!(
        ops.iter()
            .any(|op| matches!(op, CtlOp::Modify(f, e) if *f == fd && *e == EventSet::HANG_UP)),
        "still polled for a hang-up: {ops:?}"
    );
    drop(host);
    m.handle_fd_event(fd, EventSet::HANG_UP);
    let (h, _) = rx(&mut m).unwrap();
    assert_eq!(
        (h.op, h.src_port, h.dst_port),
        (op::RST, FIRST_LOCAL_PORT, 1024)
    );
    assert_eq!(m.connection_count(), 0);
    let ops = m.take_ctl_ops();
    // Out of the epoll set, and then closed.
    assert!(
        matches!(ops.as_slice(), [CtlOp::Remove(f, None), CtlOp::Close(_)] if *f == fd),
        "{ops:?}"
    );
    // A late RESPONSE finds no connection: it gets an RST of its own.
    m.handle_guest_packet(&gpkt(op::RESPONSE, 1024, FIRST_LOCAL_PORT, b""));
    assert_eq!(rx(&mut m).unwrap().0.op, op::RST);
}

#[test]
fn bad_connect_lines_are_closed() {
    for line in [
        &b"CONNECT x\n"[..],
        b"connect 5\n",
        b"CONNECT 99999999999\n",
        b"CONNECT \n",
        b"CONNECT 5 6\n",
        b"CONNECT 00000000000000000000000000000001",
    ] {
        let (dir, mut m) = setup();
        let (mut host, fd) = host_connect(&dir, &mut m, line);
        m.handle_fd_event(fd, EventSet::IN);
        assert!(!m.has_rx(), "{line:?}");
        assert_eq!(m.connection_count(), 0, "{line:?}");
        let ops = m.take_ctl_ops();
        assert!(matches!(ops.as_slice(), [CtlOp::Remove(f, Some(_))] if *f == fd));
        drop(ops);
        assert_closed(&mut host);
    }
    assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
}

fn feed(line: &[u8]) -> Vec<LineStep> {
    let mut l = ConnectLine::default();
    line.iter().map(|&b| l.push(b)).collect()
}

#[test]
fn connect_line_ends_at_the_newline_or_its_limit() {
    let steps = feed(b"CONNECT 1024\n");
    assert_eq!(steps.last(), Some(&LineStep::Port(1024)));
    assert!(steps[..steps.len() - 1]
        .iter()
        .all(|s| *s == LineStep::More));
    // The longest line taken is MAX_CONNECT_LINE bytes with its newline ...
    let mut longest = b"CONNECT ".to_vec();
    longest.resize(MAX_CONNECT_LINE - 2, b'0');
    longest.extend_from_slice(b"7\n");
    assert_eq!(longest.len(), MAX_CONNECT_LINE);
    assert_eq!(feed(&longest).last(), Some(&LineStep::Port(7)));
    // ... one more byte and it is refused before its newline comes.
    longest.insert(8, b'0');
    let steps = feed(&longest);
    assert_eq!(steps[MAX_CONNECT_LINE - 1], LineStep::Invalid);
    assert_eq!(feed(b"\n"), [LineStep::Invalid]);
}

#[test]
fn connect_port_is_plain_decimal_u32() {
    assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
    assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
    assert_eq!(parse_connect(b"CONNECT 0"), Some(0));
    assert_eq!(parse_connect(b"CONNECT 007"), Some(7));
    for bad in [
        &b"CONNECT +5"[..],
        b"CONNECT -1",
        b"CONNECT 5\r",
        b" CONNECT 5",
        b"CONNECT",
    ] {
        assert_eq!(parse_connect(bad), None, "{bad:?}");
    }
}

#[test]
fn guest_initiated_connection() {
    let (dir, mut m) = setup();
    let app = UnixListener::bind(dir.0.join("v.sock_52")).unwrap();
    m.handle_guest_packet(&gpkt(op::REQUEST, 3000, 52, b""));
    let (h, _) = rx(&mut m).unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RESPONSE, 52, 3000));
    let (mut host, _) = app.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let fd = match m.take_ctl_ops().as_slice() {
        [CtlOp::Add(fd, set)] => {
            assert_eq!(*set, EventSet::IN);
            *fd
        }
        other => panic!("{other:?}"),
    };
    m.handle_guest_packet(&gpkt(op::RW, 3000, 52, b"hello"));
    assert_eq!(read_some(&mut host), b"hello");
    host.write_all(b"world").unwrap();
    m.handle_fd_event(fd, EventSet::IN);
    let (h, d) = rx(&mut m).unwrap();
    assert_eq!((h.op, d.as_slice()), (op::RW, &b"world"[..]));
    assert_eq!(m.conn_state(52, 3000), Some(ConnState::Established));

    // Nobody listens on port 53.
    m.handle_guest_packet(&gpkt(op::REQUEST, 3001, 53, b""));
    let (h, _) = rx(&mut m).unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 53, 3001));
}

#[test]
fn bad_packets_are_dropped_or_reset() {
    let (_dir, mut m) = setup();
    let mut p = gpkt(op::RW, 1, 2, b"x");
    p.hdr.src_cid = 4;
    m.handle_guest_packet(&p);
    p.hdr.src_cid = 3;
    p.hdr.dst_cid = 7;
    m.handle_guest_packet(&p);
    assert!(!m.has_rx(), "bad CIDs are dropped");
    m.handle_guest_packet(&gpkt(op::RST, 1, 2, b""));
    assert!(!m.has_rx(), "RST to nothing is ignored");
    let mut p = gpkt(op::REQUEST, 1, 2, b"");
    p.hdr.type_ = 2;
    m.handle_guest_packet(&p);
    let (h, _) = rx(&mut m).unwrap();
    assert_eq!((h.op, h.type_), (op::RST, 2));
    m.handle_guest_packet(&gpkt(op::RW, 1, 2, b"x"));
    assert_eq!(rx(&mut m).unwrap().0.op, op::RST);
    // The RST queue is bounded.
    for _ in 0..MAX_PENDING_RST * 2 {
        m.handle_guest_packet(&gpkt(op::RW, 1, 2, b"x"));
    }
    let mut n = 0;
    while rx(&mut m).is_some() {
        n += 1;
    }
    assert_eq!(n, MAX_PENDING_RST);
}

#[test]
fn connection_table_is_bounded() {
    let (dir, mut m) = setup();
    m.max_conns = 2;
    let _app = UnixListener::bind(dir.0.join("v.sock_52")).unwrap();
    m.handle_guest_packet(&gpkt(op::REQUEST, 1, 52, b""));
    m.take_ctl_ops();
    let (_h1, _) = host_connect(&dir, &mut m, b"");
    assert_eq!(m.connection_count(), 2);
    // A third host program is accepted and closed at once.
    let mut s = UnixStream::connect(dir.0.join("v.sock")).unwrap();
    m.accept();
    assert!(added(&mut m).is_empty());
    assert_closed(&mut s);
    // A third guest connection gets RST.
    assert_eq!(rx(&mut m).unwrap().0.op, op::RESPONSE);
    m.handle_guest_packet(&gpkt(op::REQUEST, 2, 52, b""));
    assert_eq!(rx(&mut m).unwrap().0.op, op::RST);
    assert_eq!(m.connection_count(), 2);
}

#[test]
fn data_held_for_host_programs_that_do_not_read_is_bounded_in_all() {
    let (dir, mut m) = setup();
    m.max_buffered = 1 << 20;
    let app = UnixListener::bind(dir.0.join("v.sock_52")).unwrap();
    let mut hosts = Vec::new();
    for p in 0..16 {
        m.handle_guest_packet(&gpkt(op::REQUEST, 100 + p, 52, b""));
        hosts.push(app.accept().unwrap().0); // never read
    }
    while rx(&mut m).is_some() {}
    let chunk = vec![7u8; 64 << 10];
    let (mut most, mut reset) = (0, 0);
    for _ in 0..16 {
        for p in 0..16 {
            m.handle_guest_packet(&gpkt(op::RW, 100 + p, 52, &chunk));
            assert!(m.buffered_total() <= 1 << 20, "{}", m.buffered_total());
            most = most.max(m.buffered_total());
        }
        // The credit updates, which let each connection send on.
        while let Some((h, _)) = rx(&mut m) {
            reset += usize::from(h.op == op::RST);
        }
    }
    assert!(most > 1 << 19, "the test never came near the bound: {most}");
    assert!(reset > 0);
    // The host programs gone, nothing is held any more.
    drop(hosts);
    for fd in m.fd_keys.keys().copied().collect::<Vec<_>>() {
        m.handle_fd_event(fd, EventSet::OUT | EventSet::HANG_UP);
    }
    while rx(&mut m).is_some() {}
    assert_eq!(m.buffered_total(), 0);
}

#[test]
fn guest_that_never_reads_bounds_host_reads() {
    let (dir, mut m) = setup();
    let app = UnixListener::bind(dir.0.join("v.sock_52")).unwrap();
    m.handle_guest_packet(&gpkt(op::REQUEST, 9, 52, b""));
    rx(&mut m).unwrap();
    let (mut host, _) = app.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    let fd = added(&mut m)[0];
    // The host writes far more than the guest's 64 KiB credit.
    let chunk = vec![1u8; 4096];
    let mut written = 0;
    while written < 4 * 65536 {
        match host.write(&chunk) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    m.handle_fd_event(fd, EventSet::IN);
    let mut got = 0;
    let mut ops = Vec::new();
    while let Some((h, d)) = rx(&mut m) {
        got += d.len();
        ops.push(h.op);
    }
    assert_eq!(got, 65536, "exactly the guest's credit");
    assert_eq!(ops.last(), Some(&op::CREDIT_REQUEST));
    // The socket left the epoll set: nothing spins while the guest has no room.
    let ops = m.take_ctl_ops();
    assert!(matches!(ops.as_slice(), [CtlOp::Remove(f, None)] if *f == fd));
    // The guest consumes and says so: reading resumes.
    let mut p = gpkt(op::CREDIT_UPDATE, 9, 52, b"");
    p.hdr.fwd_cnt = 65536;
    m.handle_guest_packet(&p);
    let (h, d) = rx(&mut m).unwrap();
    assert_eq!((h.op, d.len()), (op::RW, 4096));
    assert!(CONN_BUF_SIZE as usize >= 65536);
}

/// A guest that follows the credit rules moves 2 MiB each way through a slow host
/// reader and writer without an RST, byte for byte, and the muxer never buffers more
/// than the credit it advertised.
#[test]
fn bulk_transfer_both_ways_respects_credit() {
    const TOTAL: usize = 2 << 20;
    const GUEST_BUF: u32 = 64 * 1024;
    let (dir, mut m) = setup();
    let app = UnixListener::bind(dir.0.join("v.sock_52")).unwrap();
    let mut req = gpkt(op::REQUEST, 9, 52, b"");
    req.hdr.buf_alloc = GUEST_BUF;
    m.handle_guest_packet(&req);
    let (mut host, _) = app.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    let fd = {
        let mut buf = vec![0u8; 4096];
        let (h, _) = m.next_rx_packet(&mut buf).unwrap();
        assert_eq!(h.op, op::RESPONSE);
        added(&mut m)[0]
    };
    let pattern = |i: usize| (i % 251) as u8;

    // Guest state: what it received, forwarded, and knows of our credit.
    let mut g_rx = 0usize;
    let mut g_fwd = 0u32;
    let mut g_sent = 0usize;
    let mut our_buf_alloc = 0u32;
    let mut our_fwd = 0u32;
    // Host state.
    let mut h_sent = 0usize;
    let mut h_rx = 0usize;

    let mut rounds = 0;
    while (g_rx < TOTAL || h_rx < TOTAL) && rounds < 100_000 {
        rounds += 1;
        // The host writes some and reads a little (a slow reader).
        if h_sent < TOTAL {
            let chunk: Vec<u8> = (h_sent..TOTAL.min(h_sent + 8192)).map(pattern).collect();
            if let Ok(n) = host.write(&chunk) {
                h_sent += n;
            }
        }
        let mut rbuf = [0u8; 3000];
        if let Ok(n) = host.read(&mut rbuf) {
            for (i, b) in rbuf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(h_rx + i), "host byte {}", h_rx + i);
            }
            h_rx += n;
        }
        m.handle_fd_event(fd, EventSet::IN | EventSet::OUT);
        m.take_ctl_ops();
        // The guest takes what is pending, 4 KiB buffers at a time.
        let mut buf = vec![0u8; 4096];
        while let Some((h, n)) = m.next_rx_packet(&mut buf) {
            assert_ne!(h.op, op::RST, "after {g_rx} bytes");
            our_buf_alloc = h.buf_alloc;
            our_fwd = h.fwd_cnt;
            if h.op == op::RW {
                for (i, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, pattern(g_rx + i), "guest byte {}", g_rx + i);
                }
                g_rx += n;
                assert!(
                    (g_rx as u32).wrapping_sub(g_fwd) <= GUEST_BUF,
                    "credit overrun"
                );
            }
        }
        // The guest application consumes it all and tells us.
        if g_rx as u32 != g_fwd {
            g_fwd = g_rx as u32;
            let mut p = gpkt(op::CREDIT_UPDATE, 9, 52, b"");
            p.hdr.buf_alloc = GUEST_BUF;
            p.hdr.fwd_cnt = g_fwd;
            m.handle_guest_packet(&p);
        }
        // The guest sends what our credit allows, in 16 KiB packets.
        let credit = our_buf_alloc.wrapping_sub((g_sent as u32).wrapping_sub(our_fwd));
        let n = (credit as usize).min(16 * 1024).min(TOTAL - g_sent);
        if n > 0 {
            let data: Vec<u8> = (g_sent..g_sent + n).map(pattern).collect();
            let mut p = gpkt(op::RW, 9, 52, &data);
            p.hdr.buf_alloc = GUEST_BUF;
            p.hdr.fwd_cnt = g_fwd;
            m.handle_guest_packet(&p);
            g_sent += n;
        }
        let c = m.conns.get(&(52, 9)).expect("connection alive");
        assert!(c.buffered() <= CONN_BUF_SIZE as usize);
    }
    assert_eq!(
        (g_rx, h_rx),
        (TOTAL, TOTAL),
        "stalled after {rounds} rounds"
    );
}

#[test]
fn bad_payload_resets_its_connection() {
    let (dir, mut m) = setup();
    let app = UnixListener::bind(dir.0.join("v.sock_52")).unwrap();
    m.handle_guest_packet(&gpkt(op::REQUEST, 9, 52, b""));
    assert_eq!(rx(&mut m).unwrap().0.op, op::RESPONSE);
    let (mut host, _) = app.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut h = gpkt(op::RW, 9, 52, b"").hdr;
    h.len = 1000;
    m.handle_bad_payload(&h);
    let (r, _) = rx(&mut m).unwrap();
    assert_eq!((r.op, r.src_port, r.dst_port), (op::RST, 52, 9));
    assert_eq!(m.connection_count(), 0);
    drop(m.take_ctl_ops());
    assert_closed(&mut host);
}
