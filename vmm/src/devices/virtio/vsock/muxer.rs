//! The host side of the hybrid vsock: the listening Unix socket host programs connect to
//! (`CONNECT <port>\n` / `OK <hostport>\n`), the Unix sockets `<uds_path>_<port>` the guest
//! connects to, and the table of connections between the two.
//!
//! The muxer never blocks: all sockets are nonblocking. It does not own the epoll set; it
//! queues the registrations it needs as [`CtlOp`]s, which the event handler applies (a
//! closed connection's socket is handed over in its `Remove` so that it is closed only
//! after leaving the epoll set).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::EventSet;

use super::connection::Connection;
use super::packet::{op, PacketHeader, TxPacket, HOST_CID, TYPE_STREAM};
use crate::devices::virtio::ratelimit::WarnLimiter;

/// Most connections (established or waiting for their CONNECT line) at a time.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most bytes of guest data all connections together hold for host programs that have not
/// read them yet. Each may hold up to its credit, `CONN_BUF_SIZE` (256 KiB), which over
/// [`MAX_CONNECTIONS`] would be 256 MiB; a connection whose data would take the total past
/// this is reset instead.
pub const MAX_BUFFERED_TOTAL: usize = 32 << 20;
/// Most RSTs for unknown connections waiting for guest rx buffers; more are dropped.
pub const MAX_PENDING_RST: usize = 256;
/// Longest `CONNECT <port>\n` line we accept.
pub const MAX_CONNECT_LINE: usize = 32;
/// First host-side port handed to host-initiated connections (as Firecracker does).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Most connections accepted per listener event (the rest wait for the next one).
const ACCEPT_BATCH: usize = 64;

/// Errors setting up the host socket.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("{0} exists and is not a Unix socket")]
    NotASocket(PathBuf),
    #[error("Cannot remove the stale socket {0}")]
    RemoveStale(PathBuf, #[source] std::io::Error),
    #[error("Cannot listen on {0}")]
    Bind(PathBuf, #[source] std::io::Error),
}

/// An epoll change the event handler must make for the muxer.
#[derive(Debug)]
pub enum CtlOp {
    Add(RawFd, EventSet),
    Modify(RawFd, EventSet),
    /// Remove the fd, then drop the stream (closing it) if one is given.
    Remove(RawFd, Option<UnixStream>),
    /// Close a stream that is not in epoll, after the ops queued before it (which may
    /// still name its fd) are applied, so its fd number cannot be reused under them.
    Close(UnixStream),
}

/// Connections are keyed by (host port, guest port).
type ConnKey = (u32, u32);

/// A host program that connected and has not yet sent its whole CONNECT line.
struct PendingHost {
    stream: UnixStream,
    line: ConnectLine,
}

/// What one more byte of a CONNECT line gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStep {
    /// Not done yet: read another byte.
    More,
    /// The line ended and named this guest port.
    Port(u32),
    /// Not a valid `CONNECT <port>\n` line, or longer than [`MAX_CONNECT_LINE`]: close.
    Invalid,
}

/// The `CONNECT <port>\n` line of a host program, fed one byte at a time (the socket is
/// read a byte at a time, so that nothing past the line is consumed). Holds at most
/// [`MAX_CONNECT_LINE`] bytes, newline included.
#[derive(Debug, Default)]
pub struct ConnectLine {
    line: Vec<u8>,
}

impl ConnectLine {
    /// Takes the next byte. After anything but [`LineStep::More`] the line is done with.
    pub fn push(&mut self, byte: u8) -> LineStep {
        if byte == b'\n' {
            return parse_connect(&self.line).map_or(LineStep::Invalid, LineStep::Port);
        }
        // Room must stay for the newline.
        if self.line.len() + 1 >= MAX_CONNECT_LINE {
            return LineStep::Invalid;
        }
        self.line.push(byte);
        LineStep::More
    }
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    pending: HashMap<RawFd, PendingHost>,
    conns: HashMap<ConnKey, Connection<UnixStream>>,
    fd_keys: HashMap<RawFd, ConnKey>,
    /// What each connection's fd is registered for (absent: not in the epoll set).
    registered: HashMap<RawFd, EventSet>,
    rxq: VecDeque<ConnKey>,
    queued: HashSet<ConnKey>,
    rst_q: VecDeque<PacketHeader>,
    next_local_port: u32,
    ctl: Vec<CtlOp>,
    warn: WarnLimiter,
    max_conns: usize,
    /// What each connection held for its host program when last looked at, and the sum.
    buffered_by: HashMap<ConnKey, usize>,
    buffered_total: usize,
    max_buffered: usize,
}

impl Muxer {
    /// Listens on `uds_path`, replacing a stale socket file there.
    pub fn new(guest_cid: u32, uds_path: &Path) -> Result<Self, MuxerError> {
        match std::fs::symlink_metadata(uds_path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(uds_path)
                .map_err(|e| MuxerError::RemoveStale(uds_path.to_owned(), e))?,
            Ok(_) => return Err(MuxerError::NotASocket(uds_path.to_owned())),
            Err(_) => {}
        }
        let listener =
            UnixListener::bind(uds_path).map_err(|e| MuxerError::Bind(uds_path.to_owned(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| MuxerError::Bind(uds_path.to_owned(), e))?;
        Ok(Self {
            guest_cid: u64::from(guest_cid),
            uds_path: uds_path.to_owned(),
            listener,
            pending: HashMap::new(),
            conns: HashMap::new(),
            fd_keys: HashMap::new(),
            registered: HashMap::new(),
            rxq: VecDeque::new(),
            queued: HashSet::new(),
            rst_q: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            ctl: Vec::new(),
            warn: WarnLimiter::default(),
            max_conns: MAX_CONNECTIONS,
            buffered_by: HashMap::new(),
            buffered_total: 0,
            max_buffered: MAX_BUFFERED_TOTAL,
        })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The epoll changes queued since the last call.
    pub fn take_ctl_ops(&mut self) -> Vec<CtlOp> {
        std::mem::take(&mut self.ctl)
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    /// Bytes of guest data all connections hold for their host programs.
    pub fn buffered_total(&self) -> usize {
        self.buffered_total
    }

    /// Whether a packet waits for a guest rx buffer.
    pub fn has_rx(&self) -> bool {
        !self.rst_q.is_empty() || !self.rxq.is_empty()
    }

    /// Accepts host programs waiting on the listening socket.
    pub fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.warn.allow().is_some() {
                        tracing::warn!("vsock: cannot accept a host connection: {e}");
                    }
                    return;
                }
            };
            if self.connection_count() >= self.max_conns {
                if self.warn.allow().is_some() {
                    tracing::warn!("vsock: connection table full, refusing a host connection");
                }
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            self.pending.insert(
                fd,
                PendingHost {
                    stream,
                    line: ConnectLine::default(),
                },
            );
            self.ctl.push(CtlOp::Add(fd, EventSet::IN));
        }
    }

    /// A connection socket (not the listener) polled with `events`.
    pub fn handle_fd_event(&mut self, fd: RawFd, events: EventSet) {
        if self.pending.contains_key(&fd) {
            self.read_connect_line(fd);
        } else if let Some(&key) = self.fd_keys.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.on_host_event(events);
            }
            self.post_conn(key);
        }
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        // One byte at a time, so nothing past the line is consumed.
        let mut byte = [0u8; 1];
        let done = loop {
            match p.stream.read(&mut byte) {
                Ok(0) => break LineStep::Invalid,
                Ok(_) => match p.line.push(byte[0]) {
                    LineStep::More => {}
                    step => break step,
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break LineStep::Invalid,
            }
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let LineStep::Port(peer_port) = done else {
            tracing::debug!("vsock: closing a host connection without a valid CONNECT line");
            self.ctl.push(CtlOp::Remove(fd, Some(p.stream)));
            return;
        };
        let Some(local_port) = self.alloc_local_port(peer_port) else {
            self.ctl.push(CtlOp::Remove(fd, Some(p.stream)));
            return;
        };
        let key = (local_port, peer_port);
        let conn = Connection::new_local(p.stream, self.guest_cid, local_port, peer_port);
        self.registered.insert(fd, EventSet::IN);
        self.fd_keys.insert(fd, key);
        self.conns.insert(key, conn);
        self.post_conn(key);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = match port.checked_add(1) {
                Some(p) if p != u32::MAX => p,
                _ => FIRST_LOCAL_PORT,
            };
            if !self.conns.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }

    /// A packet from the guest's tx queue.
    pub fn handle_guest_packet(&mut self, pkt: &TxPacket) {
        let h = &pkt.hdr;
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            if self.warn.allow().is_some() {
                tracing::warn!(
                    src = h.src_cid,
                    dst = h.dst_cid,
                    "vsock: dropping a guest packet with bad CIDs"
                );
            }
            return;
        }
        if h.type_ != TYPE_STREAM {
            self.reply_rst(h);
            return;
        }
        let key = (h.dst_port, h.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.on_guest_packet(pkt);
            let before = self.buffered_by.get(&key).copied().unwrap_or(0);
            let grown = conn.buffered().saturating_sub(before);
            if grown > 0 && self.buffered_total + grown > self.max_buffered {
                conn.kill(
                    "the VM's connections hold too much data their host programs did not read",
                );
            }
            self.post_conn(key);
            return;
        }
        match h.op {
            op::REQUEST => self.guest_connect(h),
            op::RST => {}
            _ => self.reply_rst(h),
        }
    }

    /// A guest packet whose header was readable but whose payload was not (too long, or
    /// past the end of its chain): its connection is reset.
    pub fn handle_bad_payload(&mut self, h: &PacketHeader) {
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            return;
        }
        let key = (h.dst_port, h.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.kill("unreadable payload");
            self.post_conn(key);
        } else {
            self.reply_rst(h);
        }
    }

    fn reply_rst(&mut self, h: &PacketHeader) {
        if h.op == op::RST {
            return;
        }
        if self.rst_q.len() >= MAX_PENDING_RST {
            if self.warn.allow().is_some() {
                tracing::warn!("vsock: too many RSTs pending, dropping one");
            }
            return;
        }
        self.rst_q.push_back(PacketHeader {
            src_cid: HOST_CID,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            type_: h.type_,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn guest_connect(&mut self, h: &PacketHeader) {
        if self.connection_count() >= self.max_conns {
            if self.warn.allow().is_some() {
                tracing::warn!("vsock: connection table full, refusing a guest connection");
            }
            return self.reply_rst(h);
        }
        let mut path: OsString = self.uds_path.as_os_str().to_owned();
        path.push(format!("_{}", h.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                crate::guest_debug!(port = h.dst_port, "vsock: guest connection refused: {e}");
                return self.reply_rst(h);
            }
        };
        let key = (h.dst_port, h.src_port);
        let conn = Connection::new_peer(stream, self.guest_cid, h);
        self.fd_keys.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.post_conn(key);
    }

    /// After a connection changed: drops it if finished, otherwise updates its epoll
    /// registration and its place in the rx queue.
    fn post_conn(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let fd = conn.stream().as_raw_fd();
        let held = if conn.is_dead() { 0 } else { conn.buffered() };
        let before = if held == 0 {
            self.buffered_by.remove(&key)
        } else {
            self.buffered_by.insert(key, held)
        };
        self.buffered_total = self.buffered_total - before.unwrap_or(0) + held;
        if conn.is_dead() {
            let Some(conn) = self.conns.remove(&key) else {
                return;
            };
            self.fd_keys.remove(&fd);
            let stream = conn.into_stream();
            if self.registered.remove(&fd).is_some() {
                self.ctl.push(CtlOp::Remove(fd, Some(stream)));
            } else {
                self.ctl.push(CtlOp::Close(stream));
            }
            return;
        }
        let want = conn.interest();
        let wants_rx = conn.wants_rx();
        match self.registered.get(&fd).copied() {
            None if !want.is_empty() => self.ctl.push(CtlOp::Add(fd, want)),
            Some(_) if want.is_empty() => self.ctl.push(CtlOp::Remove(fd, None)),
            Some(cur) if cur != want => self.ctl.push(CtlOp::Modify(fd, want)),
            _ => {}
        }
        if want.is_empty() {
            self.registered.remove(&fd);
        } else {
            self.registered.insert(fd, want);
        }
        if wants_rx && self.queued.insert(key) {
            self.rxq.push_back(key);
        }
    }

    /// The next packet for the guest, its payload read into `buf` (the room in the
    /// guest's rx buffer). Returns the header and the payload length.
    pub fn next_rx_packet(&mut self, buf: &mut [u8]) -> Option<(PacketHeader, usize)> {
        if let Some(h) = self.rst_q.pop_front() {
            return Some((h, 0));
        }
        for _ in 0..self.rxq.len() {
            let key = self.rxq.pop_front()?;
            self.queued.remove(&key);
            let pkt = self.conns.get_mut(&key).and_then(|c| c.next_rx_packet(buf));
            self.post_conn(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// Lines of state for a debug dump: the queues, then one per connection.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![format!(
            "muxer: {} connections, {} pending CONNECT, rx queue {}, RSTs queued {}, \
             {} bytes held for host programs",
            self.conns.len(),
            self.pending.len(),
            self.rxq.len(),
            self.rst_q.len(),
            self.buffered_total
        )];
        for (key, c) in &self.conns {
            let fd = c.stream().as_raw_fd();
            out.push(format!(
                "{} registered={:?} queued={}",
                c.describe(),
                self.registered.get(&fd),
                self.queued.contains(key)
            ));
        }
        out
    }

    #[cfg(test)]
    fn conn_state(&self, local_port: u32, peer_port: u32) -> Option<super::connection::ConnState> {
        self.conns.get(&(local_port, peer_port)).map(|c| c.state())
    }
}

/// Parses `CONNECT <port>` (the newline already stripped): decimal digits only, the port
/// a u32.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"CONNECT ")?;
    if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// Connects to a Unix socket without blocking: a listener whose backlog is full refuses
/// (EAGAIN) instead of stalling the event loop.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is a plain C struct for which all-zero bytes are valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a socket we just created and nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: addr is an initialised sockaddr_un and len does not exceed its size (the
    // path is shorter than sun_path); connect only reads it.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(sock))
}

#[cfg(test)]
pub(crate) mod tests;
