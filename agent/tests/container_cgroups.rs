//! A container's cgroup through the engine: pause/resume, stats under load,
//! resource updates, the process list and OOM events, against real busybox
//! containers. Needs root. On this cgroup v1/hybrid host libcgroups' v1
//! manager does the work (a dev-dependency feature); in the guest the same
//! calls use v2. Run in the test host to exercise v2:
//! `scripts/testhost/run.sh -- <container_cgroups test binary> --test-threads=1`
//! (all pass there, ~21 s under emulation).

// Each test binary uses part of the shared helpers.
#[allow(dead_code)]
mod support;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::MutexGuard;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use husk_agent::container::cgroups::{parse_resources, CgroupError, ResourcesError};
use husk_agent::container::{Cgroup, Container, Engine, ErrorKind, ExitStatus, OomMonitor};
use oci_spec::runtime::{LinuxBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, Spec};
use support::busybox_bundle;

const SUITE: &str = "cgroups";

fn engine() -> Option<(MutexGuard<'static, ()>, &'static Engine)> {
    support::engine::engine(SUITE)
}

fn rootfs() -> PathBuf {
    support::engine::rootfs(SUITE, &["tail", "dd", "cat"])
}

/// A started container whose output is read on two threads.
struct Running {
    container: Container,
    readers: Vec<thread::JoinHandle<Vec<u8>>>,
}

impl Running {
    fn start(engine: &Engine, id: &str, spec: Spec) -> Result<Self> {
        let created = support::engine::create(engine, id, spec, &rootfs()).context("create")?;
        let mut readers = Vec::new();
        for mut stream in [created.stdout, created.stderr] {
            readers.push(thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = stream.read_to_end(&mut buf);
                buf
            }));
        }
        let mut container = created.container;
        container.start().context("start")?;
        Ok(Self { container, readers })
    }

    /// Kills what runs, waits and removes the container; the exit status.
    fn finish(mut self, kill: bool) -> Result<(ExitStatus, String)> {
        if kill {
            match self.container.signal(libc::SIGKILL) {
                Ok(()) => {}
                // Nothing runs any more: an OOM kill can end the whole container (on a
                // cgroup v1 host the kernel may pick the shell, not the hog).
                Err(e) if e.kind() == ErrorKind::FailedPrecondition => {}
                Err(e) => return Err(e).context("kill"),
            }
        }
        let status = self.container.wait().context("wait")?;
        let mut output = String::new();
        for reader in self.readers {
            output.push_str(&String::from_utf8_lossy(&reader.join().expect("reader")));
        }
        self.container.delete().context("delete")?;
        Ok((status, output))
    }
}

fn spec(args: &[&str]) -> Result<Spec> {
    busybox_bundle::spec(args)
}

fn spec_with_memory_limit(args: &[&str], limit: i64) -> Result<Spec> {
    let mut spec = spec(args)?;
    let resources = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(limit).build()?)
        .build()?;
    let linux = spec
        .linux()
        .clone()
        .unwrap_or(LinuxBuilder::default().build()?);
    let mut linux = linux;
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Polls `f` until it returns true or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f()? {
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The state letter of /proc/PID/status ("R", "S", "D", ...).
fn proc_state(pid: u32) -> Result<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("State:"))
        .context("no State line")?;
    Ok(line["State:".len()..].trim().chars().take(1).collect())
}

fn cpu_usec(cgroup: &Cgroup) -> Result<u64> {
    Ok(cgroup.stats()?.cpu.usage_usec)
}

const BURN: &[&str] = &["sh", "-c", "while :; do :; done"];

#[test]
fn pause_freezes_every_process_and_resume_thaws_them() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let running = Running::start(engine, "pause", spec(BURN)?)?;
    let mut c = running.container;
    let result = (|| -> Result<()> {
        let cgroup = c.cgroup()?;
        let pid = c.pid() as u32;
        assert!(!cgroup.is_frozen()?);
        c.pause()?;
        assert!(
            eventually(Duration::from_secs(5), || Ok(cgroup.is_frozen()?))?,
            "freezer never reported frozen"
        );
        // A frozen task does not run: its state is not R, and the CPU
        // time of the cgroup stands still.
        let state = proc_state(pid)?;
        assert_ne!(state, "R", "a paused busy loop is running");
        let before = cpu_usec(&cgroup)?;
        thread::sleep(Duration::from_millis(300));
        let after = cpu_usec(&cgroup)?;
        assert!(
            after - before < 20_000,
            "paused cgroup used {} us",
            after - before
        );
        // Pausing twice is an error, not a hang.
        assert!(c.pause().is_err());

        c.resume()?;
        assert!(!cgroup.is_frozen()?);
        let before = cpu_usec(&cgroup)?;
        thread::sleep(Duration::from_millis(300));
        let after = cpu_usec(&cgroup)?;
        assert!(
            after - before > 50_000,
            "resumed cgroup used only {} us",
            after - before
        );
        Ok(())
    })();
    let running = Running {
        container: c,
        readers: running.readers,
    };
    let (status, _) = running.finish(true)?;
    result?;
    assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL));
    Ok(())
}

#[test]
fn a_paused_container_can_still_be_removed() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let mut running = Running::start(engine, "pause-rm", spec(&["sleep", "100"])?)?;
    let cgroup = running.container.cgroup()?;
    running.container.pause()?;
    let pid = running.container.pid();
    // delete (not wait: a frozen init never exits) kills the frozen
    // processes, thawing first where v1 needs it, and reaps the init.
    running.container.delete().context("delete paused")?;
    for reader in running.readers {
        reader.join().expect("reader");
    }
    for controller in ["memory", "freezer", "pids"] {
        let dir = cgroup.dir(controller);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "init {pid} still there"
    );
    Ok(())
}

#[test]
fn stats_grow_under_cpu_and_memory_load() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    // tail keeps its whole input when it has no newline, and holds it
    // while its reader (sleep) never reads: 48 MiB resident.
    let script = "head -c 48m /dev/zero | tail | sleep 1000 & while :; do :; done";
    let running = Running::start(engine, "stats", spec(&["sh", "-c", script])?)?;
    let result = (|| -> Result<()> {
        let cgroup = running.container.cgroup()?;
        let first = cgroup.stats()?;
        thread::sleep(Duration::from_millis(500));
        let grown = eventually(Duration::from_secs(30), || {
            Ok(cgroup.stats()?.memory.usage >= 32 << 20)
        })?;
        let second = cgroup.stats()?;
        assert!(grown, "memory usage stayed at {}", second.memory.usage);
        assert!(
            second.cpu.usage_usec >= first.cpu.usage_usec + 200_000,
            "cpu {} -> {}",
            first.cpu.usage_usec,
            second.cpu.usage_usec
        );
        assert!(second.cpu.user_usec > 0);
        assert!(second.pids.current >= 3, "pids {}", second.pids.current);
        assert_eq!(second.memory.limit, 0, "no limit was set");
        assert!(!second.memory.stat.is_empty());
        Ok(())
    })();
    running.finish(true)?;
    result
}

#[test]
fn update_changes_the_cgroup_files_and_refuses_nonsense() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let running = Running::start(engine, "update", spec(&["sleep", "100"])?)?;
    let result = (|| -> Result<()> {
        let cgroup = running.container.cgroup()?;
        let resources = parse_resources(br#"{"memory":{"limit":67108864},"pids":{"limit":20}}"#)?;
        cgroup.update(&resources)?;
        let (memory_file, pids_file) = if cgroup.is_unified() {
            (
                cgroup.dir("").join("memory.max"),
                cgroup.dir("").join("pids.max"),
            )
        } else {
            (
                cgroup.dir("memory").join("memory.limit_in_bytes"),
                cgroup.dir("pids").join("pids.max"),
            )
        };
        assert_eq!(fs::read_to_string(&memory_file)?.trim(), "67108864");
        assert_eq!(fs::read_to_string(&pids_file)?.trim(), "20");
        let stats = cgroup.stats()?;
        assert_eq!((stats.memory.limit, stats.pids.limit), (64 << 20, 20));

        // Nonsense is refused before anything is written.
        let err = parse_resources(br#"{"memory":{"limit":-7}}"#).unwrap_err();
        assert!(matches!(
            err,
            ResourcesError::Invalid {
                field: "memory.limit",
                ..
            }
        ));
        let bad = serde_json::from_str(r#"{"pids":{"limit":-9}}"#)?;
        let err = cgroup.update(&bad).unwrap_err();
        assert!(matches!(err, CgroupError::Resources(_)), "{err:?}");
        assert_eq!(
            format!("{:#}", anyhow::Error::from(err)),
            "Invalid resources: pids.limit is -9: must be -1, 0 (unlimited) or > 0"
        );
        assert_eq!(fs::read_to_string(&pids_file)?.trim(), "20");

        // Fields left out keep their values.
        cgroup.update(&parse_resources(br#"{"pids":{"limit":30}}"#)?)?;
        assert_eq!(fs::read_to_string(&memory_file)?.trim(), "67108864");
        assert_eq!(fs::read_to_string(&pids_file)?.trim(), "30");
        Ok(())
    })();
    running.finish(true)?;
    result
}

#[test]
fn a_cpu_quota_update_shows_as_throttling() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let running = Running::start(engine, "quota", spec(BURN)?)?;
    let result = (|| -> Result<()> {
        let cgroup = running.container.cgroup()?;
        assert_eq!(cgroup.stats()?.cpu.nr_throttled, 0);
        // 10 ms per 100 ms period for a loop that wants all of it.
        cgroup.update(&parse_resources(
            br#"{"cpu":{"quota":10000,"period":100000}}"#,
        )?)?;
        let throttled = eventually(Duration::from_secs(10), || {
            let cpu = cgroup.stats()?.cpu;
            Ok(cpu.nr_periods > 0 && cpu.nr_throttled > 0 && cpu.throttled_usec > 0)
        })?;
        assert!(throttled, "{:?}", cgroup.stats()?.cpu);
        Ok(())
    })();
    running.finish(true)?;
    result
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn list_processes_shows_the_init_and_its_child() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let running = Running::start(engine, "ps", spec(&["sh", "-c", "sleep 100 & wait"])?)?;
    let result = (|| -> Result<()> {
        let cgroup = running.container.cgroup()?;
        let init = running.container.pid() as u32;
        let mut pids = Vec::new();
        let mut names = Vec::new();
        // The child is "sh" until it has exec'd sleep.
        let seen = eventually(Duration::from_secs(5), || {
            pids = cgroup.pids()?;
            names = pids.iter().map(|p| comm(*p)).collect::<Vec<_>>();
            names.sort();
            Ok(names == ["sh", "sleep"])
        })?;
        assert!(seen, "pids {pids:?} named {names:?}");
        assert!(pids.contains(&init), "{pids:?} lacks init {init}");
        Ok(())
    })();
    running.finish(true)?;
    result
}

#[test]
fn an_oom_kill_is_reported_for_its_container() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let monitor = OomMonitor::start(Duration::from_millis(50))?;
    // 32 MiB limit, tail tries to hold 256 MiB.
    let spec = spec_with_memory_limit(
        &["sh", "-c", "head -c 256m /dev/zero | tail; sleep 100"],
        32 << 20,
    )?;
    let created = support::engine::create(engine, "oom", spec, &rootfs()).context("create")?;
    let mut readers = Vec::new();
    for mut stream in [created.stdout, created.stderr] {
        readers.push(thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stream.read_to_end(&mut buf);
            buf
        }));
    }
    let mut container = created.container;
    // Watch before the workload runs, as the RPC layer does at create.
    monitor.watch("oom", &container.cgroup()?)?;
    container.start()?;
    let event = monitor.next_event_timeout(Duration::from_secs(30));
    let stats = container.cgroup()?.stats();
    monitor.unwatch("oom");
    let running = Running { container, readers };
    running.finish(true)?;
    assert_eq!(event?.container_id, "oom");
    assert!(stats?.memory.oom_kill >= 1);
    assert!(monitor.watched().is_empty());
    monitor.shutdown();
    Ok(())
}

#[test]
fn a_cgroup_that_is_gone_is_an_error_naming_it() -> Result<()> {
    let Some((_g, _engine)) = engine() else {
        return Ok(());
    };
    let cgroup = Cgroup::new("nothing", Path::new("/husk/does-not-exist"))?;
    let err = cgroup.stats().unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(text.contains("does-not-exist"), "{text}");
    Ok(())
}
