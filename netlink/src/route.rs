//! Routes of the main table (`ip route`, `ip -6 route`): list, add, delete.

use std::fmt;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::ip::{Family, IpNet};
use crate::socket::{Result, Socket};

/// The main routing table (`RT_TABLE_MAIN`).
pub const MAIN_TABLE: u32 = 254;

/// `RTPROT_KERNEL`: a route the kernel made (an address's prefix route).
pub const PROTO_KERNEL: u8 = 2;
/// `RTPROT_BOOT`: what `ip route add` uses, and [`add`] too.
pub const PROTO_BOOT: u8 = 3;
/// `RTPROT_STATIC`.
pub const PROTO_STATIC: u8 = 4;
/// `RTPROT_RA`: from an IPv6 router advertisement.
pub const PROTO_RA: u8 = 9;

/// `RTN_UNICAST`: an ordinary route.
pub const TYPE_UNICAST: u8 = 1;

/// The scope of a route or an address (`RT_SCOPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Reached through a gateway (0).
    Universe,
    Site,
    /// On the link: no gateway (253).
    Link,
    /// This host (254).
    Host,
    Nowhere,
    Other(u8),
}

impl Scope {
    /// The `RT_SCOPE_*` number.
    pub fn raw(self) -> u8 {
        match self {
            Self::Universe => 0,
            Self::Site => 200,
            Self::Link => 253,
            Self::Host => 254,
            Self::Nowhere => 255,
            Self::Other(n) => n,
        }
    }

    /// From the `RT_SCOPE_*` number.
    pub fn from_raw(n: u8) -> Self {
        match n {
            0 => Self::Universe,
            200 => Self::Site,
            253 => Self::Link,
            254 => Self::Host,
            255 => Self::Nowhere,
            n => Self::Other(n),
        }
    }
}

impl fmt::Display for Scope {
    /// As `ip` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Universe => f.write_str("global"),
            Self::Site => f.write_str("site"),
            Self::Link => f.write_str("link"),
            Self::Host => f.write_str("host"),
            Self::Nowhere => f.write_str("nowhere"),
            Self::Other(n) => write!(f, "{n}"),
        }
    }
}

pub(crate) fn netlink_family(f: Family) -> AddressFamily {
    match f {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// One route of the main table, as `ip route` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination; 0.0.0.0/0 or ::/0 for a default route.
    pub destination: IpNet,
    /// The next hop; `None` for a directly connected route.
    pub gateway: Option<IpAddr>,
    /// The output device's index.
    pub device: Option<u32>,
    /// The preferred source address (`src`).
    pub source: Option<IpAddr>,
    /// The metric (priority); 0 for none.
    pub metric: u32,
    pub scope: Scope,
    /// Who added it (`RTPROT_*`: [`PROTO_KERNEL`], [`PROTO_BOOT`], ...).
    pub protocol: u8,
    /// The route type (`RTN_*`: [`TYPE_UNICAST`], ...).
    pub kind: u8,
    pub table: u32,
}

impl Route {
    pub fn family(&self) -> Family {
        self.destination.family()
    }

    fn from_message(m: &RouteMessage) -> Option<Self> {
        let family = match m.header.address_family {
            AddressFamily::Inet => Family::V4,
            AddressFamily::Inet6 => Family::V6,
            _ => return None,
        };
        let mut dst = None;
        let mut route = Route {
            destination: IpNet::default_of(family),
            gateway: None,
            device: None,
            source: None,
            metric: 0,
            scope: Scope::from_raw(u8::from(m.header.scope)),
            protocol: u8::from(m.header.protocol),
            kind: u8::from(m.header.kind),
            table: u32::from(m.header.table),
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = ip_of(d),
                RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
                RouteAttribute::Oif(i) => route.device = Some(*i),
                RouteAttribute::PrefSource(s) => route.source = ip_of(s),
                RouteAttribute::Priority(p) => route.metric = *p,
                RouteAttribute::Table(t) => route.table = *t,
                _ => {}
            }
        }
        if let Some(dst) = dst {
            route.destination =
                IpNet::new(dst, u32::from(m.header.destination_prefix_length)).ok()?;
        }
        Some(route)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.destination.is_default() {
            f.write_str("default")?;
        } else {
            write!(f, "{}", self.destination)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = self.device {
            write!(f, " dev #{dev}")?;
        }
        write!(f, " proto {} scope {}", self.protocol, self.scope)?;
        if let Some(src) = self.source {
            write!(f, " src {src}")?;
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// The routes of the main table, of one family or both.
pub fn list(sock: &mut Socket, family: Option<Family>) -> Result<Vec<Route>> {
    let mut m = RouteMessage::default();
    m.header.address_family = family.map_or(AddressFamily::Unspec, netlink_family);
    let replies = sock.dump("dump routes", RouteNetlinkMessage::GetRoute(m))?;
    Ok(replies
        .iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewRoute(m) => Route::from_message(m),
            _ => None,
        })
        .filter(|r| r.table == MAIN_TABLE)
        .collect())
}

/// A route to add to the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoute {
    /// Must be a network (no bits past the prefix): the kernel refuses
    /// others.
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub device: u32,
    pub source: Option<IpAddr>,
    pub metric: u32,
    /// `None`: link scope without a gateway, universe with one.
    pub scope: Option<Scope>,
}

impl NewRoute {
    /// A directly connected route to `destination` on `device`.
    pub fn link(destination: IpNet, device: u32) -> Self {
        Self {
            destination,
            gateway: None,
            device,
            source: None,
            metric: 0,
            scope: None,
        }
    }

    /// A route to `destination` through `gateway` on `device`.
    pub fn via(destination: IpNet, gateway: IpAddr, device: u32) -> Self {
        Self {
            gateway: Some(gateway),
            ..Self::link(destination, device)
        }
    }

    fn message(&self) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: netlink_family(self.destination.family()),
            destination_prefix_length: self.destination.prefix_len(),
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: RouteScope::from(
                self.scope
                    .unwrap_or(if self.gateway.is_some() {
                        Scope::Universe
                    } else {
                        Scope::Link
                    })
                    .raw(),
            ),
            kind: RouteType::Unicast,
            ..m.header
        };
        if !self.destination.is_default() {
            m.attributes
                .push(RouteAttribute::Destination(self.destination.addr().into()));
        }
        if let Some(gw) = self.gateway {
            m.attributes.push(RouteAttribute::Gateway(gw.into()));
        }
        m.attributes.push(RouteAttribute::Oif(self.device));
        if let Some(src) = self.source {
            m.attributes.push(RouteAttribute::PrefSource(src.into()));
        }
        if self.metric != 0 {
            m.attributes.push(RouteAttribute::Priority(self.metric));
        }
        m
    }
}

/// Adds a route (`ip route add`: `EEXIST` if the same one is there).
pub fn add(sock: &mut Socket, route: &NewRoute) -> Result<()> {
    sock.request(
        "add route",
        RouteNetlinkMessage::NewRoute(route.message()),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Deletes a route as listed: matched by destination, gateway, device,
/// metric and table; any scope, protocol and type.
pub fn delete(sock: &mut Socket, route: &Route) -> Result<()> {
    let mut m = RouteMessage::default();
    m.header.address_family = netlink_family(route.family());
    m.header.destination_prefix_length = route.destination.prefix_len();
    m.header.table = u8::try_from(route.table).unwrap_or(0);
    m.header.scope = RouteScope::NoWhere;
    if !route.destination.is_default() {
        m.attributes
            .push(RouteAttribute::Destination(route.destination.addr().into()));
    }
    if let Some(gw) = route.gateway {
        m.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    if let Some(dev) = route.device {
        m.attributes.push(RouteAttribute::Oif(dev));
    }
    if route.metric != 0 {
        m.attributes.push(RouteAttribute::Priority(route.metric));
    }
    m.attributes.push(RouteAttribute::Table(route.table));
    sock.request("delete route", RouteNetlinkMessage::DelRoute(m), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip() {
        for n in [0u8, 200, 253, 254, 255, 17] {
            assert_eq!(Scope::from_raw(n).raw(), n);
        }
        assert_eq!(Scope::from_raw(253), Scope::Link);
        assert_eq!(Scope::Universe.to_string(), "global");
    }

    #[test]
    fn new_routes_become_messages_and_back() {
        let dst: IpNet = "10.88.0.0/16".parse().unwrap();
        let mut r = NewRoute::via(dst, "10.0.0.1".parse().unwrap(), 3);
        r.metric = 100;
        r.source = Some("10.0.0.5".parse().unwrap());
        let m = r.message();
        assert_eq!(u8::from(m.header.scope), 0);
        let back = Route::from_message(&m).unwrap();
        assert_eq!(back.destination, dst);
        assert_eq!(back.gateway, r.gateway);
        assert_eq!(back.device, Some(3));
        assert_eq!(back.source, r.source);
        assert_eq!(back.metric, 100);
        assert_eq!(back.protocol, PROTO_BOOT);
        assert_eq!(back.kind, TYPE_UNICAST);
        assert_eq!(back.table, MAIN_TABLE);
        assert_eq!(
            back.to_string(),
            "10.88.0.0/16 via 10.0.0.1 dev #3 proto 3 scope global src 10.0.0.5 metric 100"
        );

        // A default route has no destination attribute; a route without a
        // gateway is link scope.
        let d = NewRoute::via(IpNet::default_of(Family::V6), "fe80::1".parse().unwrap(), 2);
        let m = d.message();
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        let back = Route::from_message(&m).unwrap();
        assert!(back.destination.is_default());
        assert_eq!(back.family(), Family::V6);
        let l = NewRoute::link("169.254.1.1/32".parse().unwrap(), 2).message();
        assert_eq!(Scope::from_raw(u8::from(l.header.scope)), Scope::Link);
    }
}
