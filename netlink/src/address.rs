//! IPv4 and IPv6 addresses of links (`ip addr`): list, add, delete, flush.

use std::fmt;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
pub use netlink_packet_route::address::AddressFlags;
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::ip::{Family, IpNet};
use crate::route::{netlink_family, Scope};
use crate::socket::{Result, Socket};

/// One address of a link, as `ip addr` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The link's index.
    pub index: u32,
    /// The address and its prefix length (its family is the address's).
    pub net: IpNet,
    pub scope: Scope,
    /// `IFA_F_*`: [`AddressFlags::Nodad`], `Tentative`, `Permanent`, ...
    pub flags: AddressFlags,
    /// The IPv4 label ("eth0", "eth0:1").
    pub label: Option<String>,
}

impl Address {
    pub fn family(&self) -> Family {
        self.net.family()
    }

    fn from_message(m: &AddressMessage) -> Option<Self> {
        let mut local = None;
        let mut address = None;
        let mut label = None;
        // The header has the low 8 flag bits; IFA_FLAGS, if there, all 32.
        let mut flags = AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()));
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Label(l) => label = Some(l.clone()),
                AddressAttribute::Flags(f) => flags = *f,
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer
        // of a point-to-point link (and the same as IFA_LOCAL otherwise).
        let ip = local.or(address)?;
        Some(Self {
            index: m.header.index,
            net: IpNet::new(ip, u32::from(m.header.prefix_len)).ok()?,
            scope: Scope::from_raw(u8::from(m.header.scope)),
            flags,
            label,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} scope {} on #{}",
            self.family(),
            self.net,
            self.scope,
            self.index
        )
    }
}

/// Every address of every link.
pub fn list(sock: &mut Socket) -> Result<Vec<Address>> {
    let replies = sock.dump(
        "dump addresses",
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )?;
    Ok(replies
        .iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewAddress(m) => Address::from_message(m),
            _ => None,
        })
        .collect())
}

/// The addresses of one link.
pub fn list_link(sock: &mut Socket, index: u32) -> Result<Vec<Address>> {
    Ok(list(sock)?
        .into_iter()
        .filter(|a| a.index == index)
        .collect())
}

fn message(index: u32, net: &IpNet, flags: AddressFlags) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = netlink_family(net.family());
    m.header.prefix_len = net.prefix_len();
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    m.header.flags = AddressHeaderFlags::from_bits_truncate(flags.bits() as u8);
    // As `ip addr add`: IFA_LOCAL and IFA_ADDRESS both the address.
    m.attributes = vec![
        AddressAttribute::Local(net.addr()),
        AddressAttribute::Address(net.addr()),
    ];
    if !flags.is_empty() {
        m.attributes.push(AddressAttribute::Flags(flags));
    }
    m
}

/// Adds an address (`EEXIST` if the link has it). For IPv6 pass
/// [`AddressFlags::Nodad`] to make it usable at once, without duplicate
/// address detection.
pub fn add(sock: &mut Socket, index: u32, net: IpNet, flags: AddressFlags) -> Result<()> {
    sock.request(
        "add address",
        RouteNetlinkMessage::NewAddress(message(index, &net, flags)),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Deletes an address as listed.
pub fn delete(sock: &mut Socket, addr: &Address) -> Result<()> {
    let mut m = message(addr.index, &addr.net, AddressFlags::empty());
    m.header.scope = AddressScope::from(addr.scope.raw());
    sock.request("delete address", RouteNetlinkMessage::DelAddress(m), 0)
}

/// Deletes every address of a link (of one family, or both); returns how
/// many it deleted. An address already gone meanwhile (deleting an IPv4
/// primary takes its secondaries along) is not an error.
pub fn flush(sock: &mut Socket, index: u32, family: Option<Family>) -> Result<usize> {
    let mut n = 0;
    for a in list_link(sock, index)? {
        if family.is_some_and(|f| f != a.family()) {
            continue;
        }
        match delete(sock, &a) {
            Ok(()) => n += 1,
            Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use netlink_packet_route::AddressFamily;

    use super::*;

    #[test]
    fn messages_round_trip() {
        let net: IpNet = "fd00::5/64".parse().unwrap();
        let m = message(4, &net, AddressFlags::Nodad);
        assert_eq!(m.header.flags, AddressHeaderFlags::Nodad);
        let a = Address::from_message(&m).unwrap();
        assert_eq!(a.index, 4);
        assert_eq!(a.net, net);
        assert_eq!(a.family(), Family::V6);
        assert!(a.flags.contains(AddressFlags::Nodad));
        assert_eq!(a.to_string(), "inet6 fd00::5/64 scope global on #4");
        // Flags past the header's 8 bits come from IFA_FLAGS.
        let m = message(
            4,
            &"10.0.0.1/24".parse().unwrap(),
            AddressFlags::Noprefixroute,
        );
        assert!(m.header.flags.is_empty());
        let a = Address::from_message(&m).unwrap();
        assert!(a.flags.contains(AddressFlags::Noprefixroute));
        assert_eq!(a.family(), Family::V4);
    }

    #[test]
    fn local_wins_over_the_peer_address() {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = 32;
        m.attributes = vec![
            AddressAttribute::Address("10.0.0.2".parse().unwrap()),
            AddressAttribute::Local("10.0.0.1".parse().unwrap()),
        ];
        let a = Address::from_message(&m).unwrap();
        assert_eq!(a.net.addr(), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
