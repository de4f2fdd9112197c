//! UpdateNetwork end to end through the agent's ttrpc API: `husk-agent
//! serve` runs in a network namespace of its own, where the test makes a
//! veth whose MAC it knows (the stand-in for the guest's virtio-net link),
//! calls UpdateNetwork and reads back, with husk-netlink, what the agent
//! did to the links, addresses and routes; and /etc/hosts under its root.

mod support;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use husk_netlink::{address, link, route, AddressFlags, Family, Link, Route, Socket};
use husk_protocol::agent::{
    CreateSandboxRequest, Interface, IpAddress, RestoredInterface, RestoredRequest,
    Route as RouteMsg, UpdateNetworkRequest,
};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::ttrpc::Code;
use support::agent::{ctx, health_ok, Agent};
use support::api::{code_of, is_root};

/// The MAC of the test's "virtio-net" link.
const MAC: &str = "02:42:0a:58:00:05";
/// A second link's MAC.
const MAC2: &str = "02:42:0a:58:00:06";

/// Runs `f` with a netlink socket in the network namespace of process `pid`
/// (on a thread of its own, which setns moves there).
fn in_ns_of<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce(&mut Socket) -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        let ns = File::open(format!("/proc/{pid}/ns/net")).context("open the agent's netns")?;
        // SAFETY: setns takes an fd we own and a flag; it moves only this
        // thread into the namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        let mut nl = Socket::new()?;
        f(&mut nl)
    })
    .join()
    .expect("the netns thread panicked")
}

/// A veth `name` with MAC `mac` whose peer `p-<name>` is up, both down
/// otherwise: what the guest's virtio-net link looks like before the agent.
fn add_link(agent: &Agent, name: &'static str, mac: &'static str) -> Result<u32> {
    in_ns_of(agent.pid(), move |nl| {
        let peer = format!("p-{name}");
        link::add_veth(nl, name, &peer)?;
        let l = link::by_name(nl, name)?.context("the new veth")?;
        link::set_mac(nl, l.index, mac.parse()?)?;
        let p = link::by_name(nl, &peer)?.context("the peer")?;
        link::set_up(nl, p.index)?;
        Ok(l.index)
    })
}

struct State {
    links: Vec<Link>,
    addresses: Vec<address::Address>,
    routes: Vec<Route>,
}

impl State {
    fn link(&self, index: u32) -> &Link {
        self.links
            .iter()
            .find(|l| l.index == index)
            .expect("the link")
    }

    fn nets(&self, index: u32) -> Vec<String> {
        let mut v: Vec<String> = self
            .addresses
            .iter()
            .filter(|a| a.index == index && !is_link_local(&a.net.addr()))
            .map(|a| a.net.to_string())
            .collect();
        v.sort();
        v
    }

    /// The non-kernel routes on `index`, as "dst via gw metric src" strings.
    fn routes(&self, index: u32) -> Vec<String> {
        let mut v: Vec<String> = self
            .routes
            .iter()
            .filter(|r| r.device == Some(index) && r.protocol != route::PROTO_KERNEL)
            .map(|r| {
                let mut s = r.destination.to_string();
                if let Some(gw) = r.gateway {
                    s.push_str(&format!(" via {gw}"));
                }
                if r.metric != 0 && !(r.family() == Family::V6 && r.metric == 1024) {
                    s.push_str(&format!(" metric {}", r.metric));
                }
                if let Some(src) = r.source {
                    s.push_str(&format!(" src {src}"));
                }
                s.push_str(&format!(" scope {}", r.scope));
                s
            })
            .collect();
        v.sort();
        v
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn state(agent: &Agent) -> Result<State> {
    in_ns_of(agent.pid(), |nl| {
        Ok(State {
            links: link::list(nl)?,
            addresses: address::list(nl)?,
            routes: route::list(nl, None)?,
        })
    })
}

fn iface(name: &str, mac: &str, mtu: u32, addrs: &[(&str, u32)]) -> Interface {
    let mut i = Interface::new();
    i.name = name.into();
    i.hw_addr = mac.into();
    i.mtu = mtu;
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

fn rt(dst: &str, gw: &str, dev: &str) -> RouteMsg {
    let mut r = RouteMsg::new();
    r.destination = dst.into();
    r.gateway = gw.into();
    r.device = dev.into();
    r
}

fn req(interfaces: Vec<Interface>, routes: Vec<RouteMsg>) -> UpdateNetworkRequest {
    let mut r = UpdateNetworkRequest::new();
    r.interfaces = interfaces;
    r.routes = routes;
    r
}

fn hosts(agent: &Agent) -> Result<String> {
    let path = agent.dir.join("root/sandbox/etc/hosts");
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

fn create_sandbox(c: &AgentClient, hostname: &str) -> Result<()> {
    let mut sreq = CreateSandboxRequest::new();
    sreq.sandbox_id = "pod-net".into();
    sreq.hostname = hostname.into();
    c.create_sandbox(ctx(), &sreq)?;
    Ok(())
}

#[test]
fn update_network_configures_and_then_replaces() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP update_network_configures_and_then_replaces: needs root for a netns");
        return Ok(());
    }
    let mut agent = Agent::start_in_new_netns("net-update")?;
    let c = agent.client()?;
    let index = add_link(&agent, "ens3", MAC)?;
    create_sandbox(&c, "pod-one")?;
    assert!(!hosts(&agent)?.contains("pod-one"), "no address yet");

    let mut with_src = rt("10.200.0.0/16", "10.88.0.254", "eth0");
    with_src.metric = 100;
    with_src.source = "10.88.0.5".into();
    let first = req(
        vec![iface(
            "eth0",
            "02:42:0A:58:00:05",
            1400,
            &[("10.88.0.5", 16), ("fd00::5", 64)],
        )],
        vec![
            rt("", "10.88.0.1", "eth0"),
            with_src,
            rt("", "fd00::1", "eth0"),
        ],
    );
    c.update_network(ctx(), &first)?;
    let s = state(&agent)?;
    let l = s.link(index);
    assert_eq!(l.name, "eth0");
    assert_eq!(l.mtu, 1400);
    assert!(l.is_up(), "{l}");
    let lo = s.links.iter().find(|l| l.is_loopback()).unwrap();
    assert!(lo.is_up(), "lo is up: {lo}");
    assert_eq!(s.nets(index), ["10.88.0.5/16", "fd00::5/64"]);
    let v6 = s
        .addresses
        .iter()
        .find(|a| a.net.to_string() == "fd00::5/64")
        .unwrap();
    assert!(v6.flags.contains(AddressFlags::Nodad), "{v6:?}");
    assert!(!v6.flags.contains(AddressFlags::Tentative), "{v6:?}");
    assert_eq!(
        s.routes(index),
        [
            "0.0.0.0/0 via 10.88.0.1 scope global",
            "10.200.0.0/16 via 10.88.0.254 metric 100 src 10.88.0.5 scope global",
            "::/0 via fd00::1 scope global",
        ]
    );
    assert!(
        hosts(&agent)?.ends_with("\n10.88.0.5\tpod-one\n"),
        "{}",
        hosts(&agent)?
    );

    // The same request again: the same result, no EEXIST.
    c.update_network(ctx(), &first)?;
    assert_eq!(state(&agent)?.routes(index).len(), 3);

    // A second, different call replaces addresses, MTU and routes. A /32
    // with a gateway outside it (Calico's way) gets a link route to it.
    let second = req(
        vec![iface("eth0", MAC, 1500, &[("10.1.2.3", 32)])],
        vec![rt("", "169.254.1.1", "eth0")],
    );
    c.update_network(ctx(), &second)?;
    let s = state(&agent)?;
    assert_eq!(s.link(index).mtu, 1500);
    assert_eq!(s.nets(index), ["10.1.2.3/32"]);
    assert_eq!(
        s.routes(index),
        [
            "0.0.0.0/0 via 169.254.1.1 scope global",
            "169.254.1.1/32 scope link"
        ]
    );
    assert!(hosts(&agent)?.ends_with("\n10.1.2.3\tpod-one\n"));

    // No addresses: none left, and /etc/hosts drops the pod's line.
    c.update_network(ctx(), &req(vec![iface("eth0", MAC, 0, &[])], vec![]))?;
    let s = state(&agent)?;
    assert!(s.nets(index).is_empty(), "{:?}", s.nets(index));
    assert!(s.routes(index).is_empty(), "{:?}", s.routes(index));
    assert_eq!(s.link(index).mtu, 1500, "mtu 0 keeps the device's");
    assert!(!hosts(&agent)?.contains("pod-one"));
    agent.assert_alive()
}

#[test]
fn two_links_by_mac_even_trading_names() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP two_links_by_mac_even_trading_names: needs root for a netns");
        return Ok(());
    }
    let mut agent = Agent::start_in_new_netns("net-two")?;
    let c = agent.client()?;
    // Named the other way round from what the request wants.
    let a = add_link(&agent, "eth1", MAC)?;
    let b = add_link(&agent, "eth0", MAC2)?;
    c.update_network(
        ctx(),
        &req(
            vec![
                iface("eth0", MAC, 0, &[("10.88.0.5", 16)]),
                iface("eth1", MAC2, 9000, &[("192.168.77.5", 24)]),
            ],
            vec![
                rt("10.0.0.0/8", "192.168.77.1", "eth1"),
                rt("", "10.88.0.1", "eth0"),
            ],
        ),
    )?;
    let s = state(&agent)?;
    assert_eq!(s.link(a).name, "eth0");
    assert_eq!(s.link(b).name, "eth1");
    assert_eq!(s.link(b).mtu, 9000);
    assert_eq!(s.nets(a), ["10.88.0.5/16"]);
    assert_eq!(s.nets(b), ["192.168.77.5/24"]);
    assert_eq!(s.routes(a), ["0.0.0.0/0 via 10.88.0.1 scope global"]);
    assert_eq!(s.routes(b), ["10.0.0.0/8 via 192.168.77.1 scope global"]);
    agent.assert_alive()
}

#[test]
fn bad_network_requests_get_clear_errors_and_change_nothing() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP bad_network_requests_get_clear_errors_and_change_nothing: needs root");
        return Ok(());
    }
    let mut agent = Agent::start_in_new_netns("net-bad")?;
    let c = agent.client()?;
    let index = add_link(&agent, "ens3", MAC)?;
    let good = || iface("eth0", MAC, 0, &[("10.88.0.5", 16)]);
    let cases: Vec<(&str, UpdateNetworkRequest, Code, &str)> = vec![
        (
            "bad MAC",
            req(vec![iface("eth0", "02:42:0a:58:00", 0, &[])], vec![]),
            Code::INVALID_ARGUMENT,
            "interfaces[0].hw_addr",
        ),
        (
            "bad address",
            req(vec![iface("eth0", MAC, 0, &[("10.88.0.300", 16)])], vec![]),
            Code::INVALID_ARGUMENT,
            "interfaces[0].addresses[0].address",
        ),
        (
            "bad prefix",
            req(vec![iface("eth0", MAC, 0, &[("fd00::5", 129)])], vec![]),
            Code::INVALID_ARGUMENT,
            "interfaces[0].addresses[0].prefix_len",
        ),
        (
            "bad name",
            req(vec![iface("eth 0", MAC, 0, &[])], vec![]),
            Code::INVALID_ARGUMENT,
            "interfaces[0].name",
        ),
        (
            "bad MTU",
            req(vec![iface("eth0", MAC, 20, &[])], vec![]),
            Code::INVALID_ARGUMENT,
            "interfaces[0].mtu",
        ),
        (
            "bad route destination",
            req(vec![good()], vec![rt("10.88.0.0/99", "", "eth0")]),
            Code::INVALID_ARGUMENT,
            "routes[0].destination",
        ),
        (
            "host bits in a destination",
            req(vec![good()], vec![rt("10.9.0.1/16", "", "eth0")]),
            Code::INVALID_ARGUMENT,
            "the network is 10.9.0.0/16",
        ),
        (
            "unknown device",
            req(vec![good()], vec![rt("", "10.88.0.1", "eth7")]),
            Code::INVALID_ARGUMENT,
            "routes[0].device \"eth7\": not one of the interfaces (eth0)",
        ),
        (
            "gateway of another family",
            req(vec![good()], vec![rt("10.9.0.0/16", "fd00::1", "eth0")]),
            Code::INVALID_ARGUMENT,
            "routes[0].gateway",
        ),
        (
            "no link with the MAC",
            req(vec![iface("eth0", "02:00:00:00:00:99", 0, &[])], vec![]),
            Code::NOT_FOUND,
            "No link has MAC 02:00:00:00:00:99 (interface \"eth0\"); the links are:",
        ),
    ];
    for (what, r, code, want) in cases {
        let (got, msg) = code_of(c.update_network(ctx(), &r));
        assert_eq!(got, code, "{what}: {msg}");
        assert!(msg.contains(want), "{what}: {msg:?} lacks {want:?}");
        health_ok(&c).with_context(|| format!("after {what}"))?;
    }
    // The NOT_FOUND message lists the links there are.
    let (_, msg) = code_of(c.update_network(
        ctx(),
        &req(vec![iface("eth0", "02:00:00:00:00:99", 0, &[])], vec![]),
    ));
    assert!(msg.contains(&format!("{index}: ens3 {MAC}")), "{msg}");
    // Nothing was touched by any of them.
    let s = state(&agent)?;
    assert_eq!(s.link(index).name, "ens3");
    assert!(!s.link(index).is_up());
    assert!(s.nets(index).is_empty());

    // A value only the kernel refuses (a source address the guest does not
    // have) is the caller's too, with the kernel's errno in the message.
    let mut bad_src = rt("10.9.0.0/16", "10.88.0.1", "eth0");
    bad_src.source = "10.50.0.1".into();
    let (got, msg) = code_of(c.update_network(ctx(), &req(vec![good()], vec![bad_src])));
    eprintln!("the kernel's refusal: {msg}");
    assert_eq!(got, Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.contains("Cannot add route 10.9.0.0/16 via 10.88.0.1 dev eth0 src 10.50.0.1"),
        "{msg}"
    );
    assert!(msg.contains("(os error 22)"), "{msg}");
    agent.assert_alive()
}

/// Started without a namespace of its own, the agent is in the test's (the
/// host's, or CI's): it refuses before touching anything.
#[test]
fn serve_refuses_the_hosts_own_namespace() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP serve_refuses_the_hosts_own_namespace: needs root");
        return Ok(());
    }
    // A MAC no link has and no routes: even if the refusal failed, nothing
    // on the host would match.
    let mut agent = Agent::start("net-host")?;
    let c = agent.client()?;
    let r = req(vec![iface("eth0", "02:00:00:00:00:98", 0, &[])], vec![]);
    let (got, msg) = code_of(c.update_network(ctx(), &r));
    assert_eq!(got, Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("start it in a fresh one"), "{msg}");
    agent.assert_alive()
}

/// A guest restored from a template has the template's MAC on its link: Restored gives
/// it the pod's (checking every field first), and UpdateNetwork then finds it by that.
#[test]
fn restored_gives_the_links_the_pods_macs() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP restored_gives_the_links_the_pods_macs: needs root for a netns");
        return Ok(());
    }
    const TEMPLATE_MAC: &str = "02:68:75:73:6b:00";
    let mut agent = Agent::start_in_new_netns("net-restored")?;
    let c = agent.client()?;
    let index = add_link(&agent, "eth0", TEMPLATE_MAC)?;
    let restored = |ifaces: &[(&str, &str)]| {
        let mut r = RestoredRequest::new();
        r.sec = 1_700_000_000;
        r.entropy = vec![7; 32];
        r.interfaces = ifaces
            .iter()
            .map(|(from, to)| {
                let mut i = RestoredInterface::new();
                i.template_hw_addr = (*from).into();
                i.hw_addr = (*to).into();
                i
            })
            .collect();
        r
    };
    // Refused before anything changes: a bad MAC, and a link nobody has.
    let (got, msg) = code_of(c.restored(ctx(), &restored(&[(TEMPLATE_MAC, "ff:ff:ff:ff:ff:ff")])));
    assert_eq!(got, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("interfaces[0].hw_addr"), "{msg}");
    let (got, msg) = code_of(c.restored(
        ctx(),
        &restored(&[(TEMPLATE_MAC, MAC), ("02:68:75:73:6b:01", MAC2)]),
    ));
    assert_eq!(got, Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("02:68:75:73:6b:01"), "{msg}");
    assert_eq!(
        state(&agent)?
            .link(index)
            .mac
            .map(|m| m.to_string())
            .as_deref(),
        Some(TEMPLATE_MAC),
        "a refused request changes nothing"
    );

    c.restored(ctx(), &restored(&[(TEMPLATE_MAC, MAC)]))?;
    assert_eq!(
        state(&agent)?
            .link(index)
            .mac
            .map(|m| m.to_string())
            .as_deref(),
        Some(MAC)
    );
    create_sandbox(&c, "restored")?;
    c.update_network(
        ctx(),
        &req(vec![iface("eth0", MAC, 0, &[("10.88.0.7", 16)])], vec![]),
    )?;
    let s = state(&agent)?;
    assert!(s.link(index).is_up());
    assert_eq!(s.nets(index), ["10.88.0.7/16"]);
    agent.assert_alive()
}
