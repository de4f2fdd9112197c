//! Pods through containerd's CRI plugin, as a kubelet drives them: RunPodSandbox with
//! the RuntimeClass handler, CreateContainer/StartContainer in the pod, ExecSync, the
//! pod's IP reached from the node, then StopPodSandbox/RemovePodSandbox. containerd runs
//! with `deploy/containerd-husk.toml` as users merge it, our pause image (no `Env`, user
//! 65535, like Kubernetes' own) and a CNI bridge + host-local + portmap network. Every
//! test runs under handler `runc` (the reference: a test that fails there is a test bug)
//! and handler `husk`.
//!
//! The node (containerd, its CNI bridge, the images) is `husk_tests::cri_node`.
//!
//! All are `#[ignore]`d for a plain `cargo test` (they need root, containerd and the CNI
//! plugins; husk's boot guests): `make test` runs them (in the test host where needed).
//! `HUSK_CRI_CYCLES` (default 2; 1 in `make test`) pod cycles in the lifecycle test. The
//! security context has its own file, `cri_security.rs`.

use std::time::Duration;

use husk_cri::{api, container_config};
use husk_tests::containerd::BUSYBOX_IMAGE;
use husk_tests::cri_node::{
    self, facts, host_mount, http_get, pid_namespace, run_in, wait_for, Node,
};
use husk_tests::guest::TempDir;

/// A directory made a shared mount point of its own (a bind onto itself, then
/// `--make-shared`), as a kubelet's volume dirs are on a systemd node; unmounted when
/// dropped.
struct SharedMountPoint(std::path::PathBuf);

impl SharedMountPoint {
    fn new(dir: &std::path::Path) -> Self {
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
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn tmpfs(at: &std::path::Path) -> Self {
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

const RUNC: &str = "runc";
const HUSK: &str = "husk";

/// One pod, as a kubelet runs it: sandbox READY with an IP of the CNI range, a busybox
/// container serving HTTP on the pod IP, ExecSync (output, exit code, a timeout that
/// fires), streaming exec and attach (see `streams`), the hostname and /etc/hosts the pod asked for; then stop and remove, with
/// nothing left behind. `HUSK_CRI_CYCLES` times.
fn pod_lifecycle(handler: &str) {
    let node = Node::start();
    let cycles: usize = std::env::var("HUSK_CRI_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for i in 0..cycles {
        let name = format!("web{i}");
        let pod_cfg = node.pod_config(&name);
        let pod = node.run_pod(&pod_cfg, handler);
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
            // A second server on the pod's loopback only: port-forward reaches it, the
            // pod IP does not.
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo hello-$(hostname) > /www/index.html && \
                httpd -p 127.0.0.1:9090 -h /www && exec httpd -f -p 8080 -h /www",
            ],
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

        streams(&node, &pod, &pod_cfg, &id, handler);

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

        port_forward(&node, &pod, &ip, &name, handler);

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

/// `kubectl port-forward` (PortForward and the streaming server's WebSocket protocol):
/// the pod's port 8080 and its loopback-only port 9090 answer through it (9090 does not
/// answer on the pod IP); a port nothing listens on gives an error for that connection.
/// containerd dials 127.0.0.1:PORT in the pod's network namespace on the host; under
/// husk the shim takes those connections there and relays them into the guest.
fn port_forward(node: &Node, pod: &str, ip: &str, name: &str, handler: &str) {
    use husk_cri::stream::port_forward;
    let t = Duration::from_secs(120);
    let get = b"GET /index.html HTTP/1.0\r\n\r\n";
    for port in [8080u16, 9090] {
        let url = node.cri.port_forward(pod, port).unwrap();
        let f = port_forward(&url, port, get, t)
            .unwrap_or_else(|e| panic!("port-forward {port} ({handler}): {e}"));
        let page = String::from_utf8_lossy(&f.data);
        assert!(
            page.starts_with("HTTP/1.") && page.contains(&format!("hello-{name}")),
            "port-forward {port} ({handler}): data {page:?}, error {:?}",
            f.error
        );
        assert!(
            f.error.is_empty(),
            "port-forward {port} ({handler}): {}",
            f.error
        );
    }
    assert!(
        http_get(ip, 9090, "/index.html").is_err(),
        "the loopback-only server answered on the pod IP ({handler})"
    );
    let url = node.cri.port_forward(pod, 9).unwrap();
    let f =
        port_forward(&url, 9, get, t).unwrap_or_else(|e| panic!("port-forward 9 ({handler}): {e}"));
    assert!(
        f.data.is_empty() && !f.error.is_empty(),
        "port-forward to a closed port ({handler}): data {:?}, error {:?}",
        String::from_utf8_lossy(&f.data),
        f.error
    );
    eprintln!("port-forward to a closed port ({handler}): {}", f.error);
}

/// PodSandboxStats of a pod whose containers all run (containerd 1.6.20's fails, under
/// runc as under husk, once one of the pod's containers has exited: it asks every
/// container's task for its pids, and an exited one has none): CPU time and a working
/// set (the pod cgroup's: under husk the VM's), the pod's `eth0` counters (the CNI veth,
/// which carries the guest's frames under husk; the node has fetched pages from the
/// pod), its process count and each container's stats.
fn pod_sandbox_stats(node: &Node, pod: &str, containers: &[&str], handler: &str) {
    let s = node
        .cri
        .pod_sandbox_stats(pod)
        .unwrap_or_else(|e| panic!("PodSandboxStats ({handler}): {e}"))
        .linux
        .unwrap_or_default();
    let value = |v: Option<api::UInt64Value>| v.map_or(0, |v| v.value);
    assert!(
        value(s.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds)) > 0,
        "pod CPU time ({handler}): {s:?}"
    );
    assert!(
        value(s.memory.as_ref().and_then(|m| m.working_set_bytes)) > 0,
        "pod working set ({handler}): {s:?}"
    );
    let eth0 = s
        .network
        .as_ref()
        .and_then(|n| n.default_interface.clone())
        .unwrap_or_default();
    assert_eq!(eth0.name, "eth0", "pod network stats ({handler}): {s:?}");
    assert!(
        value(eth0.rx_bytes) > 0 && value(eth0.tx_bytes) > 0,
        "pod eth0 counters ({handler}): {eth0:?}"
    );
    assert!(
        value(s.process.as_ref().and_then(|p| p.process_count)) >= containers.len() as u64,
        "pod process count ({handler}): {s:?}"
    );
    let mut listed: Vec<&str> = s
        .containers
        .iter()
        .filter_map(|c| c.attributes.as_ref().map(|a| a.id.as_str()))
        .collect();
    listed.sort_unstable();
    let mut want = containers.to_vec();
    want.sort_unstable();
    assert_eq!(listed, want, "PodSandboxStats' containers ({handler})");
}

/// Streaming exec and attach, as `kubectl exec -it` and `kubectl attach -it` use them
/// (the CRI streaming server's WebSocket protocol): an exec with a TTY, stdin and a
/// resize; one without a TTY, stdin in and stdout and stderr apart; an attach to a
/// container started with stdin and a TTY, whose exit code is then its status.
fn streams(node: &Node, pod: &str, pod_cfg: &api::PodSandboxConfig, app: &str, handler: &str) {
    use husk_cri::stream::session;
    let t = Duration::from_secs(120);
    let url = node.cri.exec(app, &["sh"], true, true).unwrap();
    let script = b"for i in 1 2 3 4 5 6 7 8 9 10; do [ \"$(stty size)\" = '30 100' ] && break; \
                   sleep 1; done; echo size=$(stty size); echo exec-$((6*7)); exit 5\n";
    let s = session(&url, Some((100, 30)), script, t)
        .unwrap_or_else(|e| panic!("exec -it ({handler}): {e}"));
    let out = String::from_utf8_lossy(&s.stdout);
    // (The TTY echoes what was typed: the checks look for what only the output has.)
    assert!(
        out.contains("size=30 100"),
        "the resize did not reach the TTY:\n{out}"
    );
    assert!(out.contains("exec-42"), "exec -it output:\n{out}");
    assert!(
        s.status.contains("NonZeroExitCode") && s.status.contains("\"5\""),
        "exec -it status: {}",
        s.status
    );

    let url = node
        .cri
        .exec(
            app,
            &["sh", "-c", "read x; echo got-$x; echo to-err >&2"],
            false,
            true,
        )
        .unwrap();
    let s = session(&url, None, b"hello\n", t).unwrap_or_else(|e| panic!("exec -i: {e}"));
    assert_eq!(String::from_utf8_lossy(&s.stdout), "got-hello\n");
    assert_eq!(String::from_utf8_lossy(&s.stderr), "to-err\n");
    assert!(s.status.contains("Success"), "exec -i status: {}", s.status);

    let mut console = container_config("console", BUSYBOX_IMAGE, &["sh"]);
    console.stdin = true;
    console.tty = true;
    let id = node.cri.create_container(pod, &console, pod_cfg).unwrap();
    node.cri.start_container(&id).unwrap();
    let url = node.cri.attach(&id, true, true).unwrap();
    let s = session(&url, None, b"echo attached-$((2+3))\nexit 3\n", t)
        .unwrap_or_else(|e| panic!("attach ({handler}): {e}"));
    let out = String::from_utf8_lossy(&s.stdout);
    assert!(out.contains("attached-5"), "attach output:\n{out}");
    wait_for(
        "the attached shell to exit",
        Duration::from_secs(60),
        || {
            node.cri.container_status(&id).unwrap().state
                == api::ContainerState::ContainerExited as i32
        },
    );
    assert_eq!(node.cri.container_status(&id).unwrap().exit_code, 3);
    node.cri.remove_container(&id).unwrap();
}

/// A pause image whose config has no `Env` starts (runc needs PATH only for a bare
/// program name; so must husk), and a container's missing program is a clear error
/// naming it that reaches the CRI caller.
fn a_pod_from_scratch_images_and_a_clear_error(handler: &str) {
    let node = Node::start();
    let pod_cfg = node.pod_config("scratch");
    let pod = node.run_pod(&pod_cfg, handler);
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

    // Bidirectional mount propagation (a kubelet allows it for privileged containers;
    // containerd wants the host path on a shared mount): runc runs it; a husk pod's
    // mounts cannot reach the host, so husk refuses it naming the mount.
    let vols = TempDir::new("cri-bidi").unwrap();
    let shared = SharedMountPoint::new(&vols.path().join("bidi"));
    let mut bidi = container_config("bidi", BUSYBOX_IMAGE, &["sleep", "3600"]);
    let mut m = host_mount("/bidi", &shared.0, false);
    m.propagation = api::MountPropagation::PropagationBidirectional as i32;
    bidi.mounts = vec![m];
    // containerd makes the task (the runtime's part) at StartContainer.
    let id = node.cri.create_container(&pod, &bidi, &pod_cfg).unwrap();
    match (node.cri.start_container(&id), handler) {
        (Ok(()), RUNC) => node.cri.stop_container(&id, 0).unwrap(),
        (Err(e), RUNC) => panic!("runc: a bidirectional mount: {e}"),
        (Ok(()), _) => panic!("husk started a container with a bidirectional mount"),
        (Err(e), _) => {
            let msg = e.to_string();
            assert!(
                msg.contains("bidirectional") && msg.contains("/bidi"),
                "husk's refusal of bidirectional propagation is not clear: {msg}"
            );
        }
    }
    node.cri.remove_container(&id).unwrap();
    node.cri.stop_pod_sandbox(&pod).unwrap();
    node.cri.remove_pod_sandbox(&pod).unwrap();
    drop(shared);

    // A pod that asks for the node's own network, PID or IPC namespace: runc shares it;
    // a husk pod is a VM and cannot, so it must say so (never a silent pod of its own).
    for (what, set) in [
        (
            "network",
            (|ns: &mut api::NamespaceOption| ns.network = api::NamespaceMode::Node as i32)
                as fn(&mut api::NamespaceOption),
        ),
        ("pid", |ns| ns.pid = api::NamespaceMode::Node as i32),
        ("ipc", |ns| ns.ipc = api::NamespaceMode::Node as i32),
    ] {
        let mut cfg = node.pod_config(&format!("host-{what}"));
        if what == "network" {
            // A kubelet sets no hostname for a hostNetwork pod: it has the node's (runc
            // refuses a hostname without a UTS namespace of the pod's own).
            cfg.hostname.clear();
        }
        set(cfg
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
            .unwrap());
        match (node.cri.run_pod_sandbox(&cfg, handler), handler) {
            (Ok(pod), RUNC) => {
                node.cri.stop_pod_sandbox(&pod).unwrap();
                node.cri.remove_pod_sandbox(&pod).unwrap();
            }
            (Err(e), RUNC) => panic!("runc: a pod in the node's {what} namespace: {e}"),
            (Ok(_), _) => panic!("husk ran a pod in the node's {what} namespace"),
            (Err(e), _) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("host's") && msg.contains(what),
                    "husk's refusal of the node's {what} namespace is not clear: {msg}"
                );
            }
        }
    }
    let left = node.containerd.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "{handler} left:\n{left}");
}

/// A pod of three containers, as a Deployment with sidecars runs: `web` and `logger`
/// share the pod's PID namespace (`shareProcessNamespace`), `solo` has its own; all share the pod's
/// IPC, UTS and network namespaces, its DNS config and sysctls, and an emptyDir. `web`
/// has hostPath volumes: read-write, read-only, and one whose host path is a symlink.
/// HTTP from one container to the other over localhost, and from the node to the pod IP
/// and to a hostPort on 127.0.0.1; container logs (10,000 lines, a rotation with
/// ReopenContainerLog).
fn a_pod_of_three_containers(handler: &str) {
    let node = Node::start();
    let vols = TempDir::new("cri-vols").unwrap();
    let dir = |n: &str| {
        let d = vols.path().join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let (rw, ro, target, empty) = (dir("rw"), dir("ro"), dir("target"), dir("empty"));
    std::fs::write(rw.join("from-host"), "host-rw\n").unwrap();
    std::fs::write(ro.join("ro-file"), "host-ro\n").unwrap();
    std::fs::write(target.join("through-link"), "via-symlink\n").unwrap();
    let link = vols.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    // A host path on a shared mount (as the kubelet's dir is on a systemd node) for
    // HostToContainer propagation: what the node mounts there later shows up inside.
    let prop = SharedMountPoint::new(&vols.path().join("prop"));

    let mut pod_cfg = node.pod_config("duo");
    // A kubelet's pod cgroup (containerd's PodSandboxStats reads it).
    pod_cfg
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = format!("/kubepods/besteffort/pod-duo-{}", std::process::id());
    let log_dir = std::path::PathBuf::from(&pod_cfg.log_directory);
    // hostPort on the node's loopback (CNI portmap), a port of this run's own.
    let host_port = 18000 + (std::process::id() % 1000) as i32;
    pod_cfg.port_mappings = vec![api::PortMapping {
        protocol: api::Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: "127.0.0.1".into(),
    }];
    pod_cfg.dns_config = Some(api::DnsConfig {
        servers: vec!["10.89.0.53".into()],
        searches: vec!["husk.test".into()],
        options: vec!["ndots:3".into()],
    });
    {
        let linux = pod_cfg.linux.as_mut().unwrap();
        linux.sysctls = [
            ("net.ipv4.ip_local_port_range", "33000 34000"),
            ("kernel.shm_rmid_forced", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let ns = linux
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options
            .as_mut()
            .unwrap();
        ns.pid = api::NamespaceMode::Pod as i32;
    }
    let pod = node.run_pod(&pod_cfg, handler);

    let mut web = container_config(
        "web",
        BUSYBOX_IMAGE,
        &["sh", "-c", "echo web-started; echo from-web > /shared/note; mkdir -p /www && echo web-page > /www/index.html && exec httpd -f -p 8080 -h /www"],
    );
    pid_namespace(&mut web, api::NamespaceMode::Pod);
    web.mounts = vec![
        host_mount("/data/rw", &rw, false),
        host_mount("/data/ro", &ro, true),
        host_mount("/data/link", &link, false),
        host_mount("/shared", &empty, false),
        {
            let mut m = host_mount("/data/prop", &prop.0, false);
            m.propagation = api::MountPropagation::PropagationHostToContainer as i32;
            m
        },
    ];
    let mut solo = container_config("solo", BUSYBOX_IMAGE, &["sleep", "7200"]);
    pid_namespace(&mut solo, api::NamespaceMode::Container);
    solo.mounts = vec![host_mount("/shared", &empty, false)];
    let mut logger = container_config(
        "logger",
        BUSYBOX_IMAGE,
        &["sh", "-c", "seq 1 10000; while [ ! -e /tmp/rotated ]; do sleep 0.2; done; echo after-reopen; exec sleep 3600"],
    );
    pid_namespace(&mut logger, api::NamespaceMode::Pod);
    let ids = node.start_containers(&pod, &pod_cfg, &[&web, &solo, &logger], handler);
    let (web_id, solo_id, logger_id) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    wait_for("web's start-up", Duration::from_secs(60), || {
        empty.join("note").exists()
    });

    // What each container sees, one ExecSync each (every ExecSync is a process built in
    // the pod; batching keeps the test short under emulation).
    let common: &[(&str, &str)] = &[
        ("init", "tr '\\0' ' ' < /proc/1/cmdline"),
        ("ps", "ps -o args"),
        ("ipc", "readlink /proc/self/ns/ipc"),
        ("uts", "readlink /proc/self/ns/uts"),
        ("hostname", "hostname"),
        ("resolv", "cat /etc/resolv.conf"),
        ("port_range", "cat /proc/sys/net/ipv4/ip_local_port_range"),
        ("shm_rmid_forced", "cat /proc/sys/kernel/shm_rmid_forced"),
        // The pod's /dev/shm: its size in KiB and its file system type.
        (
            "shm",
            "df -k /dev/shm | tail -n 1 | awk '{print $2}'; \
             awk '$2 == \"/dev/shm\" {print $3}' /proc/mounts",
        ),
    ];
    let web_only: &[(&str, &str)] = &[
        ("rw_read", "cat /data/rw/from-host"),
        (
            "rw_write",
            "echo from-pod > /data/rw/from-pod && echo written",
        ),
        ("ro_read", "cat /data/ro/ro-file"),
        ("ro_write", "touch /data/ro/new; echo rc=$?"),
        ("link", "cat /data/link/through-link"),
        (
            "shm_write",
            "echo from-web-shm > /dev/shm/note && echo written",
        ),
    ];
    let solo_only: &[(&str, &str)] = &[
        ("http", "wget -q -O - http://127.0.0.1:8080/index.html"),
        (
            "empty_dir",
            "cat /shared/note && echo from-solo > /shared/reply",
        ),
        ("shm_read", "cat /dev/shm/note"),
    ];
    let web = facts(&node, web_id, &[common, web_only].concat());
    let solo = facts(&node, solo_id, &[common, solo_only].concat());

    // PID namespaces: the shared one has the pause process as its PID 1, and `logger`
    // is in it too (POD, also the CRI's default): `web` sees its shell. The private one
    // has the container's own command as PID 1 and sees nothing of the others, and
    // they do not see its `sleep 7200`.
    assert_eq!(
        web.get("init").trim(),
        "/pause",
        "PID 1 of the pod-shared namespace"
    );
    assert_eq!(
        solo.get("init").trim(),
        "sleep 7200",
        "PID 1 of a private namespace"
    );
    let (web_ps, solo_ps) = (web.get("ps"), solo.get("ps"));
    for (who, seen, sees, what) in [
        ("web", &web_ps, true, "httpd"),
        ("web", &web_ps, true, "sh -c seq 1 10000"),
        ("web", &web_ps, false, "sleep 7200"),
        ("solo", &solo_ps, false, "httpd"),
        ("solo", &solo_ps, false, "/pause"),
        ("solo", &solo_ps, false, "sh -c seq 1 10000"),
    ] {
        assert_eq!(
            seen.contains(what),
            sees,
            "{who} should {}see {what:?} in ps:\n{seen}",
            if sees { "" } else { "not " }
        );
    }

    // IPC and UTS are the pod's: the same namespaces, the pod's hostname; the pod's DNS
    // config and sysctls.
    for k in ["ipc", "uts"] {
        assert_eq!(
            web.get(k),
            solo.get(k),
            "the {k} namespace differs between containers"
        );
    }
    for m in [&web, &solo] {
        assert_eq!(m.get("hostname").trim(), "duo");
        let resolv = m.get("resolv");
        for want in [
            "nameserver 10.89.0.53",
            "search husk.test",
            "options ndots:3",
        ] {
            assert!(
                resolv.contains(want),
                "/etc/resolv.conf lacks {want:?}:\n{resolv}"
            );
        }
        assert_eq!(
            m.get("port_range").split_whitespace().collect::<Vec<_>>(),
            ["33000", "34000"],
            "net.ipv4.ip_local_port_range"
        );
        assert_eq!(
            m.get("shm_rmid_forced").trim(),
            "1",
            "kernel.shm_rmid_forced"
        );
        // containerd's default pod /dev/shm: a 64 MiB tmpfs (under husk the guest's,
        // not the host's reached through virtio-fs).
        assert_eq!(
            m.get("shm").split_whitespace().collect::<Vec<_>>(),
            ["65536", "tmpfs"],
            "/dev/shm size (KiB) and type ({handler})"
        );
    }
    // The pod's containers share it (IPC is the pod's).
    assert_eq!(web.get("shm_write").trim(), "written");
    assert_eq!(solo.get("shm_read").trim(), "from-web-shm");

    // HostToContainer: a tmpfs the node mounts under the volume after the container
    // started, and a file in it, appear in the container.
    let late = prop.0.join("late");
    std::fs::create_dir_all(&late).unwrap();
    let late_mount = Mounted::tmpfs(&late);
    std::fs::write(late.join("file"), "mounted-later\n").unwrap();
    wait_for(
        "the node's later mount to reach the container",
        Duration::from_secs(60),
        || {
            node.cri
                .exec_sync(web_id, &["cat", "/data/prop/late/file"], 0)
                .is_ok_and(|r| r.stdout == b"mounted-later\n")
        },
    );
    drop(late_mount);

    // HTTP between the containers over the pod's loopback.
    assert_eq!(solo.get("http").trim(), "web-page");

    // From the node: the pod IP, and the hostPort on 127.0.0.1 (portmap's DNAT).
    let ip = node
        .cri
        .pod_sandbox_status(&pod)
        .unwrap()
        .network
        .map(|n| n.ip)
        .unwrap_or_default();
    for (addr, port) in [(ip.as_str(), 8080), ("127.0.0.1", host_port as u16)] {
        let mut body = String::new();
        wait_for(
            &format!("HTTP from the node to {addr}:{port}"),
            Duration::from_secs(60),
            || match http_get(addr, port, "/index.html") {
                Ok(b) => {
                    body = b;
                    true
                }
                Err(_) => false,
            },
        );
        assert_eq!(body.trim(), "web-page", "from {addr}:{port}");
    }

    pod_sandbox_stats(&node, &pod, &[web_id, solo_id, logger_id], handler);

    // Volumes: hostPath read-write both ways, read-only refused (and nothing reaches the
    // host), a symlinked host path followed on the host, an emptyDir both containers use.
    assert_eq!(web.get("rw_read").trim(), "host-rw");
    assert_eq!(web.get("rw_write").trim(), "written");
    assert_eq!(
        std::fs::read_to_string(rw.join("from-pod")).unwrap().trim(),
        "from-pod"
    );
    assert_eq!(web.get("ro_read").trim(), "host-ro");
    let ro_write = web.get("ro_write");
    assert!(
        ro_write.contains("Read-only") && !ro_write.contains("rc=0"),
        "touch on a read-only volume: {ro_write}"
    );
    assert!(
        !ro.join("new").exists(),
        "the read-only volume was written on the host"
    );
    assert_eq!(web.get("link").trim(), "via-symlink");
    assert_eq!(solo.get("empty_dir").trim(), "from-web");
    assert_eq!(
        std::fs::read_to_string(empty.join("reply")).unwrap().trim(),
        "from-solo"
    );

    // The container's stdout in its CRI log file (CRI format: time stream tag line).
    let log = std::fs::read_to_string(log_dir.join("web.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.ends_with(" stdout F web-started")),
        "web.log:\n{log}"
    );

    // 10,000 lines of stdout, every one in the CRI log in order; after a rotation
    // (the file moved away, ReopenContainerLog) new output goes to a new file.
    let log_path = log_dir.join("logger.log");
    let stdout_lines = |path: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(" stdout F ").map(|(_, m)| m.to_owned()))
            .collect()
    };
    wait_for(
        "10,000 lines in logger.log",
        Duration::from_secs(120),
        || stdout_lines(&log_path).len() >= 10_000,
    );
    let want: Vec<String> = (1..=10_000).map(|n| n.to_string()).collect();
    assert_eq!(
        stdout_lines(&log_path),
        want,
        "logger.log is not 1..=10000 in order"
    );
    let rotated = log_dir.join("logger.log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    node.cri
        .reopen_container_log(logger_id)
        .unwrap_or_else(|e| panic!("ReopenContainerLog ({handler}): {e}"));
    run_in(&node, logger_id, &["touch", "/tmp/rotated"]);
    wait_for(
        "output after ReopenContainerLog",
        Duration::from_secs(60),
        || stdout_lines(&log_path) == ["after-reopen"],
    );
    assert_eq!(stdout_lines(&rotated), want, "the rotated log changed");

    node.remove_pod(&pod, &ids, 5, handler);
}

/// Resources and status: ContainerStats has real CPU and memory figures for a busy
/// container; UpdateContainerResources reaches the container's cgroup (seen from inside);
/// a container past its memory limit ends `OOMKilled` with exit code 137; an exit code
/// and `finishedAt` are exact; the kubelet's pod cgroup accounts the pod's CPU time.
fn resources_and_status(handler: &str) {
    let node = Node::start();
    let mut pod_cfg = node.pod_config("res");
    // The kubelet's pod cgroup (cgroupfs driver), which accounts what the pod uses: under
    // runc its containers' cgroups, under husk the VM's (husk-vmm and virtiofsd).
    let parent = format!("/kubepods/burstable/pod-{}", std::process::id());
    pod_cfg
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = parent.clone();
    let pod = node.run_pod(&pod_cfg, handler);
    let busy = container_config("busy", BUSYBOX_IMAGE, &["sh", "-c", "while :; do :; done"]);
    let mut hog = container_config("hog", BUSYBOX_IMAGE, &["tail", "/dev/zero"]);
    hog.linux.get_or_insert_with(Default::default).resources = Some(api::LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    // The kubelet's termination-message file: a host file bound at
    // /dev/termination-log, read after the container ends.
    let term_dir = TempDir::new("cri-term").unwrap();
    let term_log = term_dir.path().join("termination-log");
    std::fs::write(&term_log, "").unwrap();
    let mut exit7 = container_config(
        "exit7",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "echo first-run; sleep 2; echo ended-with-7 > /dev/termination-log; exit 7",
        ],
    );
    exit7.mounts = vec![host_mount("/dev/termination-log", &term_log, false)];
    // As a kubelet names a restartable container's logs: <name>/<attempt>.log.
    let log_dir = std::path::PathBuf::from(&pod_cfg.log_directory);
    std::fs::create_dir_all(log_dir.join("exit7")).unwrap();
    exit7.log_path = "exit7/0.log".into();
    let ids = node.start_containers(&pod, &pod_cfg, &[&busy, &hog, &exit7], handler);
    let (busy_id, hog_id, exit7_id) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());

    // Stats under load: CPU time grows, memory is in use.
    let cpu = |id: &str| {
        let s = node.cri.container_stats(id).unwrap();
        let cpu = s
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value);
        let mem = s
            .memory
            .and_then(|m| m.working_set_bytes)
            .map_or(0, |v| v.value);
        (cpu, mem)
    };
    let (cpu0, mem0) = cpu(busy_id);
    let mut last = (cpu0, mem0);
    wait_for("busy's CPU time to grow", Duration::from_secs(60), || {
        last = cpu(busy_id);
        last.0 > cpu0 + 100_000_000
    });
    assert!(last.1 > 0, "busy's working set is 0: {last:?}");
    // The pod cgroup's CPU time grows with busy's loop.
    let pod_cpu0 = cri_node::cgroup_cpu_usec(&parent);
    wait_for(
        "the pod cgroup's CPU time to grow",
        Duration::from_secs(60),
        || cri_node::cgroup_cpu_usec(&parent) > pod_cpu0 + 200_000,
    );

    // UpdateContainerResources: memory and CPU limits, seen in the container's cgroup.
    node.cri
        .update_container_resources(
            busy_id,
            api::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("UpdateContainerResources ({handler}): {e}"));
    let max = run_in(
        &node,
        busy_id,
        &["cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"],
    );
    assert_eq!(
        max.lines().collect::<Vec<_>>(),
        [(96u64 << 20).to_string().as_str(), "50000 100000"],
        "the container's cgroup after UpdateContainerResources"
    );

    // OOM: killed by the kernel in its cgroup, and said so.
    let status = |id: &str| node.cri.container_status(id).unwrap();
    wait_for("hog to be OOM-killed", Duration::from_secs(120), || {
        status(hog_id).state == api::ContainerState::ContainerExited as i32
    });
    let s = status(hog_id);
    assert_eq!(
        (s.reason.as_str(), s.exit_code),
        ("OOMKilled", 137),
        "hog: {s:?}"
    );

    // An exit code, and its time.
    wait_for("exit7 to exit", Duration::from_secs(60), || {
        status(exit7_id).state == api::ContainerState::ContainerExited as i32
    });
    let s = status(exit7_id);
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (7, "Error"),
        "exit7: {s:?}"
    );
    assert!(
        s.finished_at >= s.started_at + 1_000_000_000,
        "exit7 ran `sleep 2` but finished {} ns after it started",
        s.finished_at - s.started_at
    );
    assert_eq!(
        std::fs::read_to_string(&term_log).unwrap(),
        "ended-with-7\n",
        "the termination message ({handler})"
    );

    // A restart, as a kubelet does it: a new container, attempt 1, logging to its own
    // file; the first attempt's log stays as it was.
    let mut again = container_config("exit7", BUSYBOX_IMAGE, &["echo", "second-run"]);
    again.metadata.as_mut().unwrap().attempt = 1;
    again.log_path = "exit7/1.log".into();
    let again_id = node.cri.create_container(&pod, &again, &pod_cfg).unwrap();
    node.cri.start_container(&again_id).unwrap();
    wait_for("attempt 1 to exit", Duration::from_secs(60), || {
        status(&again_id).state == api::ContainerState::ContainerExited as i32
    });
    let log = |attempt: u32| {
        std::fs::read_to_string(log_dir.join(format!("exit7/{attempt}.log"))).unwrap_or_default()
    };
    let (first, second) = (log(0), log(1));
    assert!(
        first.contains(" stdout F first-run") && !first.contains("second-run"),
        "attempt 0's log ({handler}):\n{first}"
    );
    assert!(
        second.contains(" stdout F second-run") && !second.contains("first-run"),
        "attempt 1's log ({handler}):\n{second}"
    );
    node.cri.remove_container(&again_id).unwrap();

    node.remove_pod(&pod, &ids, 2, handler);
}

husk_tests::under_runc_and_husk!(super::RUNC, super::HUSK;pod_lifecycle, a_pod_of_three_containers, resources_and_status, a_pod_from_scratch_images_and_a_clear_error);
