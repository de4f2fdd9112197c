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
//! security context has its own file, `cri_security.rs`; the pod of three containers
//! (volumes, namespaces, logs, stats), `cri_pod.rs`.

use std::time::Duration;

use husk_cri::{api, container_config};
use husk_tests::containerd::BUSYBOX_IMAGE;
use husk_tests::cri_node::{self, host_mount, http_get, run_in, wait_for, Node, SharedMountPoint};
use husk_tests::guest::TempDir;

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

husk_tests::under_runc_and_husk!(super::RUNC, super::HUSK;pod_lifecycle, resources_and_status, a_pod_from_scratch_images_and_a_clear_error);
