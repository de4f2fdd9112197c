//! Network links (`ip link`): list them, find one by name or MAC, change
//! its state, name, MTU or MAC, add dummy and veth links, delete them.

use std::fmt;
use std::str::FromStr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::ip::ParseError;
use crate::socket::{Result, Socket};

/// `IFF_UP`.
pub const IFF_UP: u32 = libc::IFF_UP as u32;
/// `IFF_LOOPBACK`.
pub const IFF_LOOPBACK: u32 = libc::IFF_LOOPBACK as u32;
/// `IFF_LOWER_UP`: the carrier is on.
pub const IFF_LOWER_UP: u32 = 1 << 16;

/// A 48-bit Ethernet address; parses "aa:bb:cc:dd:ee:ff" (either case),
/// prints lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The address from a link's `IFLA_ADDRESS`, if it is 6 bytes long.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(Self)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = ParseError;

    fn from_str(s: &str) -> std::result::Result<Self, ParseError> {
        let bad = || ParseError::Mac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

/// A link's operational state (`IFLA_OPERSTATE`, RFC 2863).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperState {
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
    Other(u8),
}

impl From<&State> for OperState {
    fn from(s: &State) -> Self {
        match s {
            State::Unknown => Self::Unknown,
            State::NotPresent => Self::NotPresent,
            State::Down => Self::Down,
            State::LowerLayerDown => Self::LowerLayerDown,
            State::Testing => Self::Testing,
            State::Dormant => Self::Dormant,
            State::Up => Self::Up,
            other => Self::Other(u8::from(*other)),
        }
    }
}

impl fmt::Display for OperState {
    /// As `ip link` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => f.write_str("UNKNOWN"),
            Self::NotPresent => f.write_str("NOTPRESENT"),
            Self::Down => f.write_str("DOWN"),
            Self::LowerLayerDown => f.write_str("LOWERLAYERDOWN"),
            Self::Testing => f.write_str("TESTING"),
            Self::Dormant => f.write_str("DORMANT"),
            Self::Up => f.write_str("UP"),
            Self::Other(n) => write!(f, "state {n}"),
        }
    }
}

/// One link, as `ip link` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `None` for links without a 6-byte hardware address (tun, ipip).
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// `IFLA_INFO_KIND` ("veth", "dummy", "tun", "bridge"); `None` for
    /// physical devices (virtio-net) and `lo`.
    pub kind: Option<String>,
    /// The `IFF_*` flags.
    pub flags: u32,
    pub oper_state: OperState,
}

impl Link {
    /// Administratively up (`IFF_UP`).
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    pub fn is_loopback(&self) -> bool {
        self.flags & IFF_LOOPBACK != 0
    }

    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            kind: None,
            flags: m.header.flags.bits(),
            oper_state: OperState::Unknown,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(b) => link.mac = MacAddr::from_slice(b),
                LinkAttribute::Mtu(v) => link.mtu = *v,
                LinkAttribute::OperState(s) => link.oper_state = s.into(),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.index, self.name)?;
        if let Some(mac) = self.mac {
            write!(f, " {mac}")?;
        }
        write!(f, " mtu {} {}", self.mtu, self.oper_state)?;
        if let Some(kind) = &self.kind {
            write!(f, " ({kind})")?;
        }
        Ok(())
    }
}

/// Every link of the socket's network namespace.
pub fn list(sock: &mut Socket) -> Result<Vec<Link>> {
    let replies = sock.dump(
        "dump links",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )?;
    Ok(replies
        .iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewLink(m) => Some(Link::from_message(m)),
            _ => None,
        })
        .collect())
}

/// The link named `name`, if any.
pub fn by_name(sock: &mut Socket, name: &str) -> Result<Option<Link>> {
    Ok(list(sock)?.into_iter().find(|l| l.name == name))
}

/// The link with this index, if any.
pub fn by_index(sock: &mut Socket, index: u32) -> Result<Option<Link>> {
    Ok(list(sock)?.into_iter().find(|l| l.index == index))
}

/// The links whose MAC is `mac` (a veth pair's ends, a bond and its ports
/// may share one).
pub fn by_mac(sock: &mut Socket, mac: MacAddr) -> Result<Vec<Link>> {
    Ok(list(sock)?
        .into_iter()
        .filter(|l| l.mac == Some(mac))
        .collect())
}

fn change(
    index: u32,
    flags: LinkFlags,
    mask: LinkFlags,
    attributes: Vec<LinkAttribute>,
) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = flags;
    m.header.change_mask = mask;
    m.attributes = attributes;
    RouteNetlinkMessage::NewLink(m)
}

/// Brings the link up.
pub fn set_up(sock: &mut Socket, index: u32) -> Result<()> {
    sock.request(
        "set link up",
        change(index, LinkFlags::Up, LinkFlags::Up, vec![]),
        0,
    )
}

/// Takes the link down.
pub fn set_down(sock: &mut Socket, index: u32) -> Result<()> {
    sock.request(
        "set link down",
        change(index, LinkFlags::empty(), LinkFlags::Up, vec![]),
        0,
    )
}

/// Renames the link (the kernel wants it down: `EBUSY` otherwise).
pub fn set_name(sock: &mut Socket, index: u32, name: &str) -> Result<()> {
    sock.request(
        "set link name",
        change(
            index,
            LinkFlags::empty(),
            LinkFlags::empty(),
            vec![LinkAttribute::IfName(name.to_string())],
        ),
        0,
    )
}

/// Sets the MTU.
pub fn set_mtu(sock: &mut Socket, index: u32, mtu: u32) -> Result<()> {
    sock.request(
        "set link MTU",
        change(
            index,
            LinkFlags::empty(),
            LinkFlags::empty(),
            vec![LinkAttribute::Mtu(mtu)],
        ),
        0,
    )
}

/// Sets the hardware address.
pub fn set_mac(sock: &mut Socket, index: u32, mac: MacAddr) -> Result<()> {
    sock.request(
        "set link MAC",
        change(
            index,
            LinkFlags::empty(),
            LinkFlags::empty(),
            vec![LinkAttribute::Address(mac.0.to_vec())],
        ),
        0,
    )
}

/// Deletes the link (a veth's peer goes with it).
pub fn delete(sock: &mut Socket, index: u32) -> Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    sock.request("delete link", RouteNetlinkMessage::DelLink(m), 0)
}

/// Adds a dummy link (`ip link add NAME type dummy`), down.
pub fn add_dummy(sock: &mut Socket, name: &str) -> Result<()> {
    let mut m = LinkMessage::default();
    m.attributes = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]),
    ];
    sock.request(
        "add dummy link",
        RouteNetlinkMessage::NewLink(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Adds a veth pair (`ip link add NAME type veth peer name PEER`), both
/// ends down.
pub fn add_veth(sock: &mut Socket, name: &str, peer: &str) -> Result<()> {
    let mut peer_msg = LinkMessage::default();
    peer_msg.attributes = vec![LinkAttribute::IfName(peer.to_string())];
    let mut m = LinkMessage::default();
    m.attributes = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]),
    ];
    sock.request(
        "add veth link",
        RouteNetlinkMessage::NewLink(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Checks a link name as the kernel's `dev_valid_name` does: 1 to 15
/// bytes, not "." or "..", no '/', ':' or white space.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses() {
        let mac: MacAddr = "AA:bb:0c:dd:ee:0F".parse().unwrap();
        assert_eq!(mac.0, [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x0f]);
        assert_eq!(mac.to_string(), "aa:bb:0c:dd:ee:0f");
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa-bb-cc-dd-ee-ff",
            "a:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:fg",
            "+a:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:ff:",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
        assert_eq!(
            MacAddr::from_slice(&[1, 2, 3, 4, 5, 6]),
            Some(MacAddr([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(MacAddr::from_slice(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn link_names() {
        for ok in ["eth0", "veth-abc_1", "a", &"x".repeat(15)] {
            assert!(valid_name(ok), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:1",
            "a b",
            "a\tb",
            &"x".repeat(16),
            "a\0",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn links_from_messages() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        m.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Mtu(1450),
            LinkAttribute::OperState(State::Up),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let l = Link::from_message(&m);
        assert_eq!(l.index, 7);
        assert_eq!(l.name, "eth0");
        assert_eq!(l.mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(l.mtu, 1450);
        assert_eq!(l.kind.as_deref(), Some("veth"));
        assert!(l.is_up() && !l.is_loopback());
        assert_eq!(l.flags & IFF_LOWER_UP, IFF_LOWER_UP);
        assert_eq!(l.oper_state, OperState::Up);
        assert_eq!(
            l.to_string(),
            "7: eth0 02:00:00:00:00:01 mtu 1450 UP (veth)"
        );
    }
}
