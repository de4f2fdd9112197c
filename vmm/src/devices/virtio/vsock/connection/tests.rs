use std::cell::RefCell;
use std::rc::Rc;

use super::*;

/// A host stream: reads come from `input` (WouldBlock when empty unless `eof`),
/// writes go to `output` up to `write_room` bytes (then WouldBlock).
#[derive(Clone, Default)]
pub(crate) struct MockStream(Rc<RefCell<MockInner>>);

#[derive(Default)]
pub(crate) struct MockInner {
    pub input: VecDeque<u8>,
    pub eof: bool,
    pub output: Vec<u8>,
    pub write_room: usize,
    pub write_error: bool,
    pub shut_write: bool,
}

impl MockStream {
    pub(crate) fn new(write_room: usize) -> Self {
        let s = Self::default();
        s.0.borrow_mut().write_room = write_room;
        s
    }
    pub(crate) fn inner(&self) -> std::cell::RefMut<'_, MockInner> {
        self.0.borrow_mut()
    }
}

impl Read for MockStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut i = self.0.borrow_mut();
        if i.input.is_empty() {
            return if i.eof {
                Ok(0)
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(i.input.len());
        for (d, s) in buf.iter_mut().zip(i.input.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
}

impl Write for MockStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut i = self.0.borrow_mut();
        if i.write_error {
            return Err(ErrorKind::BrokenPipe.into());
        }
        if i.write_room == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(i.write_room);
        i.write_room -= n;
        i.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl HostStream for MockStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.0.borrow_mut().shut_write = true;
        Ok(())
    }
}

fn guest(op: u16, len: usize, buf_alloc: u32, fwd_cnt: u32) -> TxPacket {
    TxPacket {
        hdr: PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len: len as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        },
        payload: vec![0xab; len],
    }
}

fn next(c: &mut Connection<MockStream>, room: usize) -> Option<(PacketHeader, usize)> {
    let mut buf = vec![0u8; room];
    c.next_rx_packet(&mut buf)
}

fn established(room: usize) -> (Connection<MockStream>, MockStream) {
    let s = MockStream::new(room);
    let req = guest(op::REQUEST, 0, 8192, 0).hdr;
    let mut c = Connection::new_peer(s.clone(), 3, &req);
    let (h, _) = next(&mut c, 4096).unwrap();
    assert_eq!(h.op, op::RESPONSE);
    assert_eq!((h.src_port, h.dst_port), (52, 1000));
    assert_eq!(h.buf_alloc, CONN_BUF_SIZE);
    (c, s)
}

#[test]
fn local_handshake_writes_ok_line() {
    let s = MockStream::new(1024);
    let mut c = Connection::new_local(s.clone(), 3, 1 << 30, 1024);
    assert!(c.wants_rx());
    assert_eq!(
        c.interest(),
        EventSet::HANG_UP,
        "only whether the host gives up"
    );
    let (h, n) = next(&mut c, 4096).unwrap();
    assert_eq!(
        (h.op, n, h.src_port, h.dst_port),
        (op::REQUEST, 0, 1 << 30, 1024)
    );
    assert!(next(&mut c, 4096).is_none());
    c.on_guest_packet(&guest(op::RESPONSE, 0, 4096, 0));
    assert_eq!(c.state(), ConnState::Established);
    assert_eq!(s.inner().output, b"OK 1073741824\n");
    assert_eq!(c.interest(), EventSet::IN);
}

#[test]
fn a_host_that_gives_up_before_the_guest_answers_ends_the_connection() {
    // The REQUEST went out: the guest is owed an RST (a late RESPONSE then finds nothing).
    let mut c = Connection::new_local(MockStream::new(0), 3, 1 << 30, 1024);
    assert_eq!(next(&mut c, 0).unwrap().0.op, op::REQUEST);
    c.on_host_event(EventSet::IN | EventSet::READ_HANG_UP);
    assert_eq!(
        c.state(),
        ConnState::LocalInit,
        "a half-close is no hang-up"
    );
    c.on_host_event(EventSet::HANG_UP);
    assert_eq!(next(&mut c, 0).unwrap().0.op, op::RST);
    assert!(c.is_dead());
    // The REQUEST never went out (no guest rx buffer yet): nothing to tell the guest.
    let mut c = Connection::new_local(MockStream::new(0), 3, 1 << 30, 1024);
    c.on_host_event(EventSet::HANG_UP);
    assert!(c.is_dead());
    assert!(next(&mut c, 4096).is_none());
}

#[test]
fn local_refused_by_rst() {
    let mut c = Connection::new_local(MockStream::new(0), 3, 1 << 30, 1024);
    next(&mut c, 0).unwrap();
    c.on_guest_packet(&guest(op::RST, 0, 0, 0));
    assert!(c.is_dead());
    assert!(next(&mut c, 4096).is_none());
}

#[test]
fn host_data_respects_guest_credit() {
    let (mut c, s) = established(0);
    s.inner().input.extend(vec![7u8; 20000]);
    c.on_host_event(EventSet::IN);
    assert!(c.interest().is_empty(), "no polling while data is pending");
    // Guest advertised 8192 bytes.
    let (h, n) = next(&mut c, 4096).unwrap();
    assert_eq!((h.op, n), (op::RW, 4096));
    let (_, n) = next(&mut c, 65536).unwrap();
    assert_eq!(n, 4096);
    assert_eq!(c.peer_credit(), 0);
    // No credit: one credit request, then nothing until the guest updates.
    let (h, _) = next(&mut c, 4096).unwrap();
    assert_eq!(h.op, op::CREDIT_REQUEST);
    assert!(!c.wants_rx());
    assert!(next(&mut c, 4096).is_none());
    c.on_guest_packet(&guest(op::CREDIT_UPDATE, 0, 8192, 8192));
    assert!(c.wants_rx());
    let (h, n) = next(&mut c, 65536).unwrap();
    assert_eq!((h.op, n), (op::RW, 8192));
    assert_eq!(s.inner().input.len(), 20000 - 16384);
}

#[test]
fn host_eof_sends_shutdown_then_closes_on_guest_shutdown() {
    let (mut c, s) = established(100);
    s.inner().input.extend(b"bye");
    s.inner().eof = true;
    c.on_host_event(EventSet::IN | EventSet::READ_HANG_UP);
    let (h, n) = next(&mut c, 4096).unwrap();
    assert_eq!((h.op, n), (op::RW, 3));
    let (h, _) = next(&mut c, 4096).unwrap();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    assert!(c.interest().is_empty());
    // The guest finishes too: we half-close the host side and reset.
    let mut p = guest(op::SHUTDOWN, 0, 8192, 0);
    p.hdr.flags = SHUTDOWN_SEND;
    c.on_guest_packet(&p);
    assert!(s.inner().shut_write);
    let (h, _) = next(&mut c, 4096).unwrap();
    assert_eq!(h.op, op::RST);
    assert!(c.is_dead());
}

#[test]
fn guest_shutdown_flushes_before_half_close() {
    let (mut c, s) = established(10);
    c.on_guest_packet(&guest(op::RW, 30, 8192, 0));
    assert_eq!(s.inner().output.len(), 10);
    assert_eq!(c.interest(), EventSet::IN | EventSet::OUT);
    let mut p = guest(op::SHUTDOWN, 0, 8192, 0);
    p.hdr.flags = SHUTDOWN_SEND;
    c.on_guest_packet(&p);
    assert!(!s.inner().shut_write, "data still buffered");
    s.inner().write_room = 100;
    c.on_host_event(EventSet::OUT);
    assert_eq!(s.inner().output.len(), 30);
    assert!(s.inner().shut_write);
    assert_eq!(c.state(), ConnState::Established, "half-closed only");
    // Further guest data after its SHUTDOWN(SEND) is a protocol error.
    c.on_guest_packet(&guest(op::RW, 1, 8192, 0));
    assert_eq!(next(&mut c, 10).unwrap().0.op, op::RST);
}

#[test]
fn full_guest_shutdown_resets_after_flush() {
    let (mut c, s) = established(0);
    c.on_guest_packet(&guest(op::RW, 5, 8192, 0));
    let mut p = guest(op::SHUTDOWN, 0, 8192, 0);
    p.hdr.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    c.on_guest_packet(&p);
    assert!(next(&mut c, 10).is_none(), "waits for the flush");
    s.inner().write_room = 5;
    c.on_host_event(EventSet::OUT);
    assert_eq!(next(&mut c, 10).unwrap().0.op, op::RST);
    assert!(c.is_dead());
}

#[test]
fn overrun_gets_rst_and_buffer_stays_bounded() {
    let (mut c, s) = established(0);
    let chunk = MAX_PAYLOAD;
    for _ in 0..(CONN_BUF_SIZE as usize / chunk) {
        c.on_guest_packet(&guest(op::RW, chunk, 8192, 0));
        assert_eq!(c.state(), ConnState::Established);
    }
    assert_eq!(c.buffered(), CONN_BUF_SIZE as usize);
    assert!(c.tx_buf.capacity() < 2 * CONN_BUF_SIZE as usize);
    c.on_guest_packet(&guest(op::RW, 1, 8192, 0));
    assert_eq!(c.state(), ConnState::Killed);
    assert_eq!(c.buffered(), 0);
    assert!(s.inner().output.is_empty());
    assert_eq!(next(&mut c, 10).unwrap().0.op, op::RST);
    assert!(c.is_dead());
}

#[test]
fn credit_update_when_guest_view_gets_low() {
    let (mut c, s) = established(0);
    for _ in 0..4 {
        c.on_guest_packet(&guest(op::RW, MAX_PAYLOAD, 8192, 0));
    }
    assert!(!c.wants_rx());
    // The host takes a little: not worth an update yet.
    s.inner().write_room = 1000;
    c.on_host_event(EventSet::OUT);
    assert!(!c.wants_rx());
    // The host takes everything: the guest learns it has the whole buffer again.
    s.inner().write_room = usize::MAX;
    c.on_host_event(EventSet::OUT);
    assert!(c.wants_rx());
    let (h, _) = next(&mut c, 10).unwrap();
    assert_eq!((h.op, h.fwd_cnt), (op::CREDIT_UPDATE, CONN_BUF_SIZE));
    // Now the guest may send a full buffer again.
    for _ in 0..4 {
        c.on_guest_packet(&guest(op::RW, MAX_PAYLOAD, 8192, 0));
    }
    assert_eq!(c.state(), ConnState::Established);
}

#[test]
fn credit_request_is_answered() {
    let (mut c, _s) = established(0);
    c.on_guest_packet(&guest(op::CREDIT_REQUEST, 0, 8192, 0));
    let (h, _) = next(&mut c, 10).unwrap();
    assert_eq!(h.op, op::CREDIT_UPDATE);
}

#[test]
fn write_error_and_protocol_errors_reset() {
    let (mut c, s) = established(10);
    s.inner().write_error = true;
    c.on_guest_packet(&guest(op::RW, 3, 8192, 0));
    assert_eq!(next(&mut c, 10).unwrap().0.op, op::RST);

    let (mut c, _s) = established(10);
    c.on_guest_packet(&guest(op::REQUEST, 0, 8192, 0));
    assert_eq!(next(&mut c, 10).unwrap().0.op, op::RST);

    let mut c = Connection::new_local(MockStream::new(10), 3, 5, 6);
    c.on_guest_packet(&guest(op::RW, 3, 8192, 0));
    assert_eq!(next(&mut c, 10).unwrap().0.op, op::RST);

    let (mut c, _s) = established(10);
    c.on_host_event(EventSet::ERROR);
    assert_eq!(next(&mut c, 10).unwrap().0.op, op::RST);
}

#[test]
fn guest_credit_cannot_underflow() {
    let (mut c, _s) = established(0);
    // A guest claiming to have forwarded more than we sent gets no more than buf_alloc.
    c.on_guest_packet(&guest(op::CREDIT_UPDATE, 0, 100, u32::MAX));
    assert!(c.peer_credit() <= 100);
}
