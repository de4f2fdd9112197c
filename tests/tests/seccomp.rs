//! Confinement of a pod's processes, seen from the host: every husk-vmm thread runs under
//! its seccomp filter (and a call outside it kills the VMM by SIGSYS), husk-vmm runs in its
//! jail (an unprivileged uid of the pod's, no capabilities, its own namespaces, a root
//! holding only what the VM needs, the pod's cgroup), and virtiofsd runs in its own mount
//! namespace under its own filter, yet still sees the rootfs mounts the shim makes after it
//! started. Like the boot tests these need a KVM that can boot a
//! standard guest: `#[ignore]`d for a plain `cargo test`, run by `make test`.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use husk_tests::containerd::{Containerd, HuskToml, BUSYBOX_IMAGE, RUNTIME};
use husk_tests::guest::{Guest, GuestOptions};
use husk_tests::report::ctr::guest_ram_field;
use husk_tests::{
    boot_timeout, guest_initramfs, guest_kernel, kvm_available, run_with_watchdog, vmm_bin,
};

/// `Seccomp:` of each thread of `pid`, by thread name (`comm`).
fn seccomp_by_thread(pid: u32) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        out.insert(comm.trim().to_owned(), status_field(&status, "Seccomp"));
    }
    out
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn every_vmm_thread_runs_filtered_through_a_state_dump_and_a_clean_poweroff() {
    if !kvm_available("every_vmm_thread_runs_filtered") {
        return;
    }
    let g = Guest::start(GuestOptions {
        vcpus: 2,
        ..Default::default()
    })
    .unwrap();
    let pid = g.pid().unwrap();
    let threads = seccomp_by_thread(pid);
    let names: Vec<&str> = threads.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["husk-vmm", "vcpu0", "vcpu1", "vmm-events"],
        "{threads:?}"
    );
    for (name, mode) in &threads {
        assert_eq!(
            mode,
            "2",
            "thread {name} is not in seccomp filter mode\n{}",
            g.explain()
        );
    }
    // The state dump (SIGUSR1: a signal handler, vCPU kicks, every device logging) runs
    // under the filters too.
    // SAFETY: kill(2) with plain integers, to our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    wait_for("the vCPU state dump", Duration::from_secs(60), || {
        let e = g.stderr_text();
        e.contains("vcpu0 state: mp_state") && e.contains("vcpu1 state: mp_state")
    });
    g.command("SYNC").unwrap();
    assert_eq!(g.power_off().unwrap(), 0, "a filtered VMM exits cleanly");
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn no_seccomp_runs_unfiltered_and_says_so_loudly() {
    if !kvm_available("no_seccomp_runs_unfiltered_and_says_so_loudly") {
        return;
    }
    let g = Guest::start(GuestOptions {
        args: vec!["--no-seccomp".into()],
        ..Default::default()
    })
    .unwrap();
    let threads = seccomp_by_thread(g.pid().unwrap());
    assert!(threads.values().all(|m| m == "0"), "{threads:?}");
    let err = g.stderr_text();
    assert!(
        err.contains("WARN") && err.contains("WITHOUT its seccomp filters"),
        "{err}"
    );
    assert_eq!(g.power_off().unwrap(), 0);
}

fn selftest_boot(extra: &[&str]) -> husk_tests::Outcome {
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--kernel")
        .arg(guest_kernel())
        .arg("--initramfs")
        .arg(guest_initramfs())
        .args([
            "--cmdline",
            "quiet husk.test=poweroff",
            "--seccomp-selftest",
        ])
        .args(extra);
    run_with_watchdog(&mut cmd, boot_timeout()).unwrap()
}

/// The hook (`--seccomp-selftest`) makes one harmless call no list allows, after the
/// filters are on: it adds nothing a guest could reach, and only ends the VMM.
#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn a_forbidden_call_kills_the_vmm_by_sigsys() {
    if !kvm_available("a_forbidden_call_kills_the_vmm_by_sigsys") {
        return;
    }
    let o = selftest_boot(&[]);
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGSYS),
        "{:?}\n{}\n{}",
        o.status,
        o.stdout,
        o.stderr
    );
    assert!(
        !o.stdout.contains("husk-agent: ready"),
        "killed before the guest ran"
    );
    // The kernel's audit line names the call (printed, not asserted: audit lines are
    // rate-limited and need CONFIG_AUDIT).
    if let Ok(d) = Command::new("dmesg").output() {
        let text = String::from_utf8_lossy(&d.stdout);
        if let Some(l) = text.lines().rev().find(|l| l.contains("type=1326")) {
            eprintln!("kernel: {l}");
        }
    }
    // The same call without filters is harmless: the guest boots and powers off.
    let o = selftest_boot(&["--no-seccomp"]);
    assert_eq!(
        o.code(),
        Some(0),
        "{:?}\n{}\n{}",
        o.status,
        o.stdout,
        o.stderr
    );
    assert!(o.stderr.contains("no filter stopped it"), "{}", o.stderr);
}

fn mnt_ns(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn a_pods_vmm_and_virtiofsd_run_confined() {
    if !kvm_available("a_pods_vmm_and_virtiofsd_run_confined") {
        return;
    }
    let c = Containerd::start(&HuskToml::default()).unwrap();
    c.import_busybox().unwrap();
    let id = "confined";
    let o = c
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            BUSYBOX_IMAGE,
            id,
            "sleep",
            "600",
        ])
        .unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}\n{}", c.log());
    wait_for("RUNNING", Duration::from_secs(120), || {
        c.task_status(id).as_deref() == Some("RUNNING")
    });
    // The container's rootfs, mounted after virtiofsd started, reached it: the container
    // runs its busybox from there, and exec sees the same files.
    let o = c.ctr(&["task", "exec", "--exec-id", "e1", id, "cat", "/etc/passwd"]);
    let o = o.unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}\n{}", c.pod_logs(id));

    let vmm = c.pod_pid(id, "vmm").expect("vmm pid");
    let threads = seccomp_by_thread(vmm as u32);
    assert!(threads.len() >= 3, "{threads:?}");
    assert!(
        threads.values().all(|m| m == "2"),
        "husk-vmm threads: {threads:?}"
    );

    // The jail: the pod's own uid/gid from the configured range, nothing privileged.
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    let uid: u32 = status_field(&status, "Uid")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert!(
        (1_500_000_000..1_500_065_536).contains(&uid),
        "husk-vmm uid {uid}:\n{status}"
    );
    assert_eq!(
        status_field(&status, "Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}")
    );
    assert_eq!(
        status_field(&status, "Gid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}")
    );
    for cap in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    // Its own namespaces, PID 1 of its PID namespace.
    for kind in ["mnt", "pid", "ipc", "uts", "net"] {
        let of = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/{kind}")).unwrap();
        assert_ne!(of(&vmm.to_string()), of("self"), "{kind} namespace");
    }
    assert_eq!(
        status_field(&status, "NSpid").split_whitespace().last(),
        Some("1")
    );
    // `/` is the jail: the VMM, /dev/kvm, the pod's vm dir and what the VM starts from:
    // the kernel and initramfs (booted), or the template's snapshot dir (restored, with
    // `template = true`).
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root/"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    let restored = match c.pod_restored(id) {
        Some(false) => {
            assert_eq!(root, ["dev", "husk-vmm", "initramfs", "kernel", "run"]);
            false
        }
        Some(true) => {
            assert_eq!(root, ["dev", "husk-vmm", "run", "snapshot"]);
            true
        }
        None => panic!("neither booted nor restored:\n{}", c.log()),
    };
    let dev: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dev, ["kvm"]);
    let mut run: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root/run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    run.sort();
    // (virtiofsd keeps its pid file beside its socket: root's, the VMM can only read it;
    // vm.json is the VM's config the shim wrote, husk-vmm --config /run/vm.json.)
    assert_eq!(
        run,
        [
            "console.log",
            "virtiofsd.sock",
            "virtiofsd.sock.pid",
            "vm.json",
            "vsock.sock"
        ]
    );
    // Only stdio, KVM's fds, eventfds and sockets: no host file beyond the kernel/initramfs
    // (which the VMM closed after loading them) or, restored, the snapshot's memory file
    // it maps as guest RAM, open read-only.
    for fd in std::fs::read_dir(format!("/proc/{vmm}/fd")).unwrap() {
        let fd = fd.unwrap();
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        let t = target.display().to_string();
        if restored && t == "/snapshot/vm.mem" {
            let info = std::fs::read_to_string(format!(
                "/proc/{vmm}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap();
            assert_eq!(flags & 3, 0, "vm.mem is open for writing: {info}");
            continue;
        }
        assert!(
            t.starts_with("anon_inode:")
                || t.starts_with("socket:")
                || t.starts_with("/dev/kvm")
                || t.starts_with("/run/")
                || t.starts_with("/dev/null")
                || t.ends_with("vmm.log")
                || t.starts_with("/memfd:"),
            "husk-vmm fd -> {t}"
        );
    }
    // The pod's cgroup (ctr's cgroupsPath /<namespace>/<id>) holds the VMM and virtiofsd.
    let cgroup = c.pod_cgroup(id);
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    let in_cgroup: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
    assert!(
        in_cgroup.contains(&vmm),
        "{}: {in_cgroup:?}",
        cgroup.display()
    );

    let vfs = c.pod_pid(id, "virtiofsd").expect("virtiofsd pid");
    assert!(
        in_cgroup.contains(&vfs),
        "{}: {in_cgroup:?}",
        cgroup.display()
    );
    if let Ok(mem) = std::fs::read_to_string(cgroup.join("memory.current")) {
        // What the guest wrote is the pod's: a booted guest's RAM (the memfd only husk-vmm
        // maps, all of it resident), a restored guest's copy-on-write (anonymous) pages.
        // The template's pages a restored guest only reads are page cache shared by every
        // pod restored from it, charged once, as overlayfs image layers are under runc.
        let bytes: u64 = mem.trim().parse().unwrap();
        let smaps = std::fs::read_to_string(format!("/proc/{vmm}/smaps")).unwrap();
        let field = if restored { "Anonymous" } else { "Rss" };
        let written = guest_ram_field(&smaps, field).expect("no guest RAM mapping") << 10;
        eprintln!(
            "pod cgroup {}: memory.current {bytes}, guest RAM written {written}",
            cgroup.display()
        );
        assert!(written > 4 << 20, "the guest wrote only {written} bytes");
        assert!(
            bytes >= written,
            "the guest's memory is accounted to the pod: {bytes} < {written}"
        );
    }
    let host_ns = mnt_ns("self");
    assert_ne!(
        mnt_ns(&vfs.to_string()),
        host_ns,
        "virtiofsd shares the host's mount namespace"
    );
    let served = husk_tests::host::child_pids(vfs);
    assert_eq!(served.len(), 1, "virtiofsd's sandboxed child: {served:?}");
    let child = served[0];
    assert_ne!(mnt_ns(&child.to_string()), host_ns);
    let threads = seccomp_by_thread(child as u32);
    assert!(
        threads.values().all(|m| m == "2"),
        "virtiofsd threads: {threads:?}"
    );
    // Its root is the pod's shared dir: the host's root is out of its reach.
    let root = std::fs::read_link(format!("/proc/{child}/root")).unwrap();
    eprintln!(
        "virtiofsd {child}: root {}, mnt ns {}",
        root.display(),
        mnt_ns(&child.to_string())
    );

    let o = c.ctr(&["task", "kill", "-s", "SIGKILL", id]).unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}");
    wait_for("STOPPED", Duration::from_secs(60), || {
        c.task_status(id).as_deref() == Some("STOPPED")
    });
    let o = c.ctr(&["task", "rm", id]).unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}");
    let o = c.ctr(&["container", "rm", id]).unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}");
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "left behind:\n{left}\n{}", c.log());
    assert!(!cgroup.exists(), "{} outlived the pod", cgroup.display());
}
