//! Pod networking through a private containerd, as CRI sets it up: a network namespace
//! with a CNI bridge veth (`husk_tests::cni`), joined with `ctr run --with-ns
//! network:/var/run/netns/X`. Every test runs under runc (`io.containerd.runc.v2`, the
//! reference: a test that fails there is a test bug) and under husk. Traffic goes only
//! between a test's own namespaces: its pods and its private node namespace (the bridge).
//!
//! All are `#[ignore]`d for a plain `cargo test` (they need root, containerd and the CNI
//! plugins; husk's boot guests): `make test` runs them (in the test host where needed).
//! Sizes: `HUSK_NET_TEST_MIB` (default 64) per direction, `HUSK_NET_CYCLES` (default 5)
//! run/remove cycles in the teardown test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use husk_tests::cni::{self, Network, Pod};
use husk_tests::containerd::{Containerd, HuskToml, RUNTIME};
use husk_tests::{net_probe_bin, require_file, Outcome};

const RUNC: &str = "io.containerd.runc.v2";
const PROBE: &str = "/bin/husk-net-probe";
const PORT: u16 = 5000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn containerd() -> Containerd {
    let probe = net_probe_bin();
    require_file(&probe);
    let c = Containerd::start(&HuskToml::default()).unwrap();
    c.import_busybox_with(&[(probe.as_path(), PROBE)]).unwrap();
    c
}

fn ctr_run(
    c: &Containerd,
    runtime: &str,
    netns: &Path,
    id: &str,
    detach: bool,
    args: &[&str],
) -> Outcome {
    c.run_in_netns(runtime, netns, id, detach, args).unwrap()
}

fn ok(o: &Outcome, what: &str, c: &Containerd, id: &str) {
    assert_eq!(
        o.code(),
        Some(0),
        "{what}: {}\nstdout: {}\nstderr: {}\n{}\n{}",
        o.status,
        o.stdout,
        o.stderr,
        c.pod_logs(id),
        c.log()
    );
}

/// `ctr run --rm` in the pod's namespace; must succeed. Returns stdout.
fn run_in(c: &Containerd, runtime: &str, pod: &Pod, id: &str, args: &[&str]) -> String {
    let o = ctr_run(c, runtime, &pod.netns, id, false, args);
    ok(&o, &format!("ctr run {args:?}"), c, id);
    o.stdout
}

fn wait_status(c: &Containerd, id: &str, want: &str) {
    let start = Instant::now();
    loop {
        let s = c.task_status(id);
        if s.as_deref() == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "task {id}: status {s:?}, want {want}\n{}\n{}",
            c.pod_logs(id),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ctr run -d` of the probe's server in the pod's namespace, RUNNING when it returns.
fn start_server(c: &Containerd, runtime: &str, pod: &Pod, id: &str) {
    let listen = format!("0.0.0.0:{PORT}");
    let o = ctr_run(c, runtime, &pod.netns, id, true, &[PROBE, "serve", &listen]);
    ok(&o, "ctr run -d (server)", c, id);
    wait_status(c, id, "RUNNING");
}

fn remove(c: &Containerd, id: &str) {
    let o = c.ctr(&["task", "rm", "-f", id]).unwrap();
    ok(&o, "ctr task rm -f", c, id);
    let o = c.ctr(&["container", "rm", id]).unwrap();
    ok(&o, "ctr container rm", c, id);
}

/// Asserts no process, mount or state of the runtime and nothing husk makes in a
/// namespace (tap, ingress qdisc, tc filter on eth0) is left in any of `namespaces`.
fn assert_clean(c: &Containerd, namespaces: &[&str], when: &str) {
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "{when}: left behind:\n{left}\n{}", c.log());
    for ns in namespaces {
        let l = cni::husk_leftovers(ns).unwrap();
        assert!(
            l.is_empty(),
            "{when}: left in netns {ns}:\n{}\n{}",
            l.join("\n"),
            c.log()
        );
    }
}

/// The value of `key=` in a probe's output line.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    cni::probe_field(out, key).unwrap_or_else(|| panic!("no {key}= in {out:?}"))
}

/// A host-side probe command (in the network's node namespace) that must succeed.
fn host_probe(net: &Network, args: &[&str]) -> String {
    let o = net.probe(args, Duration::from_secs(600)).unwrap();
    assert_eq!(
        o.code(),
        Some(0),
        "host probe {args:?}: {}{}",
        o.stdout,
        o.stderr
    );
    o.stdout
}

/// A probe server on the host side (node namespace) for one request; `listening` seen.
struct HostServer(Child);

impl HostServer {
    fn start(net: &Network, at: &str) -> Self {
        let probe = net_probe_bin();
        let mut child = net
            .command(&[probe.to_str().unwrap(), "serve", at, "--once"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening"), "host server: {line:?}");
        Self(child)
    }

    /// Waits for the one request to be served; returns the server's record of it.
    fn finish(mut self) -> String {
        let mut out = String::new();
        std::io::Read::read_to_string(self.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        let s = self.0.wait().unwrap();
        assert!(s.success(), "host server: {s}: {out}");
        out
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn eth0_shows_the_cni_address_mac_and_mtu(runtime: &str) {
    let c = containerd();
    for mtu in [None, Some(1400)] {
        let net = Network::new(mtu).unwrap();
        let pod = net.add_pod().unwrap();
        // The veth CNI made, as the pod's namespace has it: what eth0 must show.
        let veth = cni::sh(&mut cni::in_netns(
            &pod.ns,
            &["ip", "-o", "link", "show", "eth0"],
        ))
        .unwrap()
        .stdout;
        let veth_mtu = field(&veth.replace(" mtu ", " mtu="), "mtu").to_owned();
        if let Some(m) = mtu {
            assert_eq!(veth_mtu, m.to_string(), "CNI's veth: {veth}");
        }
        let id = format!("ipaddr{}", mtu.unwrap_or(0));
        let out = run_in(
            &c,
            runtime,
            &pod,
            &id,
            &["sh", "-c", "ip addr show eth0 && ip route"],
        );
        let want_inet = format!("inet {}/{}", pod.ip, pod.prefix_len);
        let want_mac = format!("link/ether {}", pod.mac);
        let want_mtu = format!(" mtu {veth_mtu} ");
        for want in [&want_inet, &want_mac, &want_mtu] {
            assert!(
                out.contains(want.as_str()),
                "{runtime}: eth0 lacks {want:?}:\n{out}"
            );
        }
        let want_route = format!("default via {}", pod.gateway);
        assert!(
            out.contains(&want_route),
            "{runtime}: no {want_route:?}:\n{out}"
        );
        assert_clean(&c, &[&pod.ns, &net.node_ns], "after ip addr");
    }
}

fn tcp_both_ways(runtime: &str) {
    let c = containerd();
    let bytes = (env_u64("HUSK_NET_TEST_MIB", 64) << 20).to_string();
    let net = Network::new(None).unwrap();
    let pod = net.add_pod().unwrap();
    start_server(&c, runtime, &pod, "srv");
    let to = format!("{}:{PORT}", pod.ip);
    let wait = husk_tests::boot_timeout().as_secs().to_string();
    // Host -> pod, then pod -> host, each over a connection the host opens.
    for dir in ["put", "get"] {
        let out = host_probe(&net, &[dir, &to, &bytes, "--wait", &wait]);
        eprintln!("{runtime} host {dir}: {}", out.trim());
        assert_eq!(field(&out, "bytes"), bytes);
        let peer = if dir == "put" {
            "peer_hash"
        } else {
            "want_hash"
        };
        assert_eq!(field(&out, "hash"), field(&out, peer), "{out}");
    }
    remove(&c, "srv");
    // The container opens the connection: to a server on the host side, at the gateway.
    let server = HostServer::start(&net, &format!("{}:{}", net.gateway(), PORT + 1));
    let gw = format!("{}:{}", net.gateway(), PORT + 1);
    let out = run_in(
        &c,
        runtime,
        &pod,
        "cli",
        &[PROBE, "put", &gw, &bytes, "--wait", "30"],
    );
    eprintln!("{runtime} container put: {}", out.trim());
    let served = server.finish();
    assert_eq!(field(&served, "bytes"), bytes, "{served}");
    assert_eq!(
        field(&served, "hash"),
        field(&out, "hash"),
        "host: {served} container: {out}"
    );
    assert_clean(&c, &[&pod.ns, &net.node_ns], "after the transfers");
}

fn two_pods_reach_each_other(runtime: &str) {
    let c = containerd();
    let net = Network::new(None).unwrap();
    let a = net.add_pod().unwrap();
    let b = net.add_pod().unwrap();
    start_server(&c, runtime, &a, "poda");
    let to = format!("{}:{PORT}", a.ip);
    let wait = husk_tests::boot_timeout().as_secs().to_string();
    let script = format!("{PROBE} put {to} 4194304 --wait {wait} && {PROBE} ping {to} 200");
    let out = run_in(&c, runtime, &b, "podb", &["sh", "-c", &script]);
    eprintln!("{runtime} pod b -> pod a: {}", out.trim());
    assert_eq!(field(&out, "hash"), field(&out, "peer_hash"), "{out}");
    assert_eq!(field(&out, "count"), "200", "{out}");
    remove(&c, "poda");
    assert_clean(&c, &[&a.ns, &b.ns, &net.node_ns], "after two pods");
}

/// A netns path that does not exist: both runtimes refuse, naming the path.
fn missing_netns_is_refused(runtime: &str) {
    let c = containerd();
    let ns = format!("husk-test-{}-missing", std::process::id());
    let path = cni::netns_path(&ns);
    assert!(!path.exists());
    let o = ctr_run(&c, runtime, &path, "nons", false, &["true"]);
    assert_ne!(o.code(), Some(0), "{runtime} ran in a missing netns: {o:?}");
    assert!(
        o.stderr.contains(path.to_str().unwrap()),
        "{runtime}: the error should name {}:\n{}",
        path.display(),
        o.stderr
    );
    let _ = c.ctr(&["container", "rm", "nons"]);
    assert_clean(&c, &[], "after a missing netns");
}

/// A namespace with only `lo` (no CNI run). runc runs the container there (it has only
/// lo: checked, so the set-up is what the husk case assumes); husk has no interface to
/// give the guest and must refuse, saying so, and leave nothing in the namespace.
fn netns_without_interface(runtime: &str) {
    let c = containerd();
    let ns = format!("husk-test-{}-empty", std::process::id());
    cni::add_netns(&ns).unwrap();
    let guard = NetnsGuard(ns.clone());
    let path = cni::netns_path(&ns);
    let o = ctr_run(&c, runtime, &path, "empty", false, &["ip", "-o", "link"]);
    if runtime == RUNC {
        ok(&o, "runc in an empty netns", &c, "empty");
        assert_eq!(o.stdout.lines().count(), 1, "only lo: {}", o.stdout);
        assert!(o.stdout.contains(": lo:"), "{}", o.stdout);
    } else {
        assert_ne!(o.code(), Some(0), "husk ran with no interface: {o:?}");
        let e = o.stderr.to_lowercase();
        assert!(
            e.contains("interface") && e.contains(path.to_str().unwrap()),
            "the error should say the netns {} has no interface:\n{}",
            path.display(),
            o.stderr
        );
        let _ = c.ctr(&["container", "rm", "empty"]);
    }
    assert_clean(&c, &[&ns], "after an empty netns");
    drop(guard);
}

/// A tap named `tap0_husk` already in the pod's namespace. runc does not care (the
/// container sees it: checked); husk cannot create its tap and must refuse, naming it,
/// leave the foreign tap alone and add nothing; once it is gone, husk runs there.
fn tap_name_taken(runtime: &str) {
    let c = containerd();
    let net = Network::new(None).unwrap();
    let pod = net.add_pod().unwrap();
    cni::sh(&mut cni::in_netns(
        &pod.ns,
        &["ip", "tuntap", "add", "dev", "tap0_husk", "mode", "tap"],
    ))
    .unwrap();
    let o = ctr_run(
        &c,
        runtime,
        &pod.netns,
        "taken",
        false,
        &["ip", "-o", "link"],
    );
    if runtime == RUNC {
        ok(&o, "runc beside a tap0_husk", &c, "taken");
        assert!(o.stdout.contains("tap0_husk"), "{}", o.stdout);
    } else {
        assert_ne!(o.code(), Some(0), "husk ran with tap0_husk taken: {o:?}");
        assert!(
            o.stderr.contains("tap0_husk"),
            "the error should name tap0_husk:\n{}",
            o.stderr
        );
        let _ = c.ctr(&["container", "rm", "taken"]);
    }
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "left behind:\n{left}\n{}", c.log());
    // Only the test's own tap: no qdisc or filter on eth0, no second tap.
    let l: Vec<String> = cni::husk_leftovers(&pod.ns)
        .unwrap()
        .into_iter()
        .filter(|l| !l.ends_with("link tap0_husk"))
        .collect();
    assert!(l.is_empty(), "left in {}:\n{}", pod.ns, l.join("\n"));
    assert!(
        cni::links(&pod.ns)
            .unwrap()
            .contains(&"tap0_husk".to_owned()),
        "the test's tap was removed"
    );
    cni::sh(&mut cni::in_netns(
        &pod.ns,
        &["ip", "link", "del", "tap0_husk"],
    ))
    .unwrap();
    let out = run_in(&c, runtime, &pod, "free", &["ip", "addr", "show", "eth0"]);
    assert!(out.contains(&format!("inet {}/", pod.ip)), "{out}");
    assert_clean(&c, &[&pod.ns, &net.node_ns], "after the tap was freed");
}

/// `HUSK_NET_CYCLES` run/remove cycles of a pod's server, each reached from the host
/// and checked for leftovers; then the VM's process (husk-vmm; for runc the container's
/// init) is killed with SIGKILL, and after containerd's clean-up nothing survives.
fn teardown(runtime: &str) {
    let c = containerd();
    let net = Network::new(None).unwrap();
    let pod = net.add_pod().unwrap();
    let to = format!("{}:{PORT}", pod.ip);
    let wait = husk_tests::boot_timeout().as_secs().to_string();
    let cycles = env_u64("HUSK_NET_CYCLES", 5);
    for i in 0..cycles {
        let id = format!("cycle{i}");
        start_server(&c, runtime, &pod, &id);
        let out = host_probe(&net, &["ping", &to, "20", "--wait", &wait]);
        assert_eq!(field(&out, "count"), "20", "{out}");
        remove(&c, &id);
        assert_clean(&c, &[&pod.ns, &net.node_ns], &format!("after cycle {i}"));
    }
    start_server(&c, runtime, &pod, "killed");
    host_probe(&net, &["ping", &to, "5", "--wait", &wait]);
    let victim = if runtime == RUNC {
        let o = c.ctr(&["task", "ls"]).unwrap();
        o.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some("killed"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .expect("task pid")
    } else {
        c.pod_pid("killed", "vmm").expect("VMM pid recorded")
    };
    // SAFETY: kill(2) with plain integers.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    wait_status(&c, "killed", "STOPPED");
    remove(&c, "killed");
    assert_clean(&c, &[&pod.ns, &net.node_ns], "after SIGKILL");
}

/// Deletes a namespace the test made without CNI.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        cni::del_netns(&self.0);
    }
}

husk_tests::under_runc_and_husk!(super::RUNC, super::RUNTIME;
    eth0_shows_the_cni_address_mac_and_mtu,
    tcp_both_ways,
    two_pods_reach_each_other,
    missing_netns_is_refused,
    netns_without_interface,
    tap_name_taken,
    teardown,
);
