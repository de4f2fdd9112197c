//! Root tests: the set-up and teardown against real network namespaces made here with
//! `ip netns add` (a veth whose peer sits in a second netns, so the machine's own
//! network is never touched), read back through netlink.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use husk_netlink::{link, tc, Link};

use super::*;
use crate::network::{attach, detach, plan, Attached, NetError, NetState};
use crate::persist::Persisted;

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP: needs root (ip netns add, tun, tc)");
    }
    root
}

/// A pod netns `husk-t<pid>-<tag>` and a peer netns for the veth's other end.
struct TestNetns {
    name: String,
    peer: String,
    dir: PathBuf,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNetns {
    fn empty(tag: &str) -> Self {
        let name = format!("husk-t{}-{tag}", std::process::id());
        let peer = format!("{name}-p");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["netns", "del", &peer]).output();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "netns", "add", &peer]);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        Self { name, peer, dir }
    }

    /// As the CNI bridge plugin leaves it: eth0 (MTU 1400) with an IPv4 and an IPv6
    /// address, up, and a default route.
    fn cni(tag: &str) -> Self {
        let n = Self::empty(tag);
        n.ip(&[
            "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name", "p0", "netns",
            &n.peer,
        ]);
        n.ip(&["addr", "add", "10.200.0.5/24", "dev", "eth0"]);
        n.ip(&["addr", "add", "fd00:200::5/64", "dev", "eth0", "nodad"]);
        n.ip(&["link", "set", "eth0", "up"]);
        run(&["ip", "-n", &n.peer, "link", "set", "p0", "up"]);
        n.ip(&["route", "add", "default", "via", "10.200.0.1"]);
        n
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend_from_slice(args);
        run(&a);
    }

    fn attach(&self) -> Result<Attached, NetError> {
        attach(&self.path(), &self.dir)
    }

    /// The links, and per link its qdisc kinds and its ingress redirects (by name).
    fn snapshot(&self) -> Snapshot {
        in_netns(&self.path(), |_| {
            let mut sock = husk_netlink::Socket::new().unwrap();
            let links = link::list(&mut sock).unwrap();
            let name = |i: u32| {
                links
                    .iter()
                    .find(|l| l.index == i)
                    .map_or(format!("#{i}"), |l| l.name.clone())
            };
            let mut qdiscs = Vec::new();
            let mut redirects = Vec::new();
            for l in &links {
                for q in tc::qdiscs(&mut sock, l.index).unwrap() {
                    qdiscs.push((l.name.clone(), q.kind));
                }
                for f in tc::ingress_filters(&mut sock, l.index).unwrap_or_default() {
                    if let Some(to) = f.redirect_to {
                        redirects.push((l.name.clone(), name(to)));
                    }
                }
            }
            Ok(Snapshot {
                links,
                qdiscs,
                redirects,
            })
        })
        .unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.peer])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug)]
struct Snapshot {
    links: Vec<Link>,
    qdiscs: Vec<(String, String)>,
    redirects: Vec<(String, String)>,
}

impl Snapshot {
    fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    fn ingress(&self, name: &str) -> bool {
        self.qdiscs.iter().any(|(l, k)| l == name && k == "ingress")
    }

    /// No tap of ours, no ingress qdisc, no redirect.
    fn nothing_of_ours(&self) -> bool {
        !self.links.iter().any(|l| plan::is_tap_name(&l.name)) && self.no_tc_except(&[])
    }

    /// No redirect, and no ingress qdisc but on the links named.
    fn no_tc_except(&self, links: &[&str]) -> bool {
        !self
            .qdiscs
            .iter()
            .any(|(l, k)| k == "ingress" && !links.contains(&l.as_str()))
            && self.redirects.is_empty()
    }
}

fn tap_flags(fd: &std::os::fd::OwnedFd) -> i32 {
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes into the ifreq we own; the fd is a tun fd.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF as _, &mut ifr) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: TUNGETIFF filled in the flags member.
    i32::from(unsafe { ifr.ifr_ifru.ifru_flags })
}

#[test]
fn a_cni_netns_gets_a_tap_joined_both_ways_and_teardown_leaves_nothing() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::cni("full");
    let a = ns.attach().unwrap();
    let s = ns.snapshot();
    let eth0 = s.link("eth0").unwrap().clone();
    let tap = s.link("tap0_husk").expect("tap0_husk exists");
    assert_eq!(tap.mtu, 1400, "the veth's MTU");
    assert!(tap.is_up());
    assert_eq!(tap.kind.as_deref(), Some("tun"));
    assert!(
        s.ingress("eth0") && s.ingress("tap0_husk"),
        "{:?}",
        s.qdiscs
    );
    let mut r = s.redirects.clone();
    r.sort();
    assert_eq!(
        r,
        vec![
            ("eth0".to_owned(), "tap0_husk".to_owned()),
            ("tap0_husk".to_owned(), "eth0".to_owned())
        ]
    );
    let flags = tap_flags(&a.taps[0]);
    let want = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    assert_eq!(flags & want, want, "tap flags {flags:#x}");
    assert_eq!(flags & libc::IFF_PERSIST, 0, "not persistent");

    // The agent's request: the veth's identity, addresses and routes.
    let i = &a.request.interfaces[0];
    assert_eq!(i.name, "eth0");
    assert_eq!(i.hw_addr, eth0.mac.unwrap().to_string());
    assert_eq!(i.mtu, 1400);
    let addrs: Vec<String> = i
        .addresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefix_len))
        .collect();
    assert_eq!(addrs, ["10.200.0.5/24", "fd00:200::5/64"]);
    assert!(
        a.request
            .routes
            .iter()
            .any(|r| r.destination.is_empty() && r.gateway == "10.200.0.1" && r.device == "eth0"),
        "{:?}",
        a.request.routes
    );
    // What teardown needs is on disk.
    assert_eq!(
        crate::persist::read::<NetState>(&ns.dir).unwrap().as_ref(),
        Some(&a.state)
    );

    // husk-vmm's end: the last fd closes and the non-persistent tap goes with it. (A
    // child another test thread forks meanwhile holds a copy of the close-on-exec fd
    // until its exec, hence the polling.)
    drop(a.taps);
    let mut s = ns.snapshot();
    for _ in 0..100 {
        if s.link("tap0_husk").is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        s = ns.snapshot();
    }
    assert!(s.link("tap0_husk").is_none(), "{:?}", s.links);
    assert!(s.ingress("eth0"), "the veth's qdisc is ours to delete");

    detach(&a.state).unwrap();
    let s = ns.snapshot();
    assert!(s.nothing_of_ours(), "{s:?}");
    assert!(s.link("eth0").is_some());
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.200.0.5/24"));
    // Once more: nothing left is no error.
    detach(&a.state).unwrap();
}

#[test]
fn teardown_deletes_a_tap_that_is_still_open() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::cni("open");
    let a = ns.attach().unwrap();
    detach(&a.state).unwrap();
    let s = ns.snapshot();
    assert!(s.nothing_of_ours(), "{s:?}");
    drop(a.taps);
}

#[test]
fn a_netns_without_interfaces_is_refused_naming_it() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::empty("lo");
    let e = ns.attach().unwrap_err();
    let text = husk_errors::chain(&e);
    assert!(matches!(e, NetError::NoInterface { .. }), "{text}");
    assert!(text.contains(&ns.path().display().to_string()), "{text}");
    assert!(!ns.dir.join(NetState::FILE).exists());
}

#[test]
fn a_taken_tap_name_is_refused_and_the_other_tap_kept() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::cni("taken");
    ns.ip(&["tuntap", "add", "tap0_husk", "mode", "tap"]);
    let e = ns.attach().unwrap_err();
    let text = husk_errors::chain(&e);
    assert!(matches!(e, NetError::TapTaken { .. }), "{text}");
    assert!(
        text.contains(&ns.path().display().to_string()) && text.contains("File exists"),
        "{text}"
    );
    let s = ns.snapshot();
    assert!(s.link("tap0_husk").is_some(), "someone else's tap stays");
    assert!(s.no_tc_except(&[]), "{s:?}");
}

#[test]
fn a_failure_half_way_undoes_the_tap_and_leaves_foreign_qdiscs() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::cni("busy");
    run(&[
        "tc", "-n", &ns.name, "qdisc", "add", "dev", "eth0", "ingress",
    ]);
    let e = ns.attach().unwrap_err();
    let text = husk_errors::chain(&e);
    assert!(
        text.contains("ingress qdisc to eth0") && text.contains("File exists"),
        "{text}"
    );
    let s = ns.snapshot();
    assert!(
        s.link("tap0_husk").is_none(),
        "the new tap is undone: {s:?}"
    );
    assert!(s.ingress("eth0"), "eth0's own qdisc stays: {s:?}");
    assert!(s.no_tc_except(&["eth0"]), "{s:?}");
}

#[test]
fn detach_after_the_netns_is_gone_is_no_error() {
    if !is_root() {
        return;
    }
    let ns = TestNetns::cni("gone");
    let a = ns.attach().unwrap();
    drop(a.taps);
    run(&["ip", "netns", "del", &ns.name]);
    detach(&a.state).unwrap();
}
