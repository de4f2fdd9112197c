//! Pure decisions about a pod's network: which links of the pod's network namespace
//! become guest NICs, the taps' names, the agent's UpdateNetworkRequest and husk-vmm's
//! `--net` arguments. No I/O here, so all of it is unit-tested.

use std::net::IpAddr;

use husk_protocol::agent;
use serde::{Deserialize, Serialize};

/// The main routing table (`RT_TABLE_MAIN`).
pub const RT_TABLE_MAIN: u32 = 254;
/// `RTPROT_KERNEL`: routes the kernel derives from an address; the guest's kernel makes
/// the same ones when the agent adds the address.
pub const RTPROT_KERNEL: u8 = 2;
/// `RTN_UNICAST`.
pub const RTN_UNICAST: u8 = 1;

/// One link of the network namespace, as netlink lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `IFF_LOOPBACK`.
    pub loopback: bool,
    /// The link-layer address, if it is a 6-byte (Ethernet) one.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
}

/// One address of the network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// One route of the network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub table: u32,
    pub protocol: u8,
    pub route_type: u8,
    /// The destination and its prefix length; `None` for a default route.
    pub dst: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    pub priority: Option<u32>,
}

/// The tap that carries the `n`-th interface (Kata's naming: `tap0_kata`).
pub fn tap_name(n: usize) -> String {
    format!("tap{n}_husk")
}

/// Whether a link name is one of our taps' (`tap<N>_husk`).
pub fn is_tap_name(name: &str) -> bool {
    name.strip_prefix("tap")
        .and_then(|r| r.strip_suffix("_husk"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// One veth (or other Ethernet link) of the netns and the tap joined to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicNames {
    /// The CNI plugin's link in the netns (`eth0`); the guest's link gets its name.
    pub veth: String,
    /// Our tap next to it (`tap0_husk`).
    pub tap: String,
}

/// What teardown needs, persisted in the pod directory (`network.json`) so that a
/// `shim delete` after a crash can clean up too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// The pod's network namespace (the OCI spec's `linux.namespaces` path).
    pub netns: std::path::PathBuf,
    pub interfaces: Vec<NicNames>,
}

impl crate::persist::Persisted for NetState {
    const FILE: &'static str = "network.json";
    const VERSION: u32 = 1;
}

/// One guest NIC to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub veth: String,
    pub veth_index: u32,
    pub tap: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// The links of a netns that become guest NICs: every link with a (non-zero) Ethernet
/// address except `lo` and our own taps, in ifindex order. The tunnel fallback devices
/// that appear in every netns once their module is loaded (`tunl0`, `sit0` with no
/// 6-byte address, `gretap0` with a zero one) are left out that way.
pub fn select_nics(links: &[LinkInfo]) -> Vec<Nic> {
    let mut chosen: Vec<&LinkInfo> = links
        .iter()
        .filter(|l| !l.loopback && !is_tap_name(&l.name))
        .filter(|l| l.mac.is_some_and(|m| m != [0; 6]))
        .collect();
    chosen.sort_by_key(|l| l.index);
    chosen
        .into_iter()
        .enumerate()
        .map(|(n, l)| Nic {
            veth: l.name.clone(),
            veth_index: l.index,
            tap: tap_name(n),
            mac: l.mac.unwrap_or_default(),
            mtu: l.mtu,
        })
        .collect()
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn is_ipv6_link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The agent's request: each NIC with the veth's name, MAC, MTU and addresses (IPv6
/// link-local ones left out: the guest derives the same from the same MAC), then the
/// main table's routes through those NICs that the guest's kernel does not make by itself
/// (not `proto kernel`), link-scope routes before the gateway routes that need them.
pub fn update_request(
    nics: &[Nic],
    addrs: &[AddrInfo],
    routes: &[RouteInfo],
) -> agent::UpdateNetworkRequest {
    let mut req = agent::UpdateNetworkRequest::new();
    for nic in nics {
        let mut i = agent::Interface::new();
        i.name = nic.veth.clone();
        i.hw_addr = format_mac(&nic.mac);
        i.mtu = nic.mtu;
        for a in addrs
            .iter()
            .filter(|a| a.index == nic.veth_index && !is_ipv6_link_local(&a.addr))
        {
            let mut ip = agent::IpAddress::new();
            ip.address = a.addr.to_string();
            ip.prefix_len = u32::from(a.prefix_len);
            i.addresses.push(ip);
        }
        req.interfaces.push(i);
    }
    let device = |oif: Option<u32>| {
        oif.and_then(|o| nics.iter().find(|n| n.veth_index == o))
            .map(|n| n.veth.clone())
    };
    let mut out: Vec<agent::Route> = routes
        .iter()
        .filter(|r| {
            r.table == RT_TABLE_MAIN && r.route_type == RTN_UNICAST && r.protocol != RTPROT_KERNEL
        })
        .filter_map(|r| {
            let mut route = agent::Route::new();
            route.device = device(r.oif)?;
            route.destination = match r.dst {
                Some((a, len)) if len > 0 => format!("{a}/{len}"),
                _ => String::new(),
            };
            route.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
            route.source = r.prefsrc.map(|s| s.to_string()).unwrap_or_default();
            route.metric = r.priority.unwrap_or(0);
            Some(route)
        })
        .collect();
    // Stable: the netns's own order is kept within each group.
    out.sort_by_key(|r| !r.gateway.is_empty());
    req.routes = out;
    req
}

/// husk-vmm's net device for the NIC whose tap is the child's fd `fd`.
pub fn vmm_net(fd: i32, nic: &Nic) -> husk_vm_config::NetConfig {
    husk_vm_config::NetConfig {
        tap: None,
        fd: Some(fd),
        mac: Some(husk_vm_config::MacAddr(nic.mac)),
        // A template's NICs have none (0): offered, the guest driver would take it as
        // the most its link can ever have, and a pod restored from it could not set a
        // larger one.
        mtu: u16::try_from(nic.mtu).ok().filter(|m| *m != 0),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn link(index: u32, name: &str, loopback: bool, mac: Option<[u8; 6]>) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            loopback,
            mac,
            mtu: 1450,
        }
    }

    const MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05];

    #[test]
    fn tap_names_follow_the_kata_pattern() {
        assert_eq!(tap_name(0), "tap0_husk");
        assert_eq!(tap_name(12), "tap12_husk");
        assert!(is_tap_name("tap0_husk"));
        assert!(is_tap_name("tap12_husk"));
        assert!(!is_tap_name("tap_husk"));
        assert!(!is_tap_name("tapx_husk"));
        assert!(!is_tap_name("tap0_kata"));
        assert!(!is_tap_name("eth0"));
    }

    #[test]
    fn only_ethernet_links_other_than_our_taps_are_taken() {
        let links = vec![
            link(1, "lo", true, Some([0; 6])),
            link(2, "tunl0", false, None),
            link(3, "sit0", false, None),
            link(9, "net1", false, Some([2, 0, 0, 0, 0, 9])),
            link(4, "eth0", false, Some(MAC)),
            link(5, "tap0_husk", false, Some([2, 0, 0, 0, 0, 5])),
            link(6, "gretap0", false, Some([0; 6])),
            link(7, "lo2", true, Some([2, 0, 0, 0, 0, 7])),
        ];
        let nics = select_nics(&links);
        assert_eq!(
            nics,
            vec![
                Nic {
                    veth: "eth0".into(),
                    veth_index: 4,
                    tap: "tap0_husk".into(),
                    mac: MAC,
                    mtu: 1450
                },
                Nic {
                    veth: "net1".into(),
                    veth_index: 9,
                    tap: "tap1_husk".into(),
                    mac: [2, 0, 0, 0, 0, 9],
                    mtu: 1450
                },
            ]
        );
        assert!(select_nics(&links[..3]).is_empty());
    }

    #[test]
    fn macs_are_formatted_lowercase() {
        assert_eq!(
            format_mac(&[0xAB, 0, 1, 0x10, 0xff, 0x0c]),
            "ab:00:01:10:ff:0c"
        );
    }

    fn cni_bridge_netns() -> (Vec<Nic>, Vec<AddrInfo>, Vec<RouteInfo>) {
        let nics = select_nics(&[
            link(1, "lo", true, Some([0; 6])),
            link(3, "eth0", false, Some(MAC)),
        ]);
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        let addrs = vec![
            AddrInfo {
                index: 1,
                addr: v4(127, 0, 0, 1),
                prefix_len: 8,
            },
            AddrInfo {
                index: 3,
                addr: v4(10, 88, 0, 5),
                prefix_len: 16,
            },
            AddrInfo {
                index: 3,
                addr: IpAddr::V6("fd00::5".parse::<Ipv6Addr>().unwrap()),
                prefix_len: 64,
            },
            AddrInfo {
                index: 3,
                addr: IpAddr::V6("fe80::858:aff:fe58:5".parse::<Ipv6Addr>().unwrap()),
                prefix_len: 64,
            },
        ];
        let route = |dst, gw, oif, protocol, table| RouteInfo {
            table,
            protocol,
            route_type: RTN_UNICAST,
            dst,
            gateway: gw,
            oif: Some(oif),
            prefsrc: None,
            priority: None,
        };
        let routes = vec![
            // default via 10.88.0.1 dev eth0 (CNI's, proto boot)
            route(None, Some(v4(10, 88, 0, 1)), 3, 3, RT_TABLE_MAIN),
            // 10.88.0.0/16 dev eth0 proto kernel scope link src 10.88.0.5
            route(
                Some((v4(10, 88, 0, 0), 16)),
                None,
                3,
                RTPROT_KERNEL,
                RT_TABLE_MAIN,
            ),
            // 10.99.0.0/24 via 10.88.0.254 metric 50
            RouteInfo {
                priority: Some(50),
                prefsrc: Some(v4(10, 88, 0, 5)),
                ..route(
                    Some((v4(10, 99, 0, 0), 24)),
                    Some(v4(10, 88, 0, 254)),
                    3,
                    3,
                    RT_TABLE_MAIN,
                )
            },
            // 192.168.7.0/24 dev eth0 scope link (static, proto boot)
            route(Some((v4(192, 168, 7, 0), 24)), None, 3, 3, RT_TABLE_MAIN),
            // local 10.88.0.5 dev eth0 table local
            route(Some((v4(10, 88, 0, 5), 32)), None, 3, RTPROT_KERNEL, 255),
            // a route through lo is not the guest's
            route(Some((v4(10, 1, 0, 0), 16)), None, 1, 3, RT_TABLE_MAIN),
        ];
        (nics, addrs, routes)
    }

    #[test]
    fn the_request_carries_the_veth_identity_addresses_and_routes() {
        let (nics, addrs, routes) = cni_bridge_netns();
        let req = update_request(&nics, &addrs, &routes);
        assert_eq!(req.interfaces.len(), 1);
        let i = &req.interfaces[0];
        assert_eq!(i.name, "eth0");
        assert_eq!(i.hw_addr, "0a:58:0a:58:00:05");
        assert_eq!(i.mtu, 1450);
        let a: Vec<(String, u32)> = i
            .addresses
            .iter()
            .map(|a| (a.address.clone(), a.prefix_len))
            .collect();
        assert_eq!(
            a,
            vec![("10.88.0.5".into(), 16), ("fd00::5".into(), 64)],
            "lo's and the link-local address stay behind"
        );
        let r: Vec<(String, String, String, String, u32)> = req
            .routes
            .iter()
            .map(|r| {
                (
                    r.destination.clone(),
                    r.gateway.clone(),
                    r.device.clone(),
                    r.source.clone(),
                    r.metric,
                )
            })
            .collect();
        assert_eq!(
            r,
            vec![
                (
                    "192.168.7.0/24".into(),
                    "".into(),
                    "eth0".into(),
                    "".into(),
                    0
                ),
                ("".into(), "10.88.0.1".into(), "eth0".into(), "".into(), 0),
                (
                    "10.99.0.0/24".into(),
                    "10.88.0.254".into(),
                    "eth0".into(),
                    "10.88.0.5".into(),
                    50
                ),
            ]
        );
    }

    #[test]
    fn vmm_arguments_name_fd_mac_and_mtu() {
        let (nics, _, _) = cni_bridge_netns();
        assert_eq!(
            vmm_net(3, &nics[0]),
            husk_vm_config::NetConfig {
                tap: None,
                fd: Some(3),
                mac: Some("0a:58:0a:58:00:05".parse().unwrap()),
                mtu: Some(1450),
            }
        );
    }
}
