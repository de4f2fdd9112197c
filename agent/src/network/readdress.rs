//! Restored's NICs: a guest restored from a snapshot has the snapshot's MACs on its
//! links (the virtio-net driver read the MAC once, at boot), while each restored device
//! now sits on the pod's tap, whose frames leave through the pod's CNI veth. Each link
//! is found by the snapshot's MAC and given the pod's, before UpdateNetwork (which finds
//! links by the pod's MAC) runs. Clones of one snapshot on one bridge would otherwise
//! all send from one MAC.

use std::collections::HashSet;

use husk_netlink::{link, Link, MacAddr, Socket};
use husk_protocol::agent::RestoredInterface;
use tracing::info;

use super::plan::{unicast_mac, Invalid, MAX_ITEMS};
use super::{list_links, nl, show, NetworkError, Result};

/// One link's new MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacChange {
    /// The MAC the link has (the snapshot's).
    pub from: MacAddr,
    /// The MAC it gets.
    pub to: MacAddr,
}

/// Checks Restored's `interfaces` (every field before anything changes): unicast MACs,
/// no snapshot MAC or new MAC given twice.
pub fn plan(interfaces: &[RestoredInterface]) -> std::result::Result<Vec<MacChange>, Invalid> {
    if interfaces.len() > MAX_ITEMS {
        return Err(Invalid {
            field: "interfaces".into(),
            value: interfaces.len().to_string(),
            why: format!("at most {MAX_ITEMS}"),
        });
    }
    let (mut froms, mut tos) = (HashSet::new(), HashSet::new());
    let mut out = Vec::with_capacity(interfaces.len());
    for (i, iface) in interfaces.iter().enumerate() {
        let field = |f: &str| format!("interfaces[{i}].{f}");
        let from = unicast_mac(field("template_hw_addr"), &iface.template_hw_addr)?;
        let to = unicast_mac(field("hw_addr"), &iface.hw_addr)?;
        for (set, mac, f, v) in [
            (
                &mut froms,
                from,
                "template_hw_addr",
                &iface.template_hw_addr,
            ),
            (&mut tos, to, "hw_addr", &iface.hw_addr),
        ] {
            if !set.insert(mac) {
                return Err(Invalid {
                    field: field(f),
                    value: v.clone(),
                    why: "given twice".into(),
                });
            }
        }
        out.push(MacChange { from, to });
    }
    Ok(out)
}

/// The link each change applies to: the one non-loopback link with its `from` MAC
/// (none or several is an error naming the links there are). Nothing is changed.
fn resolve(changes: &[MacChange], links: &[Link]) -> Result<Vec<u32>> {
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let found: Vec<&Link> = links
                .iter()
                .filter(|l| !l.is_loopback() && l.mac == Some(c.from))
                .collect();
            match found.as_slice() {
                [one] => Ok(one.index),
                [] => Err(NetworkError::NoSuchMac {
                    name: format!("interfaces[{i}]"),
                    mac: c.from.to_string(),
                    links: show(&links.iter().collect::<Vec<_>>()),
                }),
                several => Err(NetworkError::AmbiguousMac {
                    name: format!("interfaces[{i}]"),
                    mac: c.from.to_string(),
                    links: show(several),
                }),
            }
        })
        .collect()
}

/// Gives each link its new MAC (taken down first: a template never configured its NICs,
/// and UpdateNetwork brings them up). Every link is found before any changes.
pub fn apply(changes: &[MacChange]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut sock = Socket::new().map_err(nl(|| "open a netlink socket".into()))?;
    let links = list_links(&mut sock)?;
    let targets = resolve(changes, &links)?;
    for (c, index) in changes.iter().zip(targets) {
        link::set_down(&mut sock, index)
            .map_err(nl(|| format!("take link {index} ({}) down", c.from)))?;
        link::set_mac(&mut sock, index, c.to).map_err(nl(|| {
            format!("change the MAC of link {index} from {} to {}", c.from, c.to)
        }))?;
        info!("Restored: link {index} has MAC {} (was {})", c.to, c.from);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use husk_netlink::OperState;

    use super::*;

    fn iface(from: &str, to: &str) -> RestoredInterface {
        let mut i = RestoredInterface::new();
        i.template_hw_addr = from.into();
        i.hw_addr = to.into();
        i
    }

    fn link(index: u32, name: &str, mac: [u8; 6]) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some(MacAddr(mac)),
            mtu: 1500,
            kind: None,
            flags: if name == "lo" { link::IFF_LOOPBACK } else { 0 },
            oper_state: OperState::Down,
        }
    }

    #[test]
    fn the_plan_checks_every_mac_and_refuses_repeats() {
        let ok = plan(&[
            iface("02:68:75:73:6b:00", "0a:58:0a:59:00:05"),
            iface("02:68:75:73:6b:01", "0a:58:0a:59:00:06"),
        ])
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].to.to_string(), "0a:58:0a:59:00:06");
        for (bad, field) in [
            (
                vec![iface("02:68:75:73:6b", "0a:58:0a:59:00:05")],
                "interfaces[0].template_hw_addr",
            ),
            (
                vec![iface("02:68:75:73:6b:00", "01:00:5e:00:00:01")],
                "interfaces[0].hw_addr",
            ),
            (
                vec![iface("02:68:75:73:6b:00", "00:00:00:00:00:00")],
                "interfaces[0].hw_addr",
            ),
            (
                vec![
                    iface("02:68:75:73:6b:00", "0a:58:0a:59:00:05"),
                    iface("02:68:75:73:6b:00", "0a:58:0a:59:00:06"),
                ],
                "interfaces[1].template_hw_addr",
            ),
            (
                vec![
                    iface("02:68:75:73:6b:00", "0a:58:0a:59:00:05"),
                    iface("02:68:75:73:6b:01", "0a:58:0a:59:00:05"),
                ],
                "interfaces[1].hw_addr",
            ),
        ] {
            let e = plan(&bad).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn links_are_found_by_the_snapshots_mac_and_never_lo() {
        let tpl = [0x02, 0x68, 0x75, 0x73, 0x6b, 0];
        let pod = MacAddr([0x0a, 0x58, 0x0a, 0x59, 0, 5]);
        let links = [link(1, "lo", tpl), link(2, "eth0", tpl)];
        let c = [MacChange {
            from: MacAddr(tpl),
            to: pod,
        }];
        assert_eq!(resolve(&c, &links).unwrap(), vec![2]);
        let e = resolve(&c, &links[..1]).unwrap_err();
        assert!(matches!(e, NetworkError::NoSuchMac { .. }), "{e}");
        assert!(e.to_string().contains("interfaces[0]"), "{e}");
        let two = [link(2, "eth0", tpl), link(3, "eth1", tpl)];
        let e = resolve(&c, &two).unwrap_err();
        assert!(matches!(e, NetworkError::AmbiguousMac { .. }), "{e}");
    }
}
