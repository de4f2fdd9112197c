//! Pods through containerd's CRI plugin, as a kubelet drives them: RunPodSandbox with
//! the RuntimeClass handler, CreateContainer/StartContainer in the pod, ExecSync, the
//! pod's IP reached from the node, then StopPodSandbox/RemovePodSandbox. containerd runs
//! with `deploy/containerd-husk.toml` as users merge it, our pause image (no `Env`, user
//! 65535, like Kubernetes' own) and a CNI bridge + host-local + portmap network. Every
//! test runs under handler `runc` (the reference: a test that fails there is a test bug)
//! and handler `husk`.
//!
//! The CNI bridge is made by containerd's CRI plugin in the node's (the test host's)
//! root network namespace, as on a Kubernetes node: a private name (`hcri<N>`) and
//! /24 of 10.89.0.0/16 with no uplink or masquerade, deleted after the test.
//!
//! All are `#[ignore]`d for a plain `cargo test` (they need root, containerd and the CNI
//! plugins; husk's boot guests): `make test` runs them (in the test host where needed).
//! `HUSK_CRI_CYCLES` (default 2) pod cycles in the lifecycle test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use husk_cri::{api, container_config, pod_config, Cri};
use husk_tests::boot_timeout;
use husk_tests::containerd::{build_pause_archive, Containerd, HuskToml, BUSYBOX_IMAGE};
use husk_tests::guest::TempDir;

const RUNC: &str = "runc";
const HUSK: &str = "husk";

/// A node: containerd with the CRI plugin, its CNI network and images.
struct Node {
    containerd: Containerd,
    cri: Cri,
    bridge: String,
    /// The pod subnet's first three octets.
    prefix: String,
    logs: TempDir,
    _cni: TempDir,
}

impl Node {
    fn start() -> Node {
        husk_tests::cni::check_tools().unwrap();
        let n = std::process::id() % 250 + 1;
        let bridge = format!("hcri{n}");
        let prefix = format!("10.89.{n}");
        let cni = TempDir::new("cri-cni").unwrap();
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
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        let containerd = Containerd::start_cri(&HuskToml::default(), cni.path()).unwrap();
        containerd.import_busybox().unwrap();
        let pause = build_pause_archive(containerd.dir.path()).unwrap();
        let o = containerd
            .ctr(&["images", "import", pause.to_str().unwrap()])
            .unwrap();
        assert_eq!(o.code(), Some(0), "import pause: {}{}", o.stdout, o.stderr);
        let cri = Cri::connect(
            containerd.cri_socket(),
            boot_timeout() + Duration::from_secs(120),
        )
        .unwrap();
        let v = cri
            .version()
            .unwrap_or_else(|e| panic!("CRI Version: {e}\n{}", containerd.log()));
        eprintln!("CRI: {} {}", v.runtime_name, v.runtime_version);
        assert!(cri.image_present(BUSYBOX_IMAGE).unwrap());
        Node {
            containerd,
            cri,
            bridge,
            prefix,
            logs: TempDir::new("cri-logs").unwrap(),
            _cni: cni,
        }
    }

    /// What went wrong, for a failed assertion: containerd's log tail and the pods.
    fn explain(&self) -> String {
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

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An HTTP GET from the node to `ip:port`; the response's body.
fn http_get(ip: &str, port: u16, path: &str) -> std::io::Result<String> {
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

/// One pod, as a kubelet runs it: sandbox READY with an IP of the CNI range, a busybox
/// container serving HTTP on the pod IP, ExecSync (output, exit code, a timeout that
/// fires), the hostname and /etc/hosts the pod asked for; then stop and remove, with
/// nothing left behind. `HUSK_CRI_CYCLES` times.
fn pod_lifecycle(handler: &str) {
    let node = Node::start();
    let cycles: usize = std::env::var("HUSK_CRI_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for i in 0..cycles {
        let name = format!("web{i}");
        let log_dir = node.logs.path().join(&name);
        std::fs::create_dir_all(&log_dir).unwrap();
        let pod_cfg = pod_config(&name, &format!("uid-{i}"), &log_dir);
        let pod = node
            .cri
            .run_pod_sandbox(&pod_cfg, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", node.explain()));
        let status = node.cri.pod_sandbox_status(&pod).unwrap();
        assert_eq!(status.state, api::PodSandboxState::SandboxReady as i32);
        let ip = status
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        assert!(
            ip.starts_with(&format!("{}.", node.prefix)),
            "pod IP {ip:?} is not in {}.0/24",
            node.prefix
        );

        let app = container_config(
            "app",
            BUSYBOX_IMAGE,
            &["sh", "-c", "mkdir -p /www && echo hello-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"],
        );
        let id = node
            .cri
            .create_container(&pod, &app, &pod_cfg)
            .unwrap_or_else(|e| panic!("CreateContainer ({handler}): {e}\n{}", node.explain()));
        node.cri
            .start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer ({handler}): {e}\n{}", node.explain()));
        let s = node.cri.container_status(&id).unwrap();
        assert_eq!(s.state, api::ContainerState::ContainerRunning as i32);

        let r = node.cri.exec_sync(&id, &["hostname"], 0).unwrap();
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), name);
        let r = node
            .cri
            .exec_sync(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"], 0)
            .unwrap();
        assert_eq!(
            (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()),
            (3, &b"out\n"[..], &b"err\n"[..])
        );
        let hosts = node.cri.exec_sync(&id, &["cat", "/etc/hosts"], 0).unwrap();
        let hosts = String::from_utf8_lossy(&hosts.stdout).into_owned();
        assert!(hosts.contains("localhost"), "/etc/hosts:\n{hosts}");
        // ExecSync's own timeout fires, and the container keeps running.
        let e = node.cri.exec_sync(&id, &["sleep", "60"], 2).unwrap_err();
        assert!(
            e.to_string().contains("timeout") || e.to_string().contains("deadline"),
            "ExecSync past its timeout: {e}"
        );
        let s = node.cri.container_status(&id).unwrap();
        assert_eq!(s.state, api::ContainerState::ContainerRunning as i32);

        // The node reaches the pod by its IP.
        let mut body = String::new();
        wait_for(
            "HTTP from the node to the pod IP",
            Duration::from_secs(60),
            || match http_get(&ip, 8080, "/index.html") {
                Ok(b) => {
                    body = b;
                    true
                }
                Err(_) => false,
            },
        );
        assert_eq!(body.trim(), format!("hello-{name}"));

        node.cri.stop_container(&id, 10).unwrap();
        let s = node.cri.container_status(&id).unwrap();
        assert_eq!(s.state, api::ContainerState::ContainerExited as i32);
        assert_ne!(s.finished_at, 0);
        node.cri.remove_container(&id).unwrap();
        node.cri.stop_pod_sandbox(&pod).unwrap();
        node.cri.remove_pod_sandbox(&pod).unwrap();
        assert!(
            node.cri.list_pod_sandboxes().unwrap().is_empty(),
            "pods listed after RemovePodSandbox"
        );
        let left = node.containerd.wait_clean(Duration::from_secs(30));
        assert!(left.is_empty(), "cycle {i} ({handler}) left:\n{left}");
    }
}

/// A pause image whose config has no `Env` starts (runc needs PATH only for a bare
/// program name; so must husk), and a container's missing program is a clear error
/// naming it that reaches the CRI caller.
fn a_pod_from_scratch_images_and_a_clear_error(handler: &str) {
    let node = Node::start();
    let log_dir = node.logs.path().join("scratch");
    std::fs::create_dir_all(&log_dir).unwrap();
    let pod_cfg = pod_config("scratch", "uid-s", &log_dir);
    let pod = node
        .cri
        .run_pod_sandbox(&pod_cfg, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", node.explain()));
    let bad = container_config("bad", BUSYBOX_IMAGE, &["/bin/no-such-program"]);
    let err = node
        .cri
        .create_container(&pod, &bad, &pod_cfg)
        .and_then(|id| node.cri.start_container(&id).map(|()| id));
    let e = err.expect_err("a missing program must not start");
    assert!(
        e.to_string().contains("no-such-program"),
        "the error does not name the program: {e}"
    );
    node.cri.stop_pod_sandbox(&pod).unwrap();
    node.cri.remove_pod_sandbox(&pod).unwrap();
    let left = node.containerd.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "{handler} left:\n{left}");
}

husk_tests::under_runc_and_husk!(super::RUNC, super::HUSK;pod_lifecycle, a_pod_from_scratch_images_and_a_clear_error);
