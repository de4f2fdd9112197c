//! The rtnetlink socket: one request at a time, answered by an ACK (or the
//! kernel's errno), or by a multi-part dump.
//!
//! Every request carries `NLM_F_REQUEST | NLM_F_ACK`, so the kernel always
//! answers with an `NLMSG_ERROR` whose code is 0 (done) or a negative errno,
//! which [`Error::Netlink`] keeps. Extended ACKs are on: when the kernel adds
//! a message ("Nexthop has invalid gateway") it is kept too.

use std::io;

use netlink_packet_core::{
    DecodeError, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_ACK_TLVS,
    NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::SocketAddr;

/// How often a dump the kernel marks as interrupted (`NLM_F_DUMP_INTR`: the
/// table changed meanwhile) is retried before its last answer is returned.
const DUMP_RETRIES: usize = 5;

/// `NLMSGERR_ATTR_MSG`: the extended ACK's error string.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Errors of netlink requests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused the request; `source` is its errno.
    #[error("Netlink {op} failed{}", kernel_says(.message))]
    Netlink {
        op: &'static str,
        /// The kernel's extended-ACK message, if it gave one.
        message: Option<String>,
        #[source]
        source: io::Error,
    },
    /// The socket itself failed (open, send, receive).
    #[error("Cannot {what} (netlink {op})")]
    Io {
        op: &'static str,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("Malformed netlink reply to {op}")]
    Decode {
        op: &'static str,
        #[source]
        source: DecodeError,
    },
    #[error("Unexpected netlink reply to {op}: {what}")]
    Unexpected { op: &'static str, what: String },
}

fn kernel_says(message: &Option<String>) -> String {
    match message {
        Some(m) => format!(" (kernel: {m})"),
        None => String::new(),
    }
}

impl Error {
    /// The errno of a refused request or a failed socket call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { source, .. } | Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The operation that failed.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Netlink { op, .. }
            | Self::Io { op, .. }
            | Self::Decode { op, .. }
            | Self::Unexpected { op, .. } => op,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A `NETLINK_ROUTE` socket bound to the calling thread's network namespace
/// (the one current when it was opened).
#[derive(Debug)]
pub struct Socket {
    inner: netlink_sys::Socket,
    seq: u32,
}

impl Socket {
    /// Opens a socket in the current network namespace.
    pub fn new() -> Result<Self> {
        let io = |what| {
            move |source| Error::Io {
                op: "open",
                what,
                source,
            }
        };
        let mut inner = netlink_sys::Socket::new(NETLINK_ROUTE).map_err(io("open the socket"))?;
        inner.bind_auto().map_err(io("bind the socket"))?;
        inner
            .connect(&SocketAddr::new(0, 0))
            .map_err(io("connect the socket to the kernel"))?;
        // Best effort: older kernels lack them, and requests work without.
        let _ = inner.set_ext_ack(true);
        let _ = inner.set_cap_ack(true);
        Ok(Self { inner, seq: 0 })
    }

    /// Sends one request and waits for its ACK. `flags` are added to
    /// `NLM_F_REQUEST | NLM_F_ACK`: e.g. `NLM_F_CREATE | NLM_F_EXCL` for a new
    /// object, `NLM_F_REPLACE` to replace one. Replies other than the ACK
    /// (with `NLM_F_ECHO`) are skipped.
    pub fn request(
        &mut self,
        op: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<()> {
        let seq = self.send(op, message, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        loop {
            let mut acked = false;
            self.receive(op, seq, |msg| match msg.payload {
                NetlinkPayload::Error(e) => {
                    acked = true;
                    match e.code {
                        None => Ok(Flow::Stop),
                        Some(_) => Err(Error::Netlink {
                            op,
                            message: ext_ack_message(msg.header.flags, &e.header),
                            source: e.to_io(),
                        }),
                    }
                }
                _ => Ok(Flow::More),
            })?;
            if acked {
                return Ok(());
            }
        }
    }

    /// Sends a dump request (`NLM_F_REQUEST | NLM_F_DUMP`) and returns every
    /// message of the multi-part answer. A dump the kernel says was
    /// interrupted by a change is done again.
    pub fn dump(
        &mut self,
        op: &'static str,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut tries = 0;
        loop {
            let seq = self.send(op, message.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            let mut done = false;
            while !done {
                self.receive(op, seq, |msg| {
                    if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match msg.payload {
                        NetlinkPayload::InnerMessage(m) => {
                            out.push(m);
                            Ok(Flow::More)
                        }
                        NetlinkPayload::Done(d) if d.code == 0 => {
                            done = true;
                            Ok(Flow::Stop)
                        }
                        NetlinkPayload::Done(d) => Err(Error::Netlink {
                            op,
                            message: None,
                            source: io::Error::from_raw_os_error(d.code.abs()),
                        }),
                        NetlinkPayload::Error(e) if e.code.is_some() => Err(Error::Netlink {
                            op,
                            message: ext_ack_message(msg.header.flags, &e.header),
                            source: e.to_io(),
                        }),
                        NetlinkPayload::Overrun(_) => Err(Error::Unexpected {
                            op,
                            what: "overrun".into(),
                        }),
                        _ => Ok(Flow::More),
                    }
                })?;
            }
            tries += 1;
            if !interrupted || tries > DUMP_RETRIES {
                return Ok(out);
            }
        }
    }

    fn send(&mut self, op: &'static str, message: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        let sent = self.inner.send(&buf, 0).map_err(|source| Error::Io {
            op,
            what: "send the request",
            source,
        })?;
        if sent != buf.len() {
            return Err(Error::Unexpected {
                op,
                what: format!("sent {sent} of {} bytes", buf.len()),
            });
        }
        Ok(self.seq)
    }

    /// Reads one datagram and hands its messages for `seq` to `f`, until `f`
    /// says stop or the datagram ends. Messages of other requests (a late
    /// answer to an earlier one) are skipped.
    fn receive(
        &mut self,
        op: &'static str,
        seq: u32,
        mut f: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> Result<Flow>,
    ) -> Result<()> {
        let (buf, _) = self.inner.recv_from_full().map_err(|source| Error::Io {
            op,
            what: "receive the reply",
            source,
        })?;
        let mut offset = 0;
        while offset < buf.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                .map_err(|source| Error::Decode { op, source })?;
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(Error::Unexpected {
                    op,
                    what: "a message of length 0".into(),
                });
            }
            offset += align4(len);
            if msg.header.sequence_number != seq {
                continue;
            }
            if f(msg)? == Flow::Stop {
                break;
            }
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    More,
    Stop,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The extended ACK's error string from an `NLMSG_ERROR` payload after its
/// code (`payload` is the original request's header, or the whole request
/// unless `NLM_F_CAPPED`, then the TLVs when `NLM_F_ACK_TLVS`).
pub fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let request_len = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = payload.get(..4)?;
        u32::from_ne_bytes(len.try_into().ok()?) as usize
    };
    let mut tlvs = payload.get(align4(request_len)..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let value = &tlvs[4..len];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            let text = String::from_utf8_lossy(&value[..end]).into_owned();
            return (!text.is_empty()).then_some(text);
        }
        tlvs = tlvs.get(align4(len)..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn ext_ack_message_of_a_capped_ack() {
        let mut payload = vec![0u8; 16];
        payload.extend(tlv(2, &7u32.to_ne_bytes())); // NLMSGERR_ATTR_OFFS
        payload.extend(tlv(NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0"));
        assert_eq!(
            ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("Nexthop has invalid gateway")
        );
        // Without the TLV flag there is nothing to read.
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &payload), None);
    }

    #[test]
    fn ext_ack_message_after_a_whole_request() {
        // An uncapped ACK carries the whole request (here 22 bytes, padded).
        let mut payload = 22u32.to_ne_bytes().to_vec();
        payload.resize(24, 0xee);
        payload.extend(tlv(NLMSGERR_ATTR_MSG, b"bad\0"));
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("bad")
        );
    }

    #[test]
    fn ext_ack_message_survives_garbage() {
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &[]), None);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &[0xff; 3]), None);
        let mut payload = vec![0u8; 16];
        payload.extend_from_slice(&[200, 0, 1, 0, b'x']); // length past the end
        assert_eq!(
            ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload),
            None
        );
        let mut payload = vec![0u8; 16];
        payload.extend_from_slice(&[0, 0, 1, 0]); // length 0
        assert_eq!(
            ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload),
            None
        );
    }

    #[test]
    fn errors_keep_the_errno_and_the_kernel_message() {
        let e = Error::Netlink {
            op: "add route",
            message: Some("Nexthop has invalid gateway".into()),
            source: io::Error::from_raw_os_error(libc::ENETUNREACH),
        };
        assert_eq!(e.errno(), Some(libc::ENETUNREACH));
        assert_eq!(e.op(), "add route");
        assert_eq!(
            e.to_string(),
            "Netlink add route failed (kernel: Nexthop has invalid gateway)"
        );
        let e = Error::Netlink {
            op: "set link",
            message: None,
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert_eq!(e.to_string(), "Netlink set link failed");
    }
}
