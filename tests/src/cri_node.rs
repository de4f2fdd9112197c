//! A Kubernetes node as the CRI tests and `make demo-pod` use it: containerd with its
//! CRI plugin (`Containerd::start_cri`), a CNI network of its own and the project's
//! images (busybox, the pause image) imported into `k8s.io`, and a CRI client on it.
//!
//! The CNI bridge is made by containerd's CRI plugin in the node's root network
//! namespace (the test host's), as on a Kubernetes node: a private name (`hcri<N>`) and
//! /24 of 10.89.0.0/16 with no uplink or masquerade, deleted when the node is dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use husk_cri::{api, Cri};

use crate::boot_timeout;
use crate::containerd::{build_pause_archive, Containerd, HuskToml, BUSYBOX_IMAGE};
use crate::guest::TempDir;

/// A node: containerd with the CRI plugin, its CNI network and images.
pub struct Node {
    pub containerd: Containerd,
    pub cri: Cri,
    pub bridge: String,
    /// The pod subnet's first three octets.
    pub prefix: String,
    /// Where the pods' log directories go.
    pub logs: TempDir,
    _cni: TempDir,
}

impl Node {
    /// Starts the node; panics (with containerd's log) if it cannot.
    pub fn start() -> Node {
        Self::try_start("").unwrap()
    }

    /// Starts the node with `extra` appended to containerd's config (more runtime
    /// handlers); the error says what failed.
    pub fn try_start(extra: &str) -> anyhow::Result<Node> {
        Self::try_start_with(&HuskToml::default(), extra)
    }

    /// As [`Node::try_start`], with `husk` as the husk handler's husk.toml.
    pub fn try_start_with(husk: &HuskToml, extra: &str) -> anyhow::Result<Node> {
        use anyhow::Context;
        crate::cni::check_tools()?;
        let n = std::process::id() % 250 + 1;
        let bridge = format!("hcri{n}");
        let prefix = format!("10.89.{n}");
        let cni = TempDir::new("cri-cni")?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("husk-cri-{n}"),
            "plugins": [
                {
                    "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("{prefix}.0/24")}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": cni.path().join("ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(
            cni.path().join("10-husk-cri.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        let containerd = Containerd::start_cri_with(husk, cni.path(), extra)?;
        containerd.import_busybox()?;
        let pause = build_pause_archive(containerd.dir.path())?;
        let o = containerd.ctr(&["images", "import", &pause.display().to_string()])?;
        anyhow::ensure!(
            o.code() == Some(0),
            "import pause: {}{}",
            o.stdout,
            o.stderr
        );
        let cri = Cri::connect(
            containerd.cri_socket(),
            boot_timeout() + Duration::from_secs(120),
        )?;
        let v = cri
            .version()
            .with_context(|| format!("CRI Version\n{}", containerd.log()))?;
        eprintln!("CRI: {} {}", v.runtime_name, v.runtime_version);
        anyhow::ensure!(
            cri.image_present(BUSYBOX_IMAGE)?,
            "{BUSYBOX_IMAGE} is not in k8s.io"
        );
        Ok(Node {
            containerd,
            cri,
            bridge,
            prefix,
            logs: TempDir::new("cri-logs")?,
            _cni: cni,
        })
    }

    /// A pod config as a kubelet sends it (see `husk_cri::pod_config`), its log
    /// directory made under the node's.
    pub fn pod_config(&self, name: &str) -> api::PodSandboxConfig {
        let log_dir = self.logs.path().join(name);
        std::fs::create_dir_all(&log_dir).expect("the pod's log directory");
        husk_cri::pod_config(name, &format!("uid-{name}"), &log_dir)
    }

    /// RunPodSandbox with `handler`; panics with the error and containerd's log.
    pub fn run_pod(&self, config: &api::PodSandboxConfig, handler: &str) -> String {
        self.cri
            .run_pod_sandbox(config, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", self.explain()))
    }

    /// CreateContainer and StartContainer of each of `containers` in `pod`, in order;
    /// their ids. Panics with the error and containerd's log.
    pub fn start_containers(
        &self,
        pod: &str,
        pod_config: &api::PodSandboxConfig,
        containers: &[&api::ContainerConfig],
        handler: &str,
    ) -> Vec<String> {
        containers
            .iter()
            .map(|c| {
                let id = self
                    .cri
                    .create_container(pod, c, pod_config)
                    .unwrap_or_else(|e| {
                        panic!("CreateContainer ({handler}): {e}\n{}", self.explain())
                    });
                self.cri.start_container(&id).unwrap_or_else(|e| {
                    panic!("StartContainer ({handler}): {e}\n{}", self.explain())
                });
                id
            })
            .collect()
    }

    /// Stops and removes `containers` (SIGKILL after `grace_secs`) and then `pod`, and
    /// checks that nothing of it is left (processes, mounts, state).
    pub fn remove_pod(&self, pod: &str, containers: &[String], grace_secs: i64, handler: &str) {
        for id in containers {
            self.cri.stop_container(id, grace_secs).unwrap();
            self.cri.remove_container(id).unwrap();
        }
        self.cri.stop_pod_sandbox(pod).unwrap();
        self.cri.remove_pod_sandbox(pod).unwrap();
        let left = self.containerd.wait_clean(Duration::from_secs(30));
        assert!(left.is_empty(), "{handler} left:\n{left}");
    }

    /// What went wrong, for a failed assertion: containerd's log tail and the pods.
    pub fn explain(&self) -> String {
        let log = self.containerd.log();
        let tail: String = log
            .lines()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "--- containerd log tail ---\n{tail}\n--- pods ---\n{}",
            self.containerd.pod_report()
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// Polls `done` every 200 ms; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An HTTP GET from the node to `ip:port`; the response's body.
pub fn http_get(ip: &str, port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().expect("address"),
        Duration::from_secs(10),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned()))
}

// What the CRI tests ask of containers and configure in them.

/// Runs `args` in container `id` and returns its stdout, failing the test on a nonzero
/// exit (with stderr).
pub fn run_in(node: &Node, id: &str, args: &[&str]) -> String {
    let r = node
        .cri
        .exec_sync(id, args, 0)
        .unwrap_or_else(|e| panic!("ExecSync {args:?} in {id}: {e}"));
    assert_eq!(
        r.exit_code,
        0,
        "{args:?} in {id}: exit {}\nstdout: {}\nstderr: {}",
        r.exit_code,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// Runs each `(key, shell command)` in container `id` in one ExecSync and returns each
/// command's output (stdout and stderr) by key. Each marker line starts a line of its own
/// (an output without a final newline, /proc/1/cmdline's, cannot swallow it), so an
/// output may end with an empty line: compare trimmed.
pub fn facts(node: &Node, id: &str, checks: &[(&str, &str)]) -> Facts {
    let script: String = checks
        .iter()
        .map(|(k, cmd)| format!("echo; echo '@@{k}'; ( {cmd} ) 2>&1; "))
        .collect();
    let out = run_in(node, id, &["sh", "-c", &script]);
    let mut map = BTreeMap::new();
    let mut key: Option<String> = None;
    for line in out.lines() {
        if let Some(k) = line.strip_prefix("@@") {
            key = Some(k.to_owned());
            map.insert(k.to_owned(), String::new());
        } else if let Some(k) = &key {
            let v = map.get_mut(k).expect("inserted");
            v.push_str(line);
            v.push('\n');
        }
    }
    for (k, _) in checks {
        assert!(map.contains_key(*k), "no answer for {k} in {id}:\n{out}");
    }
    Facts(map)
}

/// What [`facts`] found, by key.
pub struct Facts(BTreeMap<String, String>);

impl Facts {
    /// The output of the command run as `key` (empty if none ran).
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }
}

pub fn host_mount(container: &str, host: &std::path::Path, readonly: bool) -> api::Mount {
    api::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

pub fn pid_namespace(config: &mut api::ContainerConfig, mode: api::NamespaceMode) {
    let linux = config.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.namespace_options
        .get_or_insert_with(Default::default)
        .pid = mode as i32;
}

pub fn security(config: &mut api::ContainerConfig) -> &mut api::LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The masked and read-only paths a kubelet sends for an unprivileged container
/// (Kubernetes' defaults; containerd's CRI applies exactly what it is sent).
pub fn kubelet_default_paths(sc: &mut api::LinuxContainerSecurityContext) {
    sc.masked_paths = [
        "/proc/asound",
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
    ]
    .map(String::from)
    .to_vec();
    sc.readonly_paths = [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]
    .map(String::from)
    .to_vec();
}

pub fn seccomp(
    kind: api::security_profile::ProfileType,
    path: &str,
) -> Option<api::SecurityProfile> {
    Some(api::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: path.into(),
    })
}

/// The `CapEff` mask of /proc/self/status in `status`.
pub fn cap_eff(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapEff in:\n{status}"))
}

/// CPU time in µs a cgroup (and its children) used: v2's cpu.stat, or v1's cpuacct.
pub fn cgroup_cpu_usec(path: &str) -> u64 {
    let rel = path.trim_start_matches('/');
    let v2 = std::fs::read_to_string(format!("/sys/fs/cgroup/{rel}/cpu.stat")).ok();
    if let Some(stat) = v2.filter(|s| s.contains("usage_usec")) {
        return stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
    }
    std::fs::read_to_string(format!("/sys/fs/cgroup/cpuacct/{rel}/cpuacct.usage"))
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |ns| ns / 1000)
}

/// A directory made a shared mount point of its own (a bind onto itself, then
/// `--make-shared`), as a kubelet's volume dirs are on a systemd node; unmounted when
/// dropped.
pub struct SharedMountPoint(pub std::path::PathBuf);

impl SharedMountPoint {
    pub fn new(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        for args in [
            vec!["--bind", dir.to_str().unwrap(), dir.to_str().unwrap()],
            vec!["--make-shared", dir.to_str().unwrap()],
        ] {
            let st = std::process::Command::new("mount")
                .args(&args)
                .status()
                .unwrap();
            assert!(st.success(), "mount {args:?}");
        }
        Self(dir.to_owned())
    }
}

impl Drop for SharedMountPoint {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.0)
            .status();
    }
}

/// A tmpfs mounted at a path, unmounted when dropped.
pub struct Mounted(pub std::path::PathBuf);

impl Mounted {
    pub fn tmpfs(at: &std::path::Path) -> Self {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "late", at.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", at.display());
        Self(at.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
