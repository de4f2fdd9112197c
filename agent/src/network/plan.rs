//! UpdateNetwork's request checked and turned into a plan, before anything
//! is touched: every bad field is an [`Invalid`] error naming it, and the
//! routes are put in the order the kernel accepts them.

use std::collections::HashSet;
use std::net::IpAddr;

use husk_netlink::{link, Family, IpNet, MacAddr};
use husk_protocol::agent::UpdateNetworkRequest;

/// The smallest MTU accepted (IPv4's minimum).
pub const MIN_MTU: u32 = 68;
/// The largest MTU accepted.
pub const MAX_MTU: u32 = 65535;
/// At most this many interfaces, addresses per interface, and routes.
pub const MAX_ITEMS: usize = 256;

/// A field of the request that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid {field} {value:?}: {why}")]
pub struct Invalid {
    /// Where in the request: "interfaces[0].hw_addr", "routes[2].gateway".
    pub field: String,
    pub value: String,
    pub why: String,
}

fn invalid(field: String, value: &str, why: impl Into<String>) -> Invalid {
    Invalid {
        field,
        value: value.to_string(),
        why: why.into(),
    }
}

/// One interface to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub name: String,
    pub mac: MacAddr,
    /// `None` keeps the device's.
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNet>,
}

/// One route to add; `device` is one of the plan's interface names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub device: String,
    pub source: Option<IpAddr>,
    pub metric: u32,
    /// Not asked for: the link route a gateway outside every subnet of its
    /// device needs before a route can use it.
    pub implied: bool,
}

/// The whole request, checked; routes in the order to add them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub interfaces: Vec<InterfacePlan>,
    pub routes: Vec<RoutePlan>,
}

impl Plan {
    /// The first address of the first interface (for /etc/hosts).
    pub fn first_address(&self) -> Option<IpAddr> {
        self.interfaces
            .iter()
            .flat_map(|i| i.addresses.iter())
            .next()
            .map(IpNet::addr)
    }
}

/// A unicast MAC address ("aa:bb:cc:dd:ee:ff"; not multicast, not all zero), or an
/// [`Invalid`] naming `field`.
pub fn unicast_mac(field: String, value: &str) -> Result<MacAddr, Invalid> {
    let mac: MacAddr = value
        .parse()
        .map_err(|_| invalid(field.clone(), value, "expected aa:bb:cc:dd:ee:ff"))?;
    if mac.0[0] & 1 != 0 || mac.0 == [0; 6] {
        return Err(invalid(field, value, "not a unicast MAC address"));
    }
    Ok(mac)
}

fn too_many(field: &str, n: usize) -> Result<(), Invalid> {
    if n > MAX_ITEMS {
        return Err(invalid(
            field.to_string(),
            &n.to_string(),
            format!("at most {MAX_ITEMS}"),
        ));
    }
    Ok(())
}

fn parse_ip(field: String, s: &str) -> Result<IpAddr, Invalid> {
    s.parse()
        .map_err(|_| invalid(field, s, "not an IPv4 or IPv6 address"))
}

/// Checks the request; nothing is touched.
pub fn plan(req: &UpdateNetworkRequest) -> Result<Plan, Invalid> {
    too_many("interfaces", req.interfaces.len())?;
    too_many("routes", req.routes.len())?;
    let mut names = HashSet::new();
    let mut macs = HashSet::new();
    let mut interfaces = Vec::new();
    for (i, iface) in req.interfaces.iter().enumerate() {
        let field = |f: &str| format!("interfaces[{i}].{f}");
        if !link::valid_name(&iface.name) {
            return Err(invalid(
                field("name"),
                &iface.name,
                "a link name is 1 to 15 bytes, no '/', ':' or white space",
            ));
        }
        if !names.insert(iface.name.as_str()) {
            return Err(invalid(field("name"), &iface.name, "named twice"));
        }
        let mac = unicast_mac(field("hw_addr"), &iface.hw_addr)?;
        if !macs.insert(mac) {
            return Err(invalid(field("hw_addr"), &iface.hw_addr, "given twice"));
        }
        let mtu = match iface.mtu {
            0 => None,
            m if (MIN_MTU..=MAX_MTU).contains(&m) => Some(m),
            m => {
                return Err(invalid(
                    field("mtu"),
                    &m.to_string(),
                    format!("0 (keep) or {MIN_MTU} to {MAX_MTU}"),
                ))
            }
        };
        too_many(&field("addresses"), iface.addresses.len())?;
        let mut addresses: Vec<IpNet> = Vec::new();
        for (j, a) in iface.addresses.iter().enumerate() {
            let afield = |f: &str| format!("interfaces[{i}].addresses[{j}].{f}");
            let ip = parse_ip(afield("address"), &a.address)?;
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(invalid(
                    afield("address"),
                    &a.address,
                    "not a unicast address for a link",
                ));
            }
            let net = IpNet::new(ip, a.prefix_len).map_err(|_| {
                invalid(
                    afield("prefix_len"),
                    &a.prefix_len.to_string(),
                    format!("at most {} for {}", Family::of(&ip).max_prefix(), a.address),
                )
            })?;
            if addresses.iter().any(|x| x.addr() == ip) {
                return Err(invalid(afield("address"), &a.address, "given twice"));
            }
            addresses.push(net);
        }
        interfaces.push(InterfacePlan {
            name: iface.name.clone(),
            mac,
            mtu,
            addresses,
        });
    }

    let mut routes = Vec::new();
    for (i, r) in req.routes.iter().enumerate() {
        let field = |f: &str| format!("routes[{i}].{f}");
        if !names.contains(r.device.as_str()) {
            let known: Vec<&str> = interfaces.iter().map(|x| x.name.as_str()).collect();
            return Err(invalid(
                field("device"),
                &r.device,
                format!("not one of the interfaces ({})", known.join(", ")),
            ));
        }
        let gateway = match r.gateway.as_str() {
            "" => None,
            g => Some(parse_ip(field("gateway"), g)?),
        };
        let destination = if r.destination.is_empty() {
            let gw = gateway.ok_or_else(|| {
                invalid(
                    field("destination"),
                    "",
                    "an empty destination (default route) needs a gateway to tell its family",
                )
            })?;
            IpNet::default_of(Family::of(&gw))
        } else {
            let d: IpNet = r
                .destination
                .parse()
                .map_err(|e: husk_netlink::ParseError| {
                    invalid(field("destination"), &r.destination, e.to_string())
                })?;
            if !d.is_network() {
                return Err(invalid(
                    field("destination"),
                    &r.destination,
                    format!("bits set past the prefix (the network is {})", d.network()),
                ));
            }
            d
        };
        let family = destination.family();
        if let Some(gw) = gateway {
            if Family::of(&gw) != family {
                return Err(invalid(
                    field("gateway"),
                    &r.gateway,
                    format!("not of the destination's family ({family})"),
                ));
            }
            if gw.is_unspecified() || gw.is_multicast() {
                return Err(invalid(
                    field("gateway"),
                    &r.gateway,
                    "not a unicast address",
                ));
            }
        }
        let source = match r.source.as_str() {
            "" => None,
            s => {
                let ip = parse_ip(field("source"), s)?;
                if Family::of(&ip) != family {
                    return Err(invalid(
                        field("source"),
                        s,
                        format!("not of the destination's family ({family})"),
                    ));
                }
                Some(ip)
            }
        };
        routes.push(RoutePlan {
            destination,
            gateway,
            device: r.device.clone(),
            source,
            metric: r.metric,
            implied: false,
        });
    }
    let routes = order_routes(&interfaces, routes);
    Ok(Plan { interfaces, routes })
}

/// Whether `gw` is directly reachable on `device` without an extra route:
/// inside one of the device's subnets, link-local, or the destination of a
/// link route on it.
fn on_link(
    interfaces: &[InterfacePlan],
    link_routes: &[RoutePlan],
    device: &str,
    gw: &IpAddr,
) -> bool {
    // IPv6 link-local gateways are on every link (fe80::/64 is its route);
    // IPv4's 169.254/16 is not, it needs the route like any other.
    let link_local = match gw {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    };
    link_local
        || interfaces
            .iter()
            .filter(|i| i.name == device)
            .flat_map(|i| i.addresses.iter())
            .any(|net| net.contains(gw))
        || link_routes
            .iter()
            .any(|r| r.device == device && r.destination.contains(gw))
}

/// The order routes are added in: directly connected routes first, then a
/// link route for each gateway that needs one, then routes through
/// gateways, default routes last (a directly connected one first).
/// Otherwise the request's order is kept.
pub fn order_routes(interfaces: &[InterfacePlan], routes: Vec<RoutePlan>) -> Vec<RoutePlan> {
    let (mut defaults, routes): (Vec<_>, Vec<_>) =
        routes.into_iter().partition(|r| r.destination.is_default());
    let (direct, mut via): (Vec<_>, Vec<_>) = routes.into_iter().partition(|r| r.gateway.is_none());
    let mut implied: Vec<RoutePlan> = Vec::new();
    for r in via.iter().chain(&defaults) {
        let Some(gw) = r.gateway else {
            continue;
        };
        if on_link(interfaces, &direct, &r.device, &gw)
            || implied
                .iter()
                .any(|x| x.device == r.device && x.destination.contains(&gw))
        {
            continue;
        }
        implied.push(RoutePlan {
            destination: IpNet::host(gw),
            gateway: None,
            device: r.device.clone(),
            source: None,
            metric: 0,
            implied: true,
        });
    }
    // Stable: a directly connected default before one through a gateway.
    defaults.sort_by_key(|r| r.gateway.is_some());
    let mut out = direct;
    out.append(&mut implied);
    out.append(&mut via);
    out.append(&mut defaults);
    out
}

#[cfg(test)]
mod tests {
    use husk_protocol::agent::{Interface, IpAddress, Route};

    use super::*;

    fn iface(name: &str, mac: &str, addrs: &[(&str, u32)]) -> Interface {
        let mut i = Interface::new();
        i.name = name.into();
        i.hw_addr = mac.into();
        i.addresses = addrs
            .iter()
            .map(|(a, p)| {
                let mut x = IpAddress::new();
                x.address = (*a).into();
                x.prefix_len = *p;
                x
            })
            .collect();
        i
    }

    fn route(dst: &str, gw: &str, dev: &str) -> Route {
        let mut r = Route::new();
        r.destination = dst.into();
        r.gateway = gw.into();
        r.device = dev.into();
        r
    }

    fn request(interfaces: Vec<Interface>, routes: Vec<Route>) -> UpdateNetworkRequest {
        let mut req = UpdateNetworkRequest::new();
        req.interfaces = interfaces;
        req.routes = routes;
        req
    }

    fn eth0() -> Interface {
        iface(
            "eth0",
            "02:42:0a:58:00:05",
            &[("10.88.0.5", 16), ("fd00::5", 64)],
        )
    }

    fn field_of(req: &UpdateNetworkRequest) -> String {
        plan(req).unwrap_err().field
    }

    #[test]
    fn a_good_request() {
        let mut eth = eth0();
        eth.mtu = 1450;
        let mut r = route("10.200.0.0/16", "10.88.0.1", "eth0");
        r.metric = 10;
        r.source = "10.88.0.5".into();
        let req = request(vec![eth], vec![route("", "10.88.0.1", "eth0"), r]);
        let p = plan(&req).unwrap();
        assert_eq!(p.interfaces[0].mtu, Some(1450));
        assert_eq!(p.interfaces[0].mac.to_string(), "02:42:0a:58:00:05");
        assert_eq!(p.interfaces[0].addresses.len(), 2);
        assert_eq!(p.first_address(), Some("10.88.0.5".parse().unwrap()));
        // The default route goes last.
        assert_eq!(p.routes[0].destination.to_string(), "10.200.0.0/16");
        assert_eq!(p.routes[0].metric, 10);
        assert_eq!(p.routes[0].source, Some("10.88.0.5".parse().unwrap()));
        assert!(p.routes[1].destination.is_default());
        assert_eq!(p.routes[1].destination.family(), Family::V4);
        assert!(p.routes.iter().all(|r| !r.implied));
        // An empty request is fine: nothing to do but lo.
        let empty = plan(&request(vec![], vec![])).unwrap();
        assert_eq!(empty.first_address(), None);
    }

    #[test]
    fn bad_interfaces_name_the_field() {
        let with = |f: &dyn Fn(&mut Interface)| {
            let mut i = eth0();
            f(&mut i);
            field_of(&request(vec![i], vec![]))
        };
        assert_eq!(with(&|i| i.name = "".into()), "interfaces[0].name");
        assert_eq!(with(&|i| i.name = "a/b".into()), "interfaces[0].name");
        assert_eq!(with(&|i| i.name = "x".repeat(16)), "interfaces[0].name");
        assert_eq!(
            with(&|i| i.hw_addr = "02:42:0a:58:00".into()),
            "interfaces[0].hw_addr"
        );
        assert_eq!(
            with(&|i| i.hw_addr = "zz:42:0a:58:00:05".into()),
            "interfaces[0].hw_addr"
        );
        assert_eq!(
            with(&|i| i.hw_addr = "01:00:5e:00:00:01".into()),
            "interfaces[0].hw_addr"
        );
        assert_eq!(
            with(&|i| i.hw_addr = "00:00:00:00:00:00".into()),
            "interfaces[0].hw_addr"
        );
        assert_eq!(with(&|i| i.mtu = 67), "interfaces[0].mtu");
        assert_eq!(with(&|i| i.mtu = 65536), "interfaces[0].mtu");
        assert_eq!(
            with(&|i| i.addresses[1].address = "fd00::5/64".into()),
            "interfaces[0].addresses[1].address"
        );
        assert_eq!(
            with(&|i| i.addresses[0].address = "0.0.0.0".into()),
            "interfaces[0].addresses[0].address"
        );
        assert_eq!(
            with(&|i| i.addresses[0].prefix_len = 33),
            "interfaces[0].addresses[0].prefix_len"
        );
        assert_eq!(
            with(&|i| i.addresses[1].prefix_len = 129),
            "interfaces[0].addresses[1].prefix_len"
        );
        assert_eq!(
            with(&|i| {
                i.addresses[1].address = "10.88.0.5".into();
                i.addresses[1].prefix_len = 16;
            }),
            "interfaces[0].addresses[1].address"
        );
        // The same name or MAC twice.
        let mut other = eth0();
        other.hw_addr = "02:00:00:00:00:09".into();
        assert_eq!(
            field_of(&request(vec![eth0(), other], vec![])),
            "interfaces[1].name"
        );
        let mut other = eth0();
        other.name = "eth1".into();
        assert_eq!(
            field_of(&request(vec![eth0(), other], vec![])),
            "interfaces[1].hw_addr"
        );
    }

    #[test]
    fn bad_routes_name_the_field() {
        let with = |r: Route| {
            field_of(&request(
                vec![eth0()],
                vec![route("", "10.88.0.1", "eth0"), r],
            ))
        };
        assert_eq!(with(route("10.1.0.0/16", "", "eth9")), "routes[1].device");
        let e = plan(&request(
            vec![eth0()],
            vec![route("10.1.0.0/16", "", "eth9")],
        ))
        .unwrap_err();
        assert!(e.why.contains("(eth0)"), "{e}");
        assert_eq!(
            with(route("10.1.0.0/33", "", "eth0")),
            "routes[1].destination"
        );
        assert_eq!(
            with(route("10.1.0.0/x", "", "eth0")),
            "routes[1].destination"
        );
        assert_eq!(with(route("nonsense", "", "eth0")), "routes[1].destination");
        let e = plan(&request(
            vec![eth0()],
            vec![route("10.1.2.3/16", "", "eth0")],
        ))
        .unwrap_err();
        assert_eq!(e.field, "routes[0].destination");
        assert!(e.why.contains("10.1.0.0/16"), "{e}");
        assert_eq!(with(route("", "", "eth0")), "routes[1].destination");
        assert_eq!(
            with(route("10.1.0.0/16", "fd00::1", "eth0")),
            "routes[1].gateway"
        );
        assert_eq!(
            with(route("10.1.0.0/16", "10.88.0.256", "eth0")),
            "routes[1].gateway"
        );
        assert_eq!(
            with(route("10.1.0.0/16", "0.0.0.0", "eth0")),
            "routes[1].gateway"
        );
        let mut r = route("10.1.0.0/16", "10.88.0.1", "eth0");
        r.source = "fd00::5".into();
        assert_eq!(with(r), "routes[1].source");
        let e = plan(&request(
            vec![eth0()],
            vec![route("10.1.0.0/16", "", "eth9")],
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid routes[0].device \"eth9\": not one of the interfaces (eth0)"
        );
    }

    #[test]
    fn gateways_off_every_subnet_get_a_link_route_first() {
        // Calico-style: a /32 address and a gateway outside it.
        let eth = iface("eth0", "02:00:00:00:00:01", &[("10.1.2.3", 32)]);
        let req = request(
            vec![eth],
            vec![
                route("", "169.254.1.1", "eth0"),
                route("10.96.0.0/12", "169.254.1.1", "eth0"),
                route("", "fe80::1", "eth0"),
            ],
        );
        let p = plan(&req).unwrap();
        let shown: Vec<String> = p
            .routes
            .iter()
            .map(|r| format!("{} {:?} {}", r.destination, r.gateway, r.implied))
            .collect();
        assert_eq!(
            shown,
            [
                "169.254.1.1/32 None true",
                "10.96.0.0/12 Some(169.254.1.1) false",
                "0.0.0.0/0 Some(169.254.1.1) false",
                "::/0 Some(fe80::1) false",
            ]
        );
        // A link route the request gives itself covers the gateway: no extra one.
        let eth = iface("eth0", "02:00:00:00:00:01", &[("10.1.2.3", 32)]);
        let req = request(
            vec![eth],
            vec![
                route("", "169.254.1.1", "eth0"),
                route("169.254.1.1/32", "", "eth0"),
            ],
        );
        let p = plan(&req).unwrap();
        assert_eq!(p.routes.len(), 2);
        assert!(!p.routes[0].implied && p.routes[0].gateway.is_none());
        assert!(p.routes[1].destination.is_default());
    }

    #[test]
    fn defaults_come_last() {
        let req = request(
            vec![eth0()],
            vec![
                route("", "fd00::1", "eth0"),
                route("0.0.0.0/0", "", "eth0"),
                route("10.7.0.0/16", "10.88.0.1", "eth0"),
                route("10.9.0.0/16", "", "eth0"),
            ],
        );
        let p = plan(&req).unwrap();
        let order: Vec<String> = p.routes.iter().map(|r| r.destination.to_string()).collect();
        assert_eq!(order, ["10.9.0.0/16", "10.7.0.0/16", "0.0.0.0/0", "::/0"]);
    }
}
