//! containerd-shim-husk-v2 under a real (private) containerd, driven with `ctr` as a user
//! would. Tests that boot guests are `#[ignore]`d for a plain `cargo test` and run by
//! `make test` (in the test host where needed); the config-error test needs no VM.

use std::io::Write;
use std::time::{Duration, Instant};

use husk_tests::containerd::{Containerd, HuskToml, BUSYBOX_IMAGE, RUNTIME};
use husk_tests::kvm_available;

fn containerd(husk: &HuskToml) -> Containerd {
    let c = Containerd::start(husk).unwrap();
    c.import_busybox().unwrap();
    c
}

/// Asserts nothing is left behind (processes, mounts, state), waiting a little for
/// asynchronous teardown.
fn assert_clean(c: &Containerd, when: &str) {
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "{when}: left behind:\n{left}\n{}", c.log());
}

fn wait_status(c: &Containerd, id: &str, want: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let s = c.task_status(id);
        if s.as_deref() == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "task {id}: status {s:?}, want {want}\n{}\n{}",
            c.pod_logs(id),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ok(o: &husk_tests::Outcome, what: &str, c: &Containerd, id: &str) {
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

fn run_detached(c: &Containerd, id: &str, args: &[&str]) {
    let mut a = vec!["run", "-d", "--runtime", RUNTIME, BUSYBOX_IMAGE, id];
    a.extend_from_slice(args);
    let o = c.ctr(&a).unwrap();
    ok(&o, "ctr run -d", c, id);
    wait_status(c, id, "RUNNING", Duration::from_secs(60));
}

fn remove(c: &Containerd, id: &str) {
    let o = c.ctr(&["task", "rm", "-f", id]).unwrap();
    ok(&o, "ctr task rm", c, id);
    let o = c.ctr(&["container", "rm", id]).unwrap();
    ok(&o, "ctr container rm", c, id);
}

#[test]
fn missing_kernel_fails_ctr_run_with_the_shims_message() {
    // No VM boots here: the shim refuses before starting anything.
    let c = containerd(&HuskToml {
        kernel: "/nonexistent/husk/vmlinux".into(),
        ..Default::default()
    });
    let o = c.run_rm("nokernel", &["true"]).unwrap();
    assert_ne!(o.code(), Some(0), "{o:?}");
    assert!(
        o.stderr
            .contains("kernel /nonexistent/husk/vmlinux does not exist"),
        "ctr run should carry the shim's reason:\n{}\n{}",
        o.stderr,
        c.log()
    );
    let _ = c.ctr(&["container", "rm", "nokernel"]);
    assert_clean(&c, "after a failed create");
}

#[test]
fn bad_config_key_fails_ctr_run_with_the_shims_message() {
    let c = containerd(&HuskToml {
        extra: "kernal = \"/typo\"".into(),
        ..Default::default()
    });
    let o = c.run_rm("badconf", &["true"]).unwrap();
    assert_ne!(o.code(), Some(0), "{o:?}");
    assert!(
        o.stderr.contains("kernal"),
        "ctr run should name the unknown key:\n{}\n{}",
        o.stderr,
        c.log()
    );
    let _ = c.ctr(&["container", "rm", "badconf"]);
    assert_clean(&c, "after a refused config");
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn ctr_run_output_and_exit_codes() {
    if !kvm_available("ctr_run_output_and_exit_codes") {
        return;
    }
    let c = containerd(&HuskToml::default());

    let o = c.run_rm("hello", &["echo", "hello"]).unwrap();
    ok(&o, "echo hello", &c, "hello");
    assert_eq!(o.stdout, "hello\n", "{}", c.log());

    let o = c.run_rm("exit3", &["sh", "-c", "exit 3"]).unwrap();
    assert_eq!(o.code(), Some(3), "{o:?}\n{}", c.log());

    // The guest kernel is not the host's: the container runs in a VM.
    let o = c.run_rm("uname", &["uname", "-r"]).unwrap();
    ok(&o, "uname -r", &c, "uname");
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(
        o.stdout.trim(),
        host.trim(),
        "the container saw the host's kernel"
    );

    // 1 MiB of stdout (plus stderr at the same time), every byte in order.
    let o = c
        .run_rm(
            "big",
            &[
                "sh",
                "-c",
                "seq 1 170000 | head -c 1048576; echo to-stderr >&2",
            ],
        )
        .unwrap();
    ok(&o, "1 MiB", &c, "big");
    let want: String = (1..=170000).map(|i| format!("{i}\n")).collect();
    assert_eq!(o.stdout.len(), 1 << 20);
    assert!(
        o.stdout.as_bytes() == &want.as_bytes()[..1 << 20],
        "1 MiB of stdout differs"
    );
    assert!(o.stderr.contains("to-stderr"), "{}", o.stderr);

    // A process that writes and exits at once loses nothing (no trailing newline).
    let o = c
        .run_rm("quick", &["sh", "-c", "printf last-bytes; exit 7"])
        .unwrap();
    assert_eq!(o.code(), Some(7), "{o:?}");
    assert_eq!(o.stdout, "last-bytes");
    assert_clean(&c, "after ctr run --rm");
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn exec_ps_pause_metrics_and_kill() {
    if !kvm_available("exec_ps_pause_metrics_and_kill") {
        return;
    }
    let c = containerd(&HuskToml::default());
    let id = "life";
    // A PID 1 receives from outside its namespace only the signals it handles (and
    // SIGKILL), as under runc: `sleep` as init would ignore SIGTERM. This init handles it.
    run_detached(
        &c,
        id,
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; while true; do sleep 1; done",
        ],
    );

    let o = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "echo in-exec; exit 4",
        ])
        .unwrap();
    assert_eq!(o.code(), Some(4), "{o:?}\n{}", c.log());
    assert_eq!(o.stdout, "in-exec\n");

    // With a terminal. ctr wants one on its own stdin for -t: script(1) supplies it.
    let cmdline = format!(
        "ctr --address {} --namespace husk-test task exec --exec-id e2 -t {id} sh -c 'tty; echo tty-ok'",
        c.socket.display()
    );
    let s = husk_tests::run_with_watchdog(
        std::process::Command::new("script").args(["-qec", &cmdline, "/dev/null"]),
        Duration::from_secs(300),
    )
    .unwrap();
    assert_eq!(s.code(), Some(0), "{s:?}\n{}", c.log());
    assert!(s.stdout.contains("/dev/pts/"), "{}", s.stdout);
    assert!(s.stdout.contains("tty-ok"), "{}", s.stdout);

    let o = c.ctr(&["task", "ps", id]).unwrap();
    ok(&o, "ctr task ps", &c, id);
    assert!(
        o.stdout.lines().count() >= 2,
        "no process listed:\n{}",
        o.stdout
    );

    ok(&c.ctr(&["task", "pause", id]).unwrap(), "pause", &c, id);
    wait_status(&c, id, "PAUSED", Duration::from_secs(30));
    ok(&c.ctr(&["task", "resume", id]).unwrap(), "resume", &c, id);
    wait_status(&c, id, "RUNNING", Duration::from_secs(30));

    let o = c.ctr(&["task", "metrics", id]).unwrap();
    ok(&o, "ctr task metrics", &c, id);
    assert!(o.stdout.contains("memory"), "{}", o.stdout);

    ok(
        &c.ctr(&["task", "kill", "-s", "SIGTERM", id]).unwrap(),
        "kill",
        &c,
        id,
    );
    wait_status(&c, id, "STOPPED", Duration::from_secs(60));
    remove(&c, id);

    // SIGKILL, on a process that ignores SIGTERM.
    run_detached(&c, "hard", &["sh", "-c", "trap '' TERM; sleep 600"]);
    ok(
        &c.ctr(&["task", "kill", "-s", "SIGKILL", "hard"]).unwrap(),
        "kill -9",
        &c,
        "hard",
    );
    wait_status(&c, "hard", "STOPPED", Duration::from_secs(60));
    remove(&c, "hard");
    assert_clean(&c, "after exec/kill");
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn two_containers_run_in_two_vms() {
    if !kvm_available("two_containers_run_in_two_vms") {
        return;
    }
    let c = containerd(&HuskToml::default());
    run_detached(&c, "one", &["sleep", "600"]);
    run_detached(&c, "two", &["sleep", "600"]);
    let a = c.pod_pid("one", "vmm").expect("pod one has a VMM");
    let b = c.pod_pid("two", "vmm").expect("pod two has a VMM");
    assert_ne!(a, b);
    for p in [a, b] {
        assert!(std::path::Path::new(&format!("/proc/{p}")).exists());
    }
    remove(&c, "one");
    remove(&c, "two");
    assert_clean(&c, "after two pods");
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn killed_vmm_ends_the_task_and_leaks_nothing() {
    if !kvm_available("killed_vmm_ends_the_task_and_leaks_nothing") {
        return;
    }
    let c = containerd(&HuskToml::default());
    let id = "vmmkill";
    run_detached(&c, id, &["sleep", "600"]);
    let vmm = c.pod_pid(id, "vmm").expect("VMM pid recorded");
    // SAFETY: kill(2) with plain integers.
    assert_eq!(unsafe { libc::kill(vmm, libc::SIGKILL) }, 0);
    wait_status(&c, id, "STOPPED", Duration::from_secs(60));
    let o = c.ctr(&["task", "rm", id]).unwrap();
    ok(&o, "ctr task rm", &c, id);
    // ctr task rm warns about the non-zero exit: the shim's "VM gone" status.
    assert!(o.stderr.contains("exit code 255"), "{o:?}");
    ok(
        &c.ctr(&["container", "rm", id]).unwrap(),
        "ctr container rm",
        &c,
        id,
    );
    assert!(
        c.log().contains("husk-vmm"),
        "the shim logs why the task ended"
    );
    assert_clean(&c, "after husk-vmm was killed");
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn killed_shim_is_cleaned_by_task_rm() {
    if !kvm_available("killed_shim_is_cleaned_by_task_rm") {
        return;
    }
    let c = containerd(&HuskToml::default());
    let id = "shimkill";
    run_detached(&c, id, &["sleep", "600"]);
    let shim = c.pod_pid(id, "shim").expect("shim pid recorded");
    // SAFETY: kill(2) with plain integers.
    assert_eq!(unsafe { libc::kill(shim, libc::SIGKILL) }, 0);
    // containerd notices the dead shim and runs `shim delete`, which kills the VM.
    let _ = c.ctr(&["task", "rm", "-f", id]);
    let _ = c.ctr(&["container", "rm", id]);
    let l = c.ctr(&["container", "ls", "-q"]).unwrap();
    assert!(
        !l.stdout.contains(id),
        "container still listed:\n{}",
        l.stdout
    );
    assert_clean(&c, "after the shim was killed");
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn sequential_cycles_leave_nothing_behind() {
    if !kvm_available("sequential_cycles_leave_nothing_behind") {
        return;
    }
    let cycles: usize = std::env::var("HUSK_SHIM_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let c = containerd(&HuskToml::default());
    let start = Instant::now();
    for i in 0..cycles {
        let id = format!("cycle{i}");
        let o = c.run_rm(&id, &["echo", &id]).unwrap();
        ok(&o, &id, &c, &id);
        assert_eq!(o.stdout, format!("{id}\n"));
        let left = c.wait_clean(Duration::from_secs(30));
        assert!(left.is_empty(), "cycle {i} left:\n{left}");
        // Straight to stderr, past the test harness's capture: a long run shows progress
        // (and the integration runner's silence watchdog sees it is alive).
        let _ = writeln!(
            std::io::stderr(),
            "shim cycles: {} of {cycles} done, {:?}",
            i + 1,
            start.elapsed()
        );
    }
    eprintln!(
        "{cycles} run/remove cycles in {:?}, nothing left behind",
        start.elapsed()
    );
}
