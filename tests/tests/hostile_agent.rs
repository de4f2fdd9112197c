//! A guest agent that answers the shim wrongly on purpose, through a private containerd as
//! a user would see it: the pod's initramfs is `husk-hostile-agent`
//! (tests/guest-probe/src/bin/hostile_agent.rs, chosen for that pod only with `ctr run
//! --runtime-config-path`). It floods OOM events, answers with an error message of
//! 100 KiB and 60,000 `Status.details`, with a stats reply of 60,000 empty entries, with
//! a frame that never ends, a stdio handshake trickled a byte every 3 s and 32 MiB of
//! output.
//!
//! What must hold: each call fails (or succeeds) with a clear, bounded message; the
//! shim's memory stays bounded; a frame that never ends cuts the agent off and the pod's
//! processes are reported gone, and the pod is then removed leaving nothing behind;
//! containerd sees a bounded number of OOM events, all for this pod's container; and a
//! well-behaved pod of the same containerd answers throughout.
//!
//! Needs root, containerd and a KVM that boots standard guests: `#[ignore]`d for a plain
//! `cargo test`, run by `make test` (in the test host where needed).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_tests::containerd::{Containerd, HuskToml, BUSYBOX_IMAGE, RUNTIME};
use husk_tests::{kvm_available, path_from_env, Outcome};

/// A line on stderr past the test harness's capture: progress shows live, and the
/// integration runner's silence watchdog sees it.
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The shim's memory may not pass this, whatever the agent sends.
const SHIM_RSS_MAX_KIB: u64 = 64 << 10;
/// The shim's limit on OOM events (shim/src/service/oom.rs): a burst, then one a second.
const OOM_BURST: usize = 10;

fn hostile_agent_initramfs() -> std::path::PathBuf {
    path_from_env(
        "HUSK_HOSTILE_AGENT_INITRAMFS",
        "build/guest/hostile-agent-initramfs.cpio",
    )
}

fn rss_kib(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn show(o: &Outcome) -> String {
    format!(
        "{}\nstdout ({} bytes): {:.300}\nstderr: {:.2000}",
        o.status,
        o.stdout.len(),
        o.stdout,
        o.stderr
    )
}

/// `ctr run -d ... ID sleep 3600` under husk (with husk.toml `config` if given), RUNNING.
fn run_detached(c: &Containerd, id: &str, config: Option<&str>) {
    let mut args = vec!["run", "-d", "--runtime", RUNTIME];
    if let Some(path) = config {
        args.extend(["--runtime-config-path", path]);
    }
    args.extend([BUSYBOX_IMAGE, id, "sleep", "3600"]);
    let o = c.ctr(&args).unwrap();
    assert_eq!(o.code(), Some(0), "{id}: {}\n{}", show(&o), c.log());
    wait_status(c, id, "RUNNING", Duration::from_secs(120));
}

fn wait_status(c: &Containerd, id: &str, want: &str, timeout: Duration) {
    let start = Instant::now();
    while c.task_status(id).as_deref() != Some(want) {
        assert!(
            start.elapsed() < timeout,
            "task {id}: status {:?}, want {want}\n{}\n{}",
            c.task_status(id),
            c.pod_logs(id),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn a_hostile_agent_fails_its_pod_cleanly_and_leaves_the_others_alone() {
    let test = "a_hostile_agent_fails_its_pod_cleanly_and_leaves_the_others_alone";
    if !kvm_available(test) {
        return;
    }
    husk_tests::require_file(&hostile_agent_initramfs());
    let c = Containerd::start(&HuskToml::default()).unwrap();
    c.import_busybox().unwrap();
    // The hostile pod's own husk.toml: the test's, with the hostile agent as initramfs.
    let base = std::fs::read_to_string(&c.husk_config).unwrap();
    let hostile_config = c.dir.path().join("husk-hostile.toml");
    let text: String = base
        .lines()
        .map(|l| {
            if l.starts_with("initramfs = ") {
                format!("initramfs = {:?}\n", hostile_agent_initramfs())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&hostile_config, text).unwrap();

    // containerd's events, counted as they come.
    let mut events = Command::new("ctr")
        .arg("--address")
        .arg(&c.socket)
        .args(["--namespace", c.namespace, "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = events.stdout.take().unwrap();
    let oom_lines = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("/tasks/oom"))
            .collect::<Vec<_>>()
    });

    // A well-behaved pod first.
    note!("starting the well-behaved pod");
    run_detached(&c, "good", None);
    note!("starting the hostile pod");

    let config = hostile_config.display().to_string();
    // From before the pod starts: its OOM flood starts with it.
    let started = Instant::now();
    run_detached(&c, "multi", Some(&config));
    let shim = c
        .pod_pid("multi", "shim")
        .expect("the hostile pod's shim pid");
    let at_start = rss_kib(shim).unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(at_start));
    let sampler = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(k) = rss_kib(shim) {
                    peak.fetch_max(k, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // An error of 100 KiB with 60,000 details: cut, escapes gone, the call failed.
    note!("{:?}: an oversized error", started.elapsed());
    let o = c.ctr(&["task", "ps", "multi"]).unwrap();
    assert_ne!(o.code(), Some(0), "{}", show(&o));
    assert!(o.stderr.contains("hostile agent: mmm"), "{}", show(&o));
    assert!(o.stderr.contains("more bytes cut]"), "{}", show(&o));
    assert!(
        o.stderr.len() < 16 << 10,
        "{} bytes of error",
        o.stderr.len()
    );
    assert!(!o.stderr.contains('\x1b'), "terminal escapes passed on");

    note!("{:?}: a stats bomb", started.elapsed());
    // A stats reply of 60,000 empty entries: within the client's frame limit, so it
    // decodes; what it costs is bounded by that limit.
    let o = c.ctr(&["task", "metrics", "multi"]).unwrap();
    note!(
        "ctr task metrics: {}",
        show(&o).lines().next().unwrap_or("")
    );

    // 32 MiB of output, all of it, through the shim.
    note!("{:?}: 32 MiB of output", started.elapsed());
    let o = c
        .ctr(&["task", "exec", "--exec-id", "flood", "multi", "true"])
        .unwrap();
    assert_eq!(o.code(), Some(0), "{}", show(&o));
    assert_eq!(o.stdout.len(), 32 << 20, "{}", show(&o));

    // A stdio handshake trickled a byte every 3 s: cut off by the attach deadline.
    note!("{:?}: a trickled stdio handshake", started.elapsed());
    // The shim's deadline is 30 s; a shim that misses it attaches and waits for an exit
    // that never comes, so this call gets a watchdog of its own.
    let o = c
        .ctr_timeout(
            &["task", "exec", "--exec-id", "trickle", "multi", "true"],
            Duration::from_secs(120),
        )
        .unwrap();
    assert_ne!(o.code(), Some(0), "{}", show(&o));
    assert!(
        o.stderr.contains("did not finish in time"),
        "{}\n{}",
        show(&o),
        c.log()
    );

    // A frame that never ends: the agent is cut off, the call fails saying why...
    note!("{:?}: a frame that never ends", started.elapsed());
    let o = c.ctr(&["task", "pause", "multi"]).unwrap();
    assert_ne!(o.code(), Some(0), "{}", show(&o));
    assert!(
        o.stderr.contains("did not finish a 1000-byte response"),
        "{}\n{}",
        show(&o),
        c.log()
    );
    // ... and the pod's processes are reported gone.
    wait_status(&c, "multi", "STOPPED", Duration::from_secs(120));
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    note!("hostile pod's shim RSS: {at_start} KiB at start, {peak} KiB at its peak");
    assert!(peak <= SHIM_RSS_MAX_KIB, "the shim grew to {peak} KiB");

    // The other pod never noticed.
    note!("{:?}: the other pod", started.elapsed());
    let o = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "alive",
            "good",
            "echo",
            "alive",
        ])
        .unwrap();
    assert_eq!(
        (o.code(), o.stdout.as_str()),
        (Some(0), "alive\n"),
        "{}",
        show(&o)
    );

    // Both go, leaving nothing behind.
    for id in ["multi", "good"] {
        let o = c.ctr(&["task", "rm", "-f", id]).unwrap();
        assert_eq!(o.code(), Some(0), "{id}: {}\n{}", show(&o), c.log());
        let o = c.ctr(&["container", "rm", id]).unwrap();
        assert_eq!(o.code(), Some(0), "{id}: {}", show(&o));
    }
    // The test's own `ctr events` goes first: wait_clean counts every ctr left running.
    let _ = events.kill();
    let _ = events.wait();
    let ooms = oom_lines.join().unwrap();
    let left = c.wait_clean(Duration::from_secs(60));
    assert!(left.is_empty(), "left behind:\n{left}\n{}", c.log());

    // containerd saw a bounded number of OOM events, all for the pod's container.
    note!(
        "OOM events containerd saw in {:.0} s of an agent reporting 100 a second: {}",
        elapsed.as_secs_f64(),
        ooms.len()
    );
    assert!(!ooms.is_empty(), "no OOM event reached containerd");
    assert!(
        ooms.len() <= OOM_BURST + elapsed.as_secs() as usize + 1,
        "{} OOM events: {ooms:#?}",
        ooms.len()
    );
    assert!(
        ooms.iter()
            .all(|l| l.contains("multi") && !l.contains("not-in-this-pod")),
        "{ooms:#?}"
    );
}
