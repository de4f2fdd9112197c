//! The set-up, undo and teardown logic against an in-memory netns ([`FakeNet`]).

use std::path::Path;

use super::fake::FakeNet;
use super::*;
use crate::persist::Persisted;

const NETNS: &str = "/var/run/netns/cni-test";

fn run_setup(net: &mut FakeNet) -> (Result<Attached, NetError>, Vec<NetState>) {
    let mut persisted = Vec::new();
    let r = setup(net, Path::new(NETNS), &mut |s| {
        persisted.push(s.clone());
        Ok(())
    });
    (r, persisted)
}

#[test]
fn setup_joins_the_veth_and_a_new_tap_both_ways() {
    let mut net = FakeNet::cni();
    let (r, persisted) = run_setup(&mut net);
    let a = r.unwrap();
    let tap = net.link("tap0_husk").expect("the tap exists").clone();
    assert_eq!(tap.info.mtu, 1450, "the veth's MTU");
    assert!(tap.up);
    let t = tap.info.index;
    assert_eq!(net.qdiscs, [2, t].into_iter().collect());
    assert_eq!(net.filters, [(2, t), (t, 2)].into_iter().collect());
    assert_eq!(a.taps.len(), 1);
    assert_eq!(a.nics.len(), 1);
    assert_eq!(a.nics[0].mac, [0x0a, 0x58, 0x0a, 0x58, 0, 5]);
    let expected = NetState {
        netns: NETNS.into(),
        interfaces: vec![NicNames {
            veth: "eth0".into(),
            tap: "tap0_husk".into(),
        }],
    };
    assert_eq!(a.state, expected);
    assert_eq!(persisted, vec![expected]);
    // Recorded before anything was created: a crash mid-way still finds the names.
    let first_create = net
        .calls
        .iter()
        .position(|c| c.starts_with("create_tap"))
        .unwrap();
    assert!(net.calls[..first_create]
        .iter()
        .all(|c| !c.starts_with("add_") && !c.starts_with("set_")));
    let i = &a.request.interfaces[0];
    assert_eq!(
        (i.name.as_str(), i.hw_addr.as_str(), i.mtu),
        ("eth0", "0a:58:0a:58:00:05", 1450)
    );
    assert_eq!(i.addresses[0].address, "10.88.0.5");
    assert_eq!(a.request.routes[0].gateway, "10.88.0.1");
    assert_eq!(a.request.routes[0].destination, "");

    teardown(&mut net, &a.state).unwrap();
    assert!(net.link("tap0_husk").is_none());
    assert!(net.qdiscs.is_empty());
    assert!(net.filters.is_empty());
    assert!(net.link("eth0").is_some(), "the CNI plugin's veth stays");
    // Again, with everything gone: nothing to do, no error.
    teardown(&mut net, &a.state).unwrap();
}

#[test]
fn a_netns_with_only_lo_is_refused_naming_it() {
    let mut net = FakeNet::cni();
    net.links.truncate(1);
    let (r, persisted) = run_setup(&mut net);
    let e = r.unwrap_err();
    assert!(matches!(e, NetError::NoInterface { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("The network namespace {NETNS} has no interface besides lo")
    );
    assert!(persisted.is_empty());
}

#[test]
fn a_taken_tap_name_is_refused_and_nothing_is_touched() {
    let mut net = FakeNet::cni();
    let mut taken = net.links[1].clone();
    taken.info.index = 7;
    taken.info.name = "tap0_husk".into();
    taken.info.mac = Some([2, 0, 0, 0, 0, 7]);
    net.links.push(taken);
    let before = net.clone();
    let (r, persisted) = run_setup(&mut net);
    let e = r.unwrap_err();
    assert!(matches!(e, NetError::TapTaken { .. }), "{e:?}");
    let text = husk_errors::chain(&e);
    assert!(text.contains(NETNS) && text.contains("tap0_husk"), "{text}");
    assert!(text.contains("File exists"), "the errno's text: {text}");
    assert!(persisted.is_empty());
    assert_eq!(net.links, before.links);
    assert!(net.qdiscs.is_empty() && net.filters.is_empty());
}

#[test]
fn a_failure_at_any_step_undoes_everything_before_it() {
    for (op, nth) in [
        ("create_tap", 1),
        ("set_mtu_up", 1),
        ("add_ingress", 1),
        ("add_ingress", 2),
        ("add_redirect", 1),
        ("add_redirect", 2),
    ] {
        let mut net = FakeNet::cni();
        // Two NICs, so a failure on the second undoes the first one's too.
        let mut net1 = net.links[1].clone();
        net1.info.index = 3;
        net1.info.name = "net1".into();
        net1.info.mac = Some([2, 0, 0, 0, 0, 3]);
        net.links.push(net1);
        for second in [false, true] {
            let mut n = net.clone();
            let nth = if second {
                nth + if op.starts_with("add_") { 2 } else { 1 }
            } else {
                nth
            };
            n.fail_at = Some((op, nth));
            let (r, _) = run_setup(&mut n);
            let e = r.expect_err(op);
            let text = husk_errors::chain(&e);
            assert!(text.contains(NETNS), "{op} #{nth}: {text}");
            assert!(
                text.contains("Operation not permitted"),
                "{op} #{nth}: {text}"
            );
            assert_eq!(
                n.links.iter().map(|l| &l.info.name).collect::<Vec<_>>(),
                ["lo", "eth0", "net1"],
                "{op} #{nth}: taps left"
            );
            assert!(
                n.qdiscs.is_empty(),
                "{op} #{nth}: qdiscs left: {:?}",
                n.qdiscs
            );
            assert!(n.filters.is_empty(), "{op} #{nth}: filters left");
        }
    }
}

#[test]
fn a_qdisc_that_was_there_before_is_not_ours_to_remove() {
    let mut net = FakeNet::cni();
    net.qdiscs.insert(2);
    let (r, _) = run_setup(&mut net);
    let text = husk_errors::chain(&r.unwrap_err());
    assert!(
        text.contains("ingress qdisc to eth0") && text.contains("File exists"),
        "{text}"
    );
    assert_eq!(
        net.qdiscs,
        [2].into_iter().collect(),
        "eth0's own qdisc stays"
    );
    assert!(net.link("tap0_husk").is_none());
}

#[test]
fn a_failed_persist_creates_nothing() {
    let mut net = FakeNet::cni();
    let r = setup(&mut net, Path::new(NETNS), &mut |_| {
        Err(NetError::Persist(crate::persist::PersistError::Io {
            what: "write",
            path: "/run/husk/x/network.json".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        }))
    });
    assert!(matches!(r, Err(NetError::Persist(_))));
    assert!(net.calls.iter().all(|c| !c.starts_with("create_tap")));
}

#[test]
fn teardown_tries_every_step_and_keeps_the_first_error() {
    let mut net = FakeNet::cni();
    let (r, _) = run_setup(&mut net);
    let a = r.unwrap();
    net.fail_at = Some(("del_ingress", 1));
    let e = teardown(&mut net, &a.state).unwrap_err();
    assert!(husk_errors::chain(&e).contains("ingress qdisc of eth0"));
    assert!(net.link("tap0_husk").is_none(), "the tap went all the same");
}

#[test]
fn a_missing_netns_fails_attach_with_enoent_and_is_nothing_to_detach() {
    let dir = std::env::temp_dir().join(format!("husk-net-{}", std::process::id()));
    let missing = Path::new("/var/run/netns/husk-no-such-netns");
    let e = attach(missing, &dir).unwrap_err();
    let text = husk_errors::chain(&e);
    assert!(matches!(e, NetError::OpenNetns { .. }), "{e:?}");
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    detach(&NetState {
        netns: missing.to_owned(),
        interfaces: vec![NicNames {
            veth: "eth0".into(),
            tap: "tap0_husk".into(),
        }],
    })
    .unwrap();
}

#[test]
fn a_path_that_is_no_netns_is_refused_on_attach_and_ignored_on_detach() {
    let file = std::env::temp_dir().join(format!("husk-not-a-netns-{}", std::process::id()));
    std::fs::write(&file, b"").unwrap();
    let e = attach(&file, &file.with_extension("json")).unwrap_err();
    let text = husk_errors::chain(&e);
    assert!(matches!(e, NetError::EnterNetns { .. }), "{text}");
    assert!(text.contains("Invalid argument"), "{text}");
    detach(&NetState {
        netns: file.clone(),
        interfaces: vec![],
    })
    .unwrap();
    let _ = std::fs::remove_file(&file);
}

#[test]
fn the_state_file_is_read_back_from_the_pod_dir() {
    let dir = std::env::temp_dir().join(format!("husk-net-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(read_state(&dir), None);
    let s = NetState {
        netns: NETNS.into(),
        interfaces: vec![NicNames {
            veth: "eth0".into(),
            tap: "tap0_husk".into(),
        }],
    };
    crate::persist::write(&dir, &s).unwrap();
    assert_eq!(read_state(&dir), Some(s));
    std::fs::write(dir.join(NetState::FILE), "{").unwrap();
    assert_eq!(read_state(&dir), None, "a torn file is ignored, not fatal");
    std::fs::remove_dir_all(&dir).unwrap();
}
