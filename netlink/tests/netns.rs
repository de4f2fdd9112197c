//! The client against the real kernel, each test in a fresh network
//! namespace of its own (needs root; skipped with a message otherwise).

use std::net::IpAddr;

use husk_netlink::link::IFF_UP;
use husk_netlink::{
    address, link, netns, route, AddressFlags, Family, IpNet, Link, MacAddr, NewRoute, Scope,
    Socket,
};

fn in_netns(test: &str, f: impl FnOnce(&mut Socket) + Send + 'static) {
    if !netns::can_unshare() {
        eprintln!("SKIP {test}: needs root to create a network namespace");
        return;
    }
    netns::run_in_new(move || {
        let mut nl = Socket::new().expect("open a netlink socket");
        f(&mut nl)
    })
    .expect("unshare(CLONE_NEWNET)");
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A veth end named `name` (this machine's kernel has veth but may lack
/// dummy), its peer `p-<name>` up so the end gets a carrier once up.
fn veth(nl: &mut Socket, name: &str) -> Link {
    let peer = format!("p-{name}");
    link::add_veth(nl, name, &peer).unwrap();
    let p = link::by_name(nl, &peer).unwrap().expect("the peer");
    link::set_up(nl, p.index).unwrap();
    link::by_name(nl, name).unwrap().expect("the new veth link")
}

#[test]
fn a_fresh_namespace_has_only_a_down_lo() {
    in_netns("a_fresh_namespace_has_only_a_down_lo", |nl| {
        let links = link::list(nl).unwrap();
        assert_eq!(links.len(), 1, "{links:?}");
        let lo = &links[0];
        assert_eq!(lo.name, "lo");
        assert!(lo.is_loopback() && !lo.is_up());
        assert_eq!(lo.kind, None);
        link::set_up(nl, lo.index).unwrap();
        assert!(link::by_name(nl, "lo").unwrap().unwrap().is_up());
        let addrs = address::list(nl).unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.net == net("127.0.0.1/8") && a.scope == Scope::Host),
            "{addrs:?}"
        );
    });
}

#[test]
fn links_are_renamed_resized_readdressed() {
    in_netns("links_are_renamed_resized_readdressed", |nl| {
        let d = veth(nl, "veth0");
        assert_eq!(d.kind.as_deref(), Some("veth"));
        assert!(!d.is_up());
        let mac: MacAddr = "02:aa:bb:cc:dd:01".parse().unwrap();
        link::set_mac(nl, d.index, mac).unwrap();
        let found = link::by_mac(nl, mac).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].index, d.index);

        link::set_name(nl, d.index, "eth0").unwrap();
        link::set_mtu(nl, d.index, 1400).unwrap();
        link::set_up(nl, d.index).unwrap();
        let l = link::by_index(nl, d.index).unwrap().unwrap();
        assert_eq!(l.name, "eth0");
        assert_eq!(l.mtu, 1400);
        assert_eq!(l.flags & IFF_UP, IFF_UP);
        assert!(link::by_name(nl, "veth0").unwrap().is_none());

        // A name another link has: the kernel says EEXIST, and we keep it.
        let err = link::set_name(nl, d.index, "lo").unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        assert!(
            err.to_string().starts_with("Netlink set link name failed"),
            "{err}"
        );
        link::set_down(nl, d.index).unwrap();
        assert!(!link::by_index(nl, d.index).unwrap().unwrap().is_up());

        link::delete(nl, d.index).unwrap();
        assert!(link::by_index(nl, d.index).unwrap().is_none());
        let err = link::delete(nl, d.index).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    });
}

#[test]
fn dummy_links_or_the_kernels_refusal() {
    in_netns(
        "dummy_links_or_the_kernels_refusal",
        |nl| match link::add_dummy(nl, "dummy0") {
            Ok(()) => {
                let d = link::by_name(nl, "dummy0").unwrap().expect("the dummy");
                assert_eq!(d.kind.as_deref(), Some("dummy"));
            }
            // A kernel without the dummy driver says so, errno and text kept.
            Err(e) => {
                assert_eq!(e.errno(), Some(libc::EOPNOTSUPP), "{e}");
                assert!(e.to_string().contains("Unknown device type"), "{e}");
            }
        },
    );
}

#[test]
fn veth_pairs() {
    in_netns("veth_pairs", |nl| {
        link::add_veth(nl, "veth-a", "veth-b").unwrap();
        let a = link::by_name(nl, "veth-a").unwrap().unwrap();
        let b = link::by_name(nl, "veth-b").unwrap().unwrap();
        assert_eq!(a.kind.as_deref(), Some("veth"));
        assert_eq!(b.kind.as_deref(), Some("veth"));
        assert!(a.mac.is_some() && a.mac != b.mac);
        let err = link::add_veth(nl, "veth-a", "veth-c").unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        link::delete(nl, a.index).unwrap();
        assert!(link::by_name(nl, "veth-b").unwrap().is_none());
    });
}

#[test]
fn dumps_span_many_datagrams() {
    in_netns("dumps_span_many_datagrams", |nl| {
        for i in 0..75 {
            link::add_veth(nl, &format!("a{i}"), &format!("b{i}")).unwrap();
        }
        let links = link::list(nl).unwrap();
        assert_eq!(links.len(), 151);
        for i in 0..75 {
            assert!(links.iter().any(|l| l.name == format!("a{i}")), "a{i}");
            assert!(links.iter().any(|l| l.name == format!("b{i}")), "b{i}");
        }
    });
}

#[test]
fn addresses_of_both_families() {
    in_netns("addresses_of_both_families", |nl| {
        let d = veth(nl, "eth0");
        link::set_up(nl, d.index).unwrap();
        address::add(nl, d.index, net("10.88.0.5/16"), AddressFlags::empty()).unwrap();
        address::add(nl, d.index, net("10.99.0.5/24"), AddressFlags::empty()).unwrap();
        address::add(nl, d.index, net("fd00::5/64"), AddressFlags::Nodad).unwrap();
        let err =
            address::add(nl, d.index, net("10.88.0.5/16"), AddressFlags::empty()).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");

        let addrs = address::list_link(nl, d.index).unwrap();
        let v4: Vec<_> = addrs.iter().filter(|a| a.family() == Family::V4).collect();
        assert_eq!(v4.len(), 2, "{addrs:?}");
        assert_eq!(v4[0].net, net("10.88.0.5/16"));
        assert_eq!(v4[0].label.as_deref(), Some("eth0"));
        let v6 = addrs
            .iter()
            .find(|a| a.net == net("fd00::5/64"))
            .expect("the IPv6 address");
        // No DAD: usable at once, never tentative.
        assert!(v6.flags.contains(AddressFlags::Nodad), "{v6:?}");
        assert!(!v6.flags.contains(AddressFlags::Tentative), "{v6:?}");
        assert_eq!(v6.scope, Scope::Universe);

        // The prefix routes are the kernel's.
        let routes = route::list(nl, Some(Family::V4)).unwrap();
        let prefix = routes
            .iter()
            .find(|r| r.destination == net("10.88.0.0/16"))
            .expect("the prefix route");
        assert_eq!(prefix.protocol, route::PROTO_KERNEL);
        assert_eq!(prefix.scope, Scope::Link);
        assert_eq!(prefix.device, Some(d.index));
        assert_eq!(prefix.source, Some(ip("10.88.0.5")));

        let n = address::flush(nl, d.index, Some(Family::V4)).unwrap();
        assert_eq!(n, 2);
        let left = address::list_link(nl, d.index).unwrap();
        assert!(left.iter().all(|a| a.family() == Family::V6), "{left:?}");
        address::flush(nl, d.index, None).unwrap();
        assert!(address::list_link(nl, d.index).unwrap().is_empty());
    });
}

#[test]
fn routes_with_gateways_metrics_and_sources() {
    in_netns("routes_with_gateways_metrics_and_sources", |nl| {
        let d = veth(nl, "eth0");
        link::set_up(nl, d.index).unwrap();
        address::add(nl, d.index, net("10.88.0.5/16"), AddressFlags::empty()).unwrap();
        address::add(nl, d.index, net("fd00::5/64"), AddressFlags::Nodad).unwrap();

        // A gateway off every subnet needs a link route to it first.
        let far_gw = NewRoute::via(IpNet::default_of(Family::V4), ip("169.254.1.1"), d.index);
        let err = route::add(nl, &far_gw).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
        route::add(nl, &NewRoute::link(net("169.254.1.1/32"), d.index)).unwrap();
        route::add(nl, &far_gw).unwrap();

        let mut r = NewRoute::via(net("10.200.0.0/16"), ip("10.88.0.1"), d.index);
        r.metric = 50;
        r.source = Some(ip("10.88.0.5"));
        route::add(nl, &r).unwrap();
        assert_eq!(route::add(nl, &r).unwrap_err().errno(), Some(libc::EEXIST));
        route::add(
            nl,
            &NewRoute::via(IpNet::default_of(Family::V6), ip("fd00::1"), d.index),
        )
        .unwrap();

        let routes = route::list(nl, None).unwrap();
        let find = |dst: &str| {
            routes
                .iter()
                .find(|x| x.destination == net(dst))
                .unwrap_or_else(|| panic!("no route to {dst} in {routes:?}"))
        };
        let default4 = find("0.0.0.0/0");
        assert_eq!(default4.gateway, Some(ip("169.254.1.1")));
        assert_eq!(default4.scope, Scope::Universe);
        assert_eq!(default4.protocol, route::PROTO_BOOT);
        let link_route = find("169.254.1.1/32");
        assert_eq!(link_route.scope, Scope::Link);
        assert_eq!(link_route.gateway, None);
        let via = find("10.200.0.0/16");
        assert_eq!(via.metric, 50);
        assert_eq!(via.source, Some(ip("10.88.0.5")));
        assert_eq!(via.device, Some(d.index));
        let default6 = find("::/0");
        assert_eq!(default6.gateway, Some(ip("fd00::1")));
        assert_eq!(default6.family(), Family::V6);
        assert!(routes.iter().all(|x| x.table == route::MAIN_TABLE));

        route::delete(nl, via).unwrap();
        route::delete(nl, default6).unwrap();
        assert_eq!(
            route::delete(nl, via).unwrap_err().errno(),
            Some(libc::ESRCH)
        );
        let after = route::list(nl, None).unwrap();
        assert!(!after.iter().any(|x| x.destination == net("10.200.0.0/16")));
        assert!(!after.iter().any(|x| x.destination == net("::/0")));
        assert!(after.iter().any(|x| x.destination == net("0.0.0.0/0")));
    });
}
