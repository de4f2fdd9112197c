//! The security context of containers in a CRI pod, as a kubelet sets it, under handler
//! `runc` (the reference) and handler `husk`: the node is `husk_tests::cri_node`, as in
//! `cri.rs`. `#[ignore]`d for a plain `cargo test`; `make test` runs it (in the test host
//! where needed).

use husk_cri::{api, container_config};
use husk_tests::containerd::BUSYBOX_IMAGE;
use husk_tests::cri_node::{cap_eff, facts, kubelet_default_paths, seccomp, security, Node};

const RUNC: &str = "runc";
const HUSK: &str = "husk";

/// The security context inside the pod, each field as the CRI sets it: a non-root user
/// with its group and a supplemental group, a read-only rootfs, no_new_privs,
/// RuntimeDefault seccomp and the default masked and read-only paths; capabilities
/// dropped (ALL) and one added, under a Localhost seccomp profile that refuses mkdir;
/// privileged: every capability (of the guest, under husk) and a bridge it can create.
fn security_context(handler: &str) {
    use api::security_profile::ProfileType;
    let node = Node::start();
    let profile = node.logs.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let mut pod_cfg = node.pod_config("sec");
    // A privileged container needs a privileged pod (containerd refuses it otherwise).
    pod_cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .unwrap()
        .privileged = true;
    let pod = node.run_pod(&pod_cfg, handler);

    let mut user = container_config("user", BUSYBOX_IMAGE, &["sleep", "3600"]);
    {
        let sc = security(&mut user);
        sc.run_as_user = Some(api::Int64Value { value: 1234 });
        sc.run_as_group = Some(api::Int64Value { value: 2345 });
        sc.supplemental_groups = vec![3456];
        sc.readonly_rootfs = true;
        sc.no_new_privs = true;
        sc.seccomp = seccomp(ProfileType::RuntimeDefault, "");
        kubelet_default_paths(sc);
    }
    let mut caps = container_config("caps", BUSYBOX_IMAGE, &["sleep", "3600"]);
    {
        let sc = security(&mut caps);
        sc.capabilities = Some(api::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
        sc.seccomp = seccomp(ProfileType::Localhost, &profile.display().to_string());
        kubelet_default_paths(sc);
    }
    let mut privileged = container_config("priv", BUSYBOX_IMAGE, &["sleep", "3600"]);
    security(&mut privileged).privileged = true;

    let ids = node.start_containers(&pod, &pod_cfg, &[&user, &caps, &privileged], handler);
    let status = ("status", "cat /proc/self/status");

    let u = facts(
        &node,
        &ids[0],
        &[
            ("ids", "id -u; id -g; id -G"),
            ("tun", "test -c /dev/net/tun && echo tun-ok || echo no-tun"),
            status,
            ("rootfs_write", "touch /rootfs-write; echo rc=$?"),
            (
                "masked",
                "grep -E ' /proc/timer_list | /sys/firmware ' /proc/self/mountinfo | wc -l",
            ),
        ],
    );
    let ids_out = u.get("ids");
    let lines: Vec<&str> = ids_out.lines().collect();
    assert_eq!(lines.first().copied(), Some("1234"), "uid: {ids_out}");
    assert_eq!(lines.get(1).copied(), Some("2345"), "gid: {ids_out}");
    assert!(
        lines
            .get(2)
            .is_some_and(|g| g.split_whitespace().any(|g| g == "3456")),
        "supplemental group 3456 missing: {ids_out}"
    );
    assert_eq!(
        u.get("tun").trim(),
        "no-tun",
        "an unprivileged container has /dev/net/tun"
    );
    let st = u.get("status");
    assert!(st.contains("NoNewPrivs:\t1"), "no_new_privs:\n{st}");
    assert!(st.contains("Seccomp:\t2"), "RuntimeDefault seccomp:\n{st}");
    assert_eq!(
        cap_eff(st),
        0,
        "a non-root user has no effective capabilities"
    );
    let w = u.get("rootfs_write");
    assert!(
        w.contains("Read-only") && !w.contains("rc=0"),
        "read-only rootfs: {w}"
    );
    assert_eq!(
        u.get("masked").trim(),
        "2",
        "masked paths /proc/timer_list, /sys/firmware"
    );

    // Root without CAP_SYS_ADMIN: /proc/sys is a read-only path (a default one).
    let c = facts(
        &node,
        &ids[1],
        &[
            status,
            ("mkdir", "mkdir /tmp/x; echo rc=$?"),
            (
                "proc_sys_write",
                "echo 1 > /proc/sys/kernel/printk_ratelimit; echo rc=$?",
            ),
        ],
    );
    let w = c.get("proc_sys_write");
    assert!(
        w.contains("Read-only") && !w.contains("rc=0"),
        "/proc/sys write: {w}"
    );
    let st = c.get("status");
    assert_eq!(
        cap_eff(st),
        1 << 12,
        "drop ALL, add NET_ADMIN (bit 12):\n{st}"
    );
    assert!(st.contains("Seccomp:\t2"), "Localhost seccomp:\n{st}");
    let m = c.get("mkdir");
    assert!(
        m.contains("Operation not permitted") && !m.contains("rc=0"),
        "mkdir under the profile: {m}"
    );

    let p = facts(
        &node,
        &ids[2],
        &[
            status,
            ("last_cap", "cat /proc/sys/kernel/cap_last_cap"),
            ("tun", "test -c /dev/net/tun && echo tun-ok"),
            (
                "bridge",
                "brctl addbr hbr0 && ip link show hbr0 && brctl delbr hbr0 && echo bridge-ok",
            ),
        ],
    );
    let st = p.get("status");
    let last: u32 = p.get("last_cap").trim().parse().unwrap();
    assert_eq!(
        cap_eff(st),
        (1u64 << (last + 1)) - 1,
        "privileged: every capability:\n{st}"
    );
    assert!(
        st.contains("Seccomp:\t0"),
        "privileged runs unconfined:\n{st}"
    );
    assert_eq!(
        p.get("tun").trim(),
        "tun-ok",
        "privileged: the (guest's) /dev/net/tun"
    );
    assert!(
        p.get("bridge").contains("bridge-ok"),
        "privileged bridge: {}",
        p.get("bridge")
    );

    node.remove_pod(&pod, &ids, 2, handler);
}

husk_tests::under_runc_and_husk!(super::RUNC, super::HUSK;security_context);
