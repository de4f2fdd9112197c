//! One vsock stream connection between a guest port and a host Unix socket: its state
//! machine and the credit-based flow control of virtio spec 1.2, 5.10.6.3.
//!
//! Generic over the host stream so that the logic is tested without sockets.
//!
//! Flow control, both ways:
//! - guest -> host: we advertise a fixed [`CONN_BUF_SIZE`] and put our `fwd_cnt` (bytes
//!   written to the host socket) in every header. A guest that sends more than the credit
//!   we last advertised gets RST, so what we buffer for a slow host stays below
//!   [`CONN_BUF_SIZE`].
//! - host -> guest: we read the host socket only when the guest has credit, straight into
//!   its rx buffer, so nothing is buffered on our side; without credit we stop polling the
//!   socket and ask the guest for an update.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;

use super::packet::{
    op, PacketHeader, TxPacket, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Receive buffer we advertise to the guest for each connection (and the most we ever
/// buffer for it).
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Send a credit update when the guest believes it has less free space than this.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;

/// The host end of a connection.
pub trait HostStream: Read + Write {
    /// Half-closes the stream: the host reads EOF after the data already written.
    fn shutdown_write(&self) -> std::io::Result<()>;
}

impl HostStream for UnixStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// We sent (or will send) OP_REQUEST for a host program, awaiting the guest's answer.
    LocalInit,
    Established,
    /// An RST is owed to the guest; nothing else happens on this connection.
    Killed,
    /// Finished: the muxer removes it.
    Dead,
}

// Control packets owed to the guest, in the order they are sent.
const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_CREDIT_UPDATE: u8 = 4;
const P_CREDIT_REQUEST: u8 = 8;
const P_SHUTDOWN: u8 = 16;
const P_RST: u8 = 32;

pub struct Connection<S> {
    stream: S,
    state: ConnState,
    peer_cid: u64,
    local_port: u32,
    peer_port: u32,
    pending: u8,
    /// The host socket polled readable and has not yet returned WouldBlock.
    rx_data_ready: bool,
    /// The host stopped sending (we read EOF).
    host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    peer_shut: u32,
    write_shut_done: bool,
    // Guest side of the credit: what it told us, and what we sent it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    credit_requested: bool,
    // Our side: guest bytes received, forwarded to the host, and last advertised.
    tx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes for the host that are not guest data (the `OK <port>` line); sent first.
    prefix: Vec<u8>,
    /// Guest data the host socket has not taken yet (at most [`CONN_BUF_SIZE`]).
    tx_buf: VecDeque<u8>,
}

impl<S: HostStream> Connection<S> {
    /// A connection a host program asked for: owes the guest an OP_REQUEST.
    pub fn new_local(stream: S, peer_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(
            stream,
            peer_cid,
            local_port,
            peer_port,
            ConnState::LocalInit,
        );
        c.pending = P_REQUEST;
        c
    }

    /// A connection the guest asked for (`req` is its OP_REQUEST), already connected to the
    /// host socket: owes the guest an OP_RESPONSE.
    pub fn new_peer(stream: S, peer_cid: u64, req: &PacketHeader) -> Self {
        let mut c = Self::new(
            stream,
            peer_cid,
            req.dst_port,
            req.src_port,
            ConnState::Established,
        );
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.pending = P_RESPONSE;
        c
    }

    fn new(stream: S, peer_cid: u64, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Self {
            stream,
            state,
            peer_cid,
            local_port,
            peer_port,
            pending: 0,
            rx_data_ready: false,
            host_eof: false,
            peer_shut: 0,
            write_shut_done: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_requested: false,
            tx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            prefix: Vec::new(),
            tx_buf: VecDeque::new(),
        }
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn into_stream(self) -> S {
        self.stream
    }

    pub fn state(&self) -> ConnState {
        self.state
    }

    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    pub fn peer_port(&self) -> u32 {
        self.peer_port
    }

    pub fn is_dead(&self) -> bool {
        self.state == ConnState::Dead
    }

    /// Bytes buffered for the host.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len() + self.prefix.len()
    }

    /// How many more bytes the guest can take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Aborts the connection: an RST is owed to the guest and nothing else.
    pub fn kill(&mut self, why: &'static str) {
        if matches!(self.state, ConnState::Killed | ConnState::Dead) {
            return;
        }
        crate::guest_debug!(
            local = self.local_port,
            peer = self.peer_port,
            buffered = self.buffered(),
            "vsock: resetting a connection: {why}"
        );
        self.state = ConnState::Killed;
        self.pending = P_RST;
        self.rx_data_ready = false;
        self.prefix.clear();
        self.tx_buf = VecDeque::new();
    }

    /// One line of state for a debug dump.
    pub fn describe(&self) -> String {
        format!(
            "{}<->{} {:?} pending={:#x} rx_ready={} host_eof={} peer_shut={} \
             peer_buf={} peer_fwd={} rx_cnt={} credit={} credit_req={} \
             tx_cnt={} fwd_cnt={} fwd_sent={} buffered={} interest={:?}",
            self.local_port,
            self.peer_port,
            self.state,
            self.pending,
            self.rx_data_ready,
            self.host_eof,
            self.peer_shut,
            self.peer_buf_alloc,
            self.peer_fwd_cnt,
            self.rx_cnt,
            self.peer_credit(),
            self.credit_requested,
            self.tx_cnt,
            self.fwd_cnt,
            self.last_fwd_cnt_sent,
            self.buffered(),
            self.interest(),
        )
    }

    /// The events the host socket should be polled for (empty: not polled at all).
    pub fn interest(&self) -> EventSet {
        let mut ev = EventSet::empty();
        match self.state {
            // Only whether the host program gave up: a guest that never answers the
            // REQUEST must not keep the connection (and its fd) for ever.
            ConnState::LocalInit => return EventSet::HANG_UP,
            ConnState::Established => {}
            ConnState::Killed | ConnState::Dead => return ev,
        }
        if self.wants_host_read() {
            ev |= EventSet::IN;
        }
        if self.buffered() > 0 {
            ev |= EventSet::OUT;
        }
        ev
    }

    fn wants_host_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.rx_data_ready
            && !self.host_eof
            && self.peer_shut & SHUTDOWN_RCV == 0
            && self.pending & P_RST == 0
    }

    /// Whether the connection has a packet for the guest.
    pub fn wants_rx(&self) -> bool {
        self.pending != 0
            || (self.rx_data_ready && (self.peer_credit() > 0 || !self.credit_requested))
    }

    /// The host socket polled with `events`.
    pub fn on_host_event(&mut self, events: EventSet) {
        if self.state == ConnState::LocalInit {
            if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                if self.pending & P_REQUEST != 0 {
                    // The guest never heard of it: nothing to tell it.
                    self.state = ConnState::Dead;
                    self.pending = 0;
                } else {
                    self.kill("the host closed before the guest answered");
                }
            }
            return;
        }
        if self.state != ConnState::Established {
            return;
        }
        if events.contains(EventSet::ERROR) {
            self.kill("host socket error");
            return;
        }
        if events.intersects(EventSet::OUT | EventSet::HANG_UP) && self.buffered() > 0 {
            self.flush();
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP)
            && self.wants_host_read()
        {
            self.rx_data_ready = true;
        }
    }

    /// A packet from the guest for this connection (cids and type already checked).
    pub fn on_guest_packet(&mut self, pkt: &TxPacket) {
        let hdr = &pkt.hdr;
        if matches!(self.state, ConnState::Killed | ConnState::Dead) {
            return;
        }
        if hdr.op == op::RST {
            if self.buffered() > 0 {
                crate::guest_debug!(
                    local = self.local_port,
                    peer = self.peer_port,
                    buffered = self.buffered(),
                    "vsock: the guest reset a connection with data not yet written to the host"
                );
            }
            self.state = ConnState::Dead;
            self.pending = 0;
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (self.state, hdr.op) {
            (ConnState::LocalInit, op::RESPONSE) => {
                self.state = ConnState::Established;
                self.prefix = format!("OK {}\n", self.local_port).into_bytes();
                self.flush();
            }
            (ConnState::Established, op::RW) => self.guest_data(&pkt.payload),
            (ConnState::Established, op::SHUTDOWN) => {
                self.peer_shut |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.maybe_finish();
            }
            (ConnState::Established, op::CREDIT_UPDATE) => {}
            (ConnState::Established, op::CREDIT_REQUEST) => self.pending |= P_CREDIT_UPDATE,
            _ => self.kill("unexpected packet"),
        }
    }

    fn guest_data(&mut self, data: &[u8]) {
        if self.peer_shut & SHUTDOWN_SEND != 0 {
            self.kill("data after the guest shut down sending");
            return;
        }
        let Ok(len) = u32::try_from(data.len()) else {
            self.kill("payload too long");
            return;
        };
        // What the guest sent beyond the forwarded count we last told it.
        let unacked = u64::from((self.tx_cnt - self.last_fwd_cnt_sent).0);
        if unacked + u64::from(len) > u64::from(CONN_BUF_SIZE)
            || self.tx_buf.len() + data.len() > CONN_BUF_SIZE as usize
        {
            self.kill("credit overrun");
            return;
        }
        self.tx_cnt += len;
        let mut rest = data;
        if self.buffered() == 0 {
            match self.stream.write(data) {
                Ok(n) => {
                    rest = &data[n.min(data.len())..];
                    // n <= data.len() <= u32::MAX.
                    self.fwd_cnt += n as u32;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.kill("host write failed");
                    return;
                }
            }
        }
        if !rest.is_empty() && self.tx_buf.capacity() == 0 {
            // One allocation that never grows: the credit check bounds the contents.
            self.tx_buf = VecDeque::with_capacity(CONN_BUF_SIZE as usize);
        }
        self.tx_buf.extend(rest);
        self.check_credit_update();
        self.maybe_finish();
    }

    /// Writes buffered bytes to the host until it would block.
    fn flush(&mut self) {
        while !self.prefix.is_empty() {
            match self.stream.write(&self.prefix) {
                Ok(0) => return self.kill("host write failed"),
                Ok(n) => {
                    self.prefix.drain(..n.min(self.prefix.len()));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.kill("host write failed"),
            }
        }
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return self.kill("host write failed"),
                Ok(n) => {
                    let n = n.min(front.len());
                    self.tx_buf.drain(..n);
                    // n <= CONN_BUF_SIZE.
                    self.fwd_cnt += n as u32;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.kill("host write failed"),
            }
        }
        if self.tx_buf.is_empty() {
            // Idle connections hold no buffer.
            self.tx_buf = VecDeque::new();
        }
        self.check_credit_update();
        self.maybe_finish();
    }

    fn check_credit_update(&mut self) {
        let unadvertised = (self.fwd_cnt - self.last_fwd_cnt_sent).0;
        if unadvertised == 0 {
            return;
        }
        let guest_view_used = (self.tx_cnt - self.last_fwd_cnt_sent).0;
        let guest_view_free = CONN_BUF_SIZE.saturating_sub(guest_view_used);
        if guest_view_free < CREDIT_UPDATE_THRESHOLD
            && (unadvertised >= CREDIT_UPDATE_THRESHOLD || self.tx_buf.is_empty())
        {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    /// Half-closes the host socket and ends the connection once both sides are done.
    fn maybe_finish(&mut self) {
        if self.state != ConnState::Established || self.buffered() > 0 {
            return;
        }
        if self.peer_shut & SHUTDOWN_SEND != 0 && !self.write_shut_done {
            self.write_shut_done = true;
            crate::guest_debug!(
                local = self.local_port,
                peer = self.peer_port,
                bytes = self.fwd_cnt.0,
                "vsock: the guest finished sending; half-closing the host socket"
            );
            if self.stream.shutdown_write().is_err() {
                return self.kill("host half-close failed");
            }
        }
        let guest_done = self.peer_shut == SHUTDOWN_RCV | SHUTDOWN_SEND;
        let both_sent = self.peer_shut & SHUTDOWN_SEND != 0 && self.host_eof;
        if guest_done || both_sent {
            // Graceful: sent after the SHUTDOWN and data still owed.
            self.pending |= P_RST;
            self.rx_data_ready = false;
        }
    }

    fn header(&mut self, op: u16, flags: u32) -> PacketHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !P_CREDIT_UPDATE;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn take(&mut self, bit: u8, op: u16, flags: u32) -> Option<(PacketHeader, usize)> {
        if self.pending & bit == 0 {
            return None;
        }
        self.pending &= !bit;
        Some((self.header(op, flags), 0))
    }

    /// The next packet for the guest. Payload (for OP_RW) is read from the host socket into
    /// `buf` (the room in the guest's rx buffer); returns the header and payload length.
    pub fn next_rx_packet(&mut self, buf: &mut [u8]) -> Option<(PacketHeader, usize)> {
        match self.state {
            ConnState::Dead => return None,
            ConnState::Killed => {
                self.state = ConnState::Dead;
                self.pending = 0;
                return Some((self.header(op::RST, 0), 0));
            }
            ConnState::LocalInit => return self.take(P_REQUEST, op::REQUEST, 0),
            ConnState::Established => {}
        }
        if let Some(p) = self.take(P_RESPONSE, op::RESPONSE, 0) {
            return Some(p);
        }
        if self.rx_data_ready {
            let credit = self.peer_credit() as usize;
            let n = buf.len().min(credit).min(MAX_PAYLOAD);
            if credit == 0 {
                if !self.credit_requested {
                    self.credit_requested = true;
                    self.pending |= P_CREDIT_REQUEST;
                }
            } else if n > 0 {
                match self.stream.read(&mut buf[..n]) {
                    Ok(0) => {
                        self.rx_data_ready = false;
                        self.host_eof = true;
                        self.pending |= P_SHUTDOWN;
                        self.maybe_finish();
                    }
                    Ok(k) => {
                        let k = k.min(n);
                        // k <= MAX_PAYLOAD.
                        self.rx_cnt += k as u32;
                        return Some((self.header(op::RW, 0), k));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => self.rx_data_ready = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.kill("host read failed");
                        return self.next_rx_packet(buf);
                    }
                }
            }
        }
        if let Some(p) = self.take(P_CREDIT_UPDATE, op::CREDIT_UPDATE, 0) {
            return Some(p);
        }
        if let Some(p) = self.take(P_CREDIT_REQUEST, op::CREDIT_REQUEST, 0) {
            return Some(p);
        }
        if let Some(p) = self.take(P_SHUTDOWN, op::SHUTDOWN, SHUTDOWN_SEND) {
            return Some(p);
        }
        if self.pending & P_RST != 0 {
            self.state = ConnState::Dead;
            self.pending = 0;
            return Some((self.header(op::RST, 0), 0));
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests;
