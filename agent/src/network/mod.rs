//! UpdateNetwork: the guest's links set up as the pod's network namespace on
//! the host has them (Kata's model: the shim joins the CNI veth to a tap
//! that husk-vmm serves as virtio-net with the veth's MAC).
//!
//! The request is checked first ([`plan`]); then, over rtnetlink:
//! - `lo` is brought up;
//! - each interface is found by its MAC among the links (every one of them
//!   before anything changes), taken down, renamed, given its MTU, its
//!   addresses flushed and the asked ones added (IPv6 ones without
//!   duplicate address detection, so they are usable at once), and brought
//!   up;
//! - the routes an earlier call (or anyone but the kernel) added on those
//!   links are deleted, and the asked ones added: directly connected routes
//!   first, a link route to each gateway outside every subnet of its
//!   device, routes through gateways, the default routes last.
//!
//! So a second call replaces what the first set. Each step's error names
//! the link and keeps the kernel's errno.

pub mod plan;
pub mod readdress;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use husk_netlink::{address, link, route, AddressFlags, Family, Link, NewRoute, Socket};

pub use self::plan::{plan, Invalid, Plan};
use tracing::{debug, info};

/// Errors of UpdateNetwork.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A bad field of the request.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("No link has MAC {mac} (interface {name:?}); the links are: {links}")]
    NoSuchMac {
        name: String,
        mac: String,
        links: String,
    },
    #[error("Links {links} all have MAC {mac} (interface {name:?}), none is named so")]
    AmbiguousMac {
        name: String,
        mac: String,
        links: String,
    },
    /// `husk-agent serve` in the host's own network namespace.
    #[error(
        "husk-agent serve applies UpdateNetwork to its own network namespace, which is that \
         of process {pid}: start it in a fresh one (unshare -n, ip netns exec)"
    )]
    HostNamespace { pid: i32 },
    #[error("Cannot tell which network namespace {path} is")]
    Namespace {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot {what}")]
    Netlink {
        what: String,
        #[source]
        source: husk_netlink::Error,
    },
}

impl NetworkError {
    /// Whether the request is at fault: a bad field, or a value the kernel
    /// refused (an MTU the device cannot take, an unreachable gateway, a
    /// source address the guest does not have, a route given twice).
    pub fn is_invalid_argument(&self) -> bool {
        match self {
            Self::Invalid(_) => true,
            Self::Netlink { source, .. } => matches!(
                source.errno(),
                Some(libc::EINVAL | libc::ENETUNREACH | libc::EEXIST | libc::EADDRNOTAVAIL)
            ),
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, NetworkError>;

fn nl(what: impl FnOnce() -> String) -> impl FnOnce(husk_netlink::Error) -> NetworkError {
    move |source| NetworkError::Netlink {
        what: what(),
        source,
    }
}

/// Refuses to run in the network namespace of the agent's parent or of
/// PID 1: for `husk-agent serve` on the host, which must not rename or
/// re-route the machine's own links. Started by `unshare -n` or `ip netns
/// exec`, the agent is in a namespace neither has. (PID 1's may be out of
/// reach in a sandbox; then the parent's decides.)
pub fn check_own_namespace() -> Result<()> {
    let ns = |pid: &str| {
        let path = format!("/proc/{pid}/ns/net");
        std::fs::metadata(&path).map_err(|source| NetworkError::Namespace { path, source })
    };
    let own = ns("self")?;
    // SAFETY: getppid has no arguments and cannot fail.
    let parent = unsafe { libc::getppid() };
    for pid in [1, parent] {
        match ns(&pid.to_string()) {
            Ok(m) if m.ino() == own.ino() && m.dev() == own.dev() => {
                return Err(NetworkError::HostNamespace { pid })
            }
            Ok(_) => {}
            Err(NetworkError::Namespace { source, .. })
                if pid == 1
                    && parent != 1
                    && source.kind() == std::io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn list_links(sock: &mut Socket) -> Result<Vec<Link>> {
    link::list(sock).map_err(nl(|| "list the links".into()))
}

fn show(links: &[&Link]) -> String {
    let shown: Vec<String> = links.iter().map(|l| l.to_string()).collect();
    if shown.is_empty() {
        "none".into()
    } else {
        shown.join(", ")
    }
}

/// Brings `lo` up at boot, so containers have 127.0.0.1 before (or
/// without) any UpdateNetwork.
pub fn loopback_up_at_boot() -> Result<()> {
    let mut sock = Socket::new().map_err(nl(|| "open a netlink socket".into()))?;
    loopback_up(&mut sock)
}

/// Brings `lo` up if it is down.
pub fn loopback_up(sock: &mut Socket) -> Result<()> {
    for l in list_links(sock)? {
        if l.is_loopback() && !l.is_up() {
            link::set_up(sock, l.index).map_err(nl(|| format!("bring {} up", l.name)))?;
            debug!("Brought {} up", l.name);
        }
    }
    Ok(())
}

/// Finds each interface's link by MAC; nothing is changed.
fn resolve(plan: &Plan, links: &[Link]) -> Result<Vec<Link>> {
    let mut out = Vec::new();
    for iface in &plan.interfaces {
        let found: Vec<&Link> = links
            .iter()
            .filter(|l| !l.is_loopback() && l.mac == Some(iface.mac))
            .collect();
        let pick = match found.as_slice() {
            [one] => *one,
            [] => {
                return Err(NetworkError::NoSuchMac {
                    name: iface.name.clone(),
                    mac: iface.mac.to_string(),
                    links: show(&links.iter().collect::<Vec<_>>()),
                })
            }
            several => several
                .iter()
                .find(|l| l.name == iface.name)
                .copied()
                .ok_or_else(|| NetworkError::AmbiguousMac {
                    name: iface.name.clone(),
                    mac: iface.mac.to_string(),
                    links: show(several),
                })?,
        };
        out.push(pick.clone());
    }
    Ok(out)
}

/// Applies a checked plan to the current network namespace.
pub fn apply(plan: &Plan) -> Result<()> {
    let mut sock = Socket::new().map_err(nl(|| "open a netlink socket".into()))?;
    let sock = &mut sock;
    loopback_up(sock)?;
    let links = list_links(sock)?;
    let targets = resolve(plan, &links)?;

    // A name another link of the plan still has (two links trading names)
    // is freed first by a temporary name.
    let wanted: HashSet<&str> = plan.interfaces.iter().map(|i| i.name.as_str()).collect();
    for (iface, l) in plan.interfaces.iter().zip(&targets) {
        if l.name != iface.name && wanted.contains(l.name.as_str()) {
            let tmp = format!("husk-tmp{}", l.index);
            link::set_down(sock, l.index).map_err(nl(|| format!("take {} down", l.name)))?;
            link::set_name(sock, l.index, &tmp)
                .map_err(nl(|| format!("rename {} to {tmp:?}", l.name)))?;
        }
    }

    for (iface, l) in plan.interfaces.iter().zip(&targets) {
        let index = l.index;
        let was = format!("link {index} ({}, {})", l.name, iface.mac);
        link::set_down(sock, index).map_err(nl(|| format!("take {was} down")))?;
        if l.name != iface.name {
            link::set_name(sock, index, &iface.name)
                .map_err(nl(|| format!("rename {was} to {:?}", iface.name)))?;
        }
        let name = &iface.name;
        if let Some(mtu) = iface.mtu {
            link::set_mtu(sock, index, mtu)
                .map_err(nl(|| format!("set the MTU of {name} to {mtu}")))?;
        }
        address::flush(sock, index, None)
            .map_err(nl(|| format!("flush the addresses of {name}")))?;
        for net in &iface.addresses {
            let flags = match net.family() {
                Family::V4 => AddressFlags::empty(),
                Family::V6 => AddressFlags::Nodad,
            };
            address::add(sock, index, *net, flags)
                .map_err(nl(|| format!("add address {net} to {name}")))?;
        }
        link::set_up(sock, index).map_err(nl(|| format!("bring {name} up")))?;
        info!(
            "Network: {name} ({}) is link {index}, mtu {}, {} address(es)",
            iface.mac,
            iface
                .mtu
                .map_or_else(|| "kept".to_string(), |m| m.to_string()),
            iface.addresses.len()
        );
    }

    let managed: Vec<u32> = targets.iter().map(|l| l.index).collect();
    flush_routes(sock, &managed)?;
    for r in &plan.routes {
        let index = plan
            .interfaces
            .iter()
            .zip(&targets)
            .find(|(i, _)| i.name == r.device)
            .map(|(_, l)| l.index)
            .expect("plan() checked every route's device");
        let new = NewRoute {
            destination: r.destination,
            gateway: r.gateway,
            device: index,
            source: r.source,
            metric: r.metric,
            scope: None,
        };
        let shown = describe(r);
        route::add(sock, &new).map_err(nl(|| format!("add route {shown}")))?;
        debug!("Network: route {shown}");
    }
    Ok(())
}

fn describe(r: &plan::RoutePlan) -> String {
    let mut s = if r.destination.is_default() {
        format!("default ({})", r.destination)
    } else {
        r.destination.to_string()
    };
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    s.push_str(&format!(" dev {}", r.device));
    if let Some(src) = r.source {
        s.push_str(&format!(" src {src}"));
    }
    if r.metric != 0 {
        s.push_str(&format!(" metric {}", r.metric));
    }
    if r.implied {
        s.push_str(" (for its gateway)");
    }
    s
}

/// Deletes the main table's routes on these links that the kernel did not
/// make itself (those of addresses, IPv6 link-local, router
/// advertisements), i.e. what an earlier UpdateNetwork added.
fn flush_routes(sock: &mut Socket, devices: &[u32]) -> Result<()> {
    let routes = route::list(sock, None).map_err(nl(|| "list the routes".into()))?;
    for r in routes {
        let ours = r.device.is_some_and(|d| devices.contains(&d));
        if !ours || matches!(r.protocol, route::PROTO_KERNEL | route::PROTO_RA) {
            continue;
        }
        match route::delete(sock, &r) {
            Ok(()) => debug!("Network: deleted route {r}"),
            // Gone with another one meanwhile.
            Err(e) if e.errno() == Some(libc::ESRCH) => {}
            Err(e) => {
                return Err(NetworkError::Netlink {
                    what: format!("delete the earlier route {r}"),
                    source: e,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use husk_netlink::{MacAddr, OperState};

    use super::plan::InterfacePlan;
    use super::*;

    fn link(index: u32, name: &str, mac: [u8; 6], flags: u32) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some(MacAddr(mac)),
            mtu: 1500,
            kind: None,
            flags,
            oper_state: OperState::Down,
        }
    }

    fn plan_for(name: &str, mac: [u8; 6]) -> Plan {
        Plan {
            interfaces: vec![InterfacePlan {
                name: name.into(),
                mac: MacAddr(mac),
                mtu: None,
                addresses: vec![],
            }],
            routes: vec![],
        }
    }

    #[test]
    fn links_are_found_by_mac() {
        let links = [
            link(1, "lo", [0; 6], link::IFF_LOOPBACK),
            link(2, "ens3", [2, 0, 0, 0, 0, 1], 0),
            link(3, "ens4", [2, 0, 0, 0, 0, 2], 0),
        ];
        let got = resolve(&plan_for("eth0", [2, 0, 0, 0, 0, 2]), &links).unwrap();
        assert_eq!(got[0].index, 3);

        let err = resolve(&plan_for("eth0", [2, 0, 0, 0, 0, 9]), &links).unwrap_err();
        assert!(matches!(err, NetworkError::NoSuchMac { .. }));
        let msg = err.to_string();
        assert!(msg.contains("02:00:00:00:00:09"), "{msg}");
        assert!(msg.contains("2: ens3 02:00:00:00:00:01"), "{msg}");
        assert!(msg.contains("3: ens4"), "{msg}");
        assert!(!err.is_invalid_argument());
    }

    #[test]
    fn a_shared_mac_needs_the_name() {
        let links = [
            link(2, "a", [2, 0, 0, 0, 0, 1], 0),
            link(3, "eth0", [2, 0, 0, 0, 0, 1], 0),
        ];
        assert_eq!(
            resolve(&plan_for("eth0", [2, 0, 0, 0, 0, 1]), &links).unwrap()[0].index,
            3
        );
        let err = resolve(&plan_for("eth1", [2, 0, 0, 0, 0, 1]), &links).unwrap_err();
        assert!(matches!(err, NetworkError::AmbiguousMac { .. }), "{err}");
    }

    #[test]
    fn kernel_refusals_of_values_are_the_callers() {
        let refused = |errno| NetworkError::Netlink {
            what: "x".into(),
            source: husk_netlink::Error::Netlink {
                op: "add route",
                message: None,
                source: std::io::Error::from_raw_os_error(errno),
            },
        };
        assert!(refused(libc::ENETUNREACH).is_invalid_argument());
        assert!(refused(libc::EINVAL).is_invalid_argument());
        assert!(!refused(libc::EPERM).is_invalid_argument());
        assert!(!NetworkError::HostNamespace { pid: 1 }.is_invalid_argument());
    }
}
