//! A pod of three containers through containerd's CRI plugin, as a Deployment with
//! sidecars runs, under handler `runc` (the reference) and handler `husk`: shared and
//! private PID namespaces, hostPath (read-write, read-only, symlinked), emptyDir, mount
//! propagation, HTTP inside the pod and from the node, hostPort, logs with a rotation,
//! PodSandboxStats. The node is `husk_tests::cri_node`, as in `cri.rs`. `#[ignore]`d for
//! a plain `cargo test`; `make test` runs it (in the test host where needed).

use std::time::Duration;

use husk_cri::{api, container_config};
use husk_tests::containerd::BUSYBOX_IMAGE;
use husk_tests::cri_node::{
    facts, host_mount, http_get, pid_namespace, run_in, wait_for, Mounted, Node, SharedMountPoint,
};
use husk_tests::guest::TempDir;

const RUNC: &str = "runc";
const HUSK: &str = "husk";

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

husk_tests::under_runc_and_husk!(super::RUNC, super::HUSK;a_pod_of_three_containers);
