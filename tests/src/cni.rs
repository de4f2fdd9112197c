//! Pod networks for the network tests and benchmark, made the way containerd's CRI makes
//! them: Debian's CNI plugins (`/usr/lib/cni`: `bridge` with `host-local` IPAM, and
//! `loopback`) run with `CNI_COMMAND=ADD|DEL`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_PATH` and the network config on stdin, and their result JSON parsed.
//!
//! Everything is private to one [`Network`]: its bridge lives in a network namespace of
//! its own (`husk-test-<tag>-node`, standing for the node's root namespace, which the
//! tests never touch: no bridge, route or `ip_forward` change on the machine, and the
//! bridge has no uplink, so no packet can leave it), with its own /24, and host-local
//! keeps its leases in the network's own dir. Host-side ends of a test (servers, clients)
//! run in that node namespace ([`Network::command`]). Each [`Pod`] is a namespace
//! `husk-test-<tag>-p<N>` with the CNI veth `eth0`. Dropping a pod runs CNI DEL and
//! deletes its namespace; dropping the network deletes the node namespace, bridge and all.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::guest::TempDir;
use crate::{run_with_watchdog, Outcome};

/// Where Debian's `containernetworking-plugins` puts the plugins (`CNI_PATH`).
pub const CNI_PATH: &str = "/usr/lib/cni";
/// The interface name CRI asks for.
pub const IFNAME: &str = "eth0";
/// The bridge's name in its (private) node namespace.
pub const BRIDGE: &str = "husk-br0";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command to completion under a 60 s watchdog; an error carries its output.
pub fn sh(cmd: &mut Command) -> Result<Outcome> {
    let o = run_with_watchdog(cmd, Duration::from_secs(60))?;
    if o.code() != Some(0) {
        bail!("{cmd:?} failed ({}):\n{}{}", o.status, o.stdout, o.stderr);
    }
    Ok(o)
}

/// `ip netns exec NS ARGS...`.
pub fn in_netns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// The path containerd and the shims are given for a named namespace.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(ns)
}

/// Creates a named network namespace with its loopback up (no other interface).
pub fn add_netns(ns: &str) -> Result<()> {
    sh(Command::new("ip").args(["netns", "add", ns]))?;
    sh(&mut in_netns(ns, &["ip", "link", "set", "lo", "up"]))?;
    Ok(())
}

/// Deletes a named network namespace (and so every interface in it), if it exists.
pub fn del_netns(ns: &str) {
    if netns_path(ns).exists() {
        let _ = run_with_watchdog(
            Command::new("ip").args(["netns", "del", ns]),
            Duration::from_secs(30),
        );
    }
}

/// Whether the CNI plugins and `ip` are there; `Err` says what to install.
pub fn check_tools() -> Result<()> {
    for p in ["bridge", "host-local", "loopback"] {
        let f = PathBuf::from(CNI_PATH).join(p);
        anyhow::ensure!(
            f.is_file(),
            "{} is missing: apt-get install containernetworking-plugins (scripts/install-deps.sh)",
            f.display()
        );
    }
    sh(Command::new("ip").arg("-V")).context("iproute2's `ip` is missing")?;
    Ok(())
}

/// A bridge network with its own node namespace, subnet and IPAM dir.
pub struct Network {
    pub tag: String,
    /// The namespace the bridge lives in (the host side of every pod's veth).
    pub node_ns: String,
    /// The subnet's first three octets, e.g. `10.200.7`.
    pub prefix: String,
    pub mtu: Option<u32>,
    ipam_dir: TempDir,
    config: String,
    pods: AtomicU32,
}

/// What CNI ADD gave a pod.
pub struct Pod<'a> {
    pub net: &'a Network,
    /// The pod's network namespace (name) and its path.
    pub ns: String,
    pub netns: PathBuf,
    pub container_id: String,
    /// The pod's address on eth0 (no prefix length) and its prefix length.
    pub ip: String,
    pub prefix_len: u8,
    /// The gateway CNI gave (the bridge's address).
    pub gateway: String,
    /// eth0's MAC as the plugin reported it (lower case).
    pub mac: String,
}

impl Network {
    /// Creates the node namespace and the network config (the bridge itself is made by the
    /// plugin at the first ADD). `mtu` is the plugin's `mtu` key (default: the kernel's).
    pub fn new(mtu: Option<u32>) -> Result<Self> {
        check_tools()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{pid}-{n}");
        // A /24 of 10.200.0.0/16 per network; it only exists inside the node namespace.
        let prefix = format!("10.200.{}", (pid.wrapping_mul(7).wrapping_add(n)) % 250 + 1);
        let node_ns = format!("husk-test-{tag}-node");
        let ipam_dir = TempDir::new("cni-ipam")?;
        let mut config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("husk-test-{tag}"),
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("{prefix}.0/24")}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir.path(),
            },
        });
        if let Some(m) = mtu {
            config["mtu"] = m.into();
        }
        add_netns(&node_ns)?;
        Ok(Self {
            tag,
            node_ns,
            prefix,
            mtu,
            ipam_dir,
            config: config.to_string(),
            pods: AtomicU32::new(0),
        })
    }

    /// A command run in the node namespace (the host side of the pods' network).
    pub fn command(&self, args: &[&str]) -> Command {
        in_netns(&self.node_ns, args)
    }

    /// Runs the net probe (`husk-net-probe ARGS`) on the host side, under a watchdog of
    /// `timeout`; its output whatever the exit status.
    pub fn probe(&self, args: &[&str], timeout: Duration) -> Result<Outcome> {
        let probe = crate::net_probe_bin();
        let mut a = vec![probe.to_str().context("probe path")?];
        a.extend_from_slice(args);
        run_with_watchdog(&mut self.command(&a), timeout)
    }

    /// The bridge's address (the pods' gateway).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// Runs one plugin as CRI does, in the node namespace; returns its stdout.
    fn plugin(
        &self,
        plugin: &str,
        command: &str,
        id: &str,
        netns: &std::path::Path,
        ifname: &str,
        config: &str,
    ) -> Result<String> {
        let mut child = self
            .command(&[&format!("{CNI_PATH}/{plugin}")])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn CNI plugin {plugin}"))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(config.as_bytes())?;
        let o = child.wait_with_output()?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if !o.status.success() {
            bail!(
                "CNI {plugin} {command} for {id} ({}) failed ({}): {out}{}",
                netns.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(out)
    }

    /// Makes a pod namespace and runs CNI ADD (loopback, then bridge on eth0) for it.
    pub fn add_pod(&self) -> Result<Pod<'_>> {
        let k = self.pods.fetch_add(1, Ordering::Relaxed);
        let ns = format!("husk-test-{}-p{k}", self.tag);
        let container_id = format!("husk-test-{}-p{k}", self.tag);
        add_netns(&ns)?;
        let netns = netns_path(&ns);
        // From here on the pod is dropped (CNI DEL, netns deleted) if anything fails.
        let mut pod = Pod {
            net: self,
            ns,
            netns,
            container_id,
            ip: String::new(),
            prefix_len: 0,
            gateway: String::new(),
            mac: String::new(),
        };
        let lo =
            serde_json::json!({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"});
        self.plugin(
            "loopback",
            "ADD",
            &pod.container_id,
            &pod.netns,
            "lo",
            &lo.to_string(),
        )?;
        let out = self.plugin(
            "bridge",
            "ADD",
            &pod.container_id,
            &pod.netns,
            IFNAME,
            &self.config,
        )?;
        let r = parse_result(&out, &pod.netns.to_string_lossy())
            .with_context(|| format!("CNI bridge ADD result: {out}"))?;
        (pod.ip, pod.prefix_len, pod.gateway, pod.mac) = r;
        Ok(pod)
    }
}

/// (address, prefix length, gateway, MAC of the sandbox's interface) from a CNI 1.0 result.
fn parse_result(out: &str, netns: &str) -> Result<(String, u8, String, String)> {
    let v: serde_json::Value = serde_json::from_str(out)?;
    let ifaces = v["interfaces"].as_array().context("no interfaces")?;
    let ip = v["ips"]
        .as_array()
        .and_then(|a| a.first())
        .context("no ips")?;
    let (addr, len) = ip["address"]
        .as_str()
        .and_then(|a| a.split_once('/'))
        .context("no address")?;
    let gateway = ip["gateway"].as_str().context("no gateway")?.to_owned();
    // The address's interface index, else the interface in the sandbox.
    let iface = ip["interface"]
        .as_u64()
        .and_then(|i| ifaces.get(i as usize))
        .or_else(|| ifaces.iter().find(|i| i["sandbox"].as_str() == Some(netns)))
        .context("no sandbox interface")?;
    let mac = iface["mac"].as_str().context("no mac")?.to_lowercase();
    Ok((addr.to_owned(), len.parse()?, gateway, mac))
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let n = self.net;
        if let Err(e) = n.plugin(
            "bridge",
            "DEL",
            &self.container_id,
            &self.netns,
            IFNAME,
            &n.config,
        ) {
            eprintln!("cni: {e:#}");
        }
        let lo =
            serde_json::json!({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"});
        let _ = n.plugin(
            "loopback",
            "DEL",
            &self.container_id,
            &self.netns,
            "lo",
            &lo.to_string(),
        );
        del_netns(&self.ns);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = run_with_watchdog(
            &mut self.command(&["ip", "link", "del", BRIDGE]),
            Duration::from_secs(30),
        );
        del_netns(&self.node_ns);
        let _ = &self.ipam_dir;
    }
}

/// The value of `key=` in a line of the net probe's output.
pub fn probe_field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The interface names in a namespace (`ip -o link show`, without the `@peer` part).
pub fn links(ns: &str) -> Result<Vec<String>> {
    let o = sh(&mut in_netns(ns, &["ip", "-o", "link", "show"]))?;
    Ok(o.stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

/// What a husk pod may leave in a namespace after its container is gone: taps named
/// `tap*_husk`, an ingress qdisc or any tc filter on eth0. Empty means clean. An eth0 that
/// is not there (a namespace without CNI) has nothing to check.
pub fn husk_leftovers(ns: &str) -> Result<Vec<String>> {
    let mut left: Vec<String> = links(ns)?
        .into_iter()
        .filter(|l| l.starts_with("tap") && l.ends_with("_husk"))
        .map(|l| format!("{ns}: link {l}"))
        .collect();
    if links(ns)?.iter().any(|l| l == IFNAME) {
        let q = sh(&mut in_netns(ns, &["tc", "qdisc", "show", "dev", IFNAME]))?;
        for l in q.stdout.lines().filter(|l| l.contains("ingress")) {
            left.push(format!("{ns}: eth0 qdisc {l}"));
        }
        let f = sh(&mut in_netns(
            ns,
            &["tc", "filter", "show", "dev", IFNAME, "ingress"],
        ))?;
        for l in f.stdout.lines().filter(|l| !l.trim().is_empty()) {
            left.push(format!("{ns}: eth0 ingress filter {l}"));
        }
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_bridge_result() {
        let out = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"husk-br0","mac":"6a:1f:00:00:00:01"},
            {"name":"veth1","mac":"6a:1f:00:00:00:02"},
            {"name":"eth0","mac":"AA:BB:CC:00:11:22","sandbox":"/var/run/netns/x"}],
            "ips":[{"interface":2,"address":"10.200.3.2/24","gateway":"10.200.3.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
        let (ip, len, gw, mac) = parse_result(out, "/var/run/netns/x").unwrap();
        assert_eq!(
            (ip.as_str(), len, gw.as_str()),
            ("10.200.3.2", 24, "10.200.3.1")
        );
        assert_eq!(mac, "aa:bb:cc:00:11:22");
        assert!(parse_result(r#"{"interfaces":[],"ips":[]}"#, "/x").is_err());
    }
}
