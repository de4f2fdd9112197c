//! The container engine against real busybox containers (rootfs from
//! Debian's busybox-static). Needs root; the spec checks run without it.
//! On a cgroup v1/hybrid host the tests use libcontainer's v1 manager (a
//! dev-dependency feature); the guest's cgroup v2 path is exercised in the
//! test host: `scripts/testhost/run.sh -- <container_engine test binary>
//! --test-threads=1` (all pass there, ~14 s under emulation).

mod support;

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::MutexGuard;
use std::thread;

use anyhow::{Context, Result};
use husk_agent::container::{Container, Engine, Error, ExitStatus, SpecError};
use support::busybox_bundle;

const SUITE: &str = "engine";

fn engine() -> Option<(MutexGuard<'static, ()>, &'static Engine)> {
    support::engine::engine(SUITE)
}

fn test_dir() -> PathBuf {
    support::engine::test_dir(SUITE)
}

fn rootfs() -> PathBuf {
    support::engine::rootfs(SUITE, &[])
}

struct Run {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: ExitStatus,
}

/// Creates, starts and waits for a container, reading its output on two
/// threads; `during` runs between start and wait.
fn run_with(
    engine: &Engine,
    id: &str,
    args: &[&str],
    during: impl FnOnce(&mut Container) -> Result<()>,
) -> Result<Run> {
    let spec = busybox_bundle::spec(args)?;
    let mut created = support::engine::create(engine, id, spec, &rootfs()).context("create")?;
    let mut out = created.stdout.try_clone()?;
    let mut err = created.stderr.try_clone()?;
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf).map(|_| buf)
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        err.read_to_end(&mut buf).map(|_| buf)
    });
    created.container.start().context("start")?;
    during(&mut created.container)?;
    let status = created.wait().context("wait")?;
    // The agent's wait (the init, then its output drained) returned: both readers see
    // the end of their pipe once our copies of the read ends are gone.
    drop((created.stdout, created.stderr));
    assert!(out_reader.is_finished() || wait_finished(&out_reader));
    let stdout = out_reader.join().expect("stdout reader")?;
    let stderr = err_reader.join().expect("stderr reader")?;
    created.container.delete().context("delete")?;
    Ok(Run {
        stdout,
        stderr,
        status,
    })
}

/// The reader thread may still be returning from read_to_end: allow it a
/// moment (its data is complete once it has seen the end).
fn wait_finished<T>(handle: &thread::JoinHandle<T>) -> bool {
    for _ in 0..100 {
        if handle.is_finished() {
            return true;
        }
        thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

fn run(engine: &Engine, id: &str, args: &[&str]) -> Result<Run> {
    run_with(engine, id, args, |_| Ok(()))
}

#[test]
fn stdout_and_stderr_bytes_are_exact() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let r = run(
        engine,
        "echo",
        &["sh", "-c", "printf 'hello\\nworld\\n'; printf oops >&2"],
    )?;
    assert_eq!(r.stdout, b"hello\nworld\n");
    assert_eq!(r.stderr, b"oops");
    assert_eq!(r.status, ExitStatus::Exited(0));
    Ok(())
}

#[test]
fn exit_code_42_is_reported() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let r = run(engine, "exit42", &["sh", "-c", "exit 42"])?;
    assert_eq!(r.status, ExitStatus::Exited(42));
    assert_eq!(r.status.code(), 42);
    Ok(())
}

#[test]
fn kill_9_is_reported_as_137() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let r = run_with(engine, "kill9", &["sleep", "100"], |c| {
        c.signal(libc::SIGKILL).context("signal")
    })?;
    assert_eq!(r.status, ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(r.status.code(), 137);
    Ok(())
}

#[test]
fn one_mib_of_output_arrives_whole_and_in_order() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let r = run(engine, "mib", &["seq", "1", "170000"])?;
    let expected: String = (1..=170000).map(|n| format!("{n}\n")).collect();
    assert!(expected.len() >= 1 << 20);
    assert_eq!(r.stdout.len(), expected.len());
    assert!(r.stdout == expected.as_bytes(), "stdout differs from seq");
    assert_eq!(r.status, ExitStatus::Exited(0));
    Ok(())
}

fn own_children() -> Result<Vec<i32>> {
    let me = std::process::id().to_string();
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the ")" closing the command name: state, ppid, ...
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if rest.split_whitespace().nth(1) == Some(me.as_str()) {
            children.push(pid);
        }
    }
    Ok(children)
}

#[test]
fn twenty_create_delete_cycles_leave_nothing_behind() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let mounts_before = fs::read_to_string("/proc/self/mountinfo")?;
    for i in 0..20 {
        let id = format!("cycle-{i}");
        if i % 2 == 0 {
            // Started and run to the end.
            let r = run(engine, &id, &["true"])?;
            assert_eq!(r.status, ExitStatus::Exited(0));
        } else if i % 4 == 1 {
            // Created, never started: delete kills the waiting init.
            let spec = busybox_bundle::spec(&["true"])?;
            let created = support::engine::create(engine, &id, spec, &rootfs())?;
            created.container.delete().context("delete created")?;
        } else {
            // Started, then dropped without delete (a caller's error path).
            let spec = busybox_bundle::spec(&["sleep", "100"])?;
            let mut created = support::engine::create(engine, &id, spec, &rootfs())?;
            created.container.start().context("start")?;
            drop(created);
        }
        for hierarchy in ["", "pids", "memory"] {
            let cg = PathBuf::from("/sys/fs/cgroup")
                .join(hierarchy)
                .join("husk")
                .join(&id);
            assert!(!cg.exists(), "{} left behind", cg.display());
        }
    }
    assert_eq!(fs::read_to_string("/proc/self/mountinfo")?, mounts_before);
    assert_eq!(own_children()?, Vec::<i32>::new(), "processes left behind");
    let state = test_dir().join("engine");
    assert_eq!(fs::read_dir(state.join("state"))?.count(), 0);
    assert_eq!(fs::read_dir(state.join("bundles"))?.count(), 0);
    Ok(())
}

/// Spec checks: no root needed, they fail before anything is created.
fn spec_engine() -> Engine {
    let dir = std::env::temp_dir().join(format!("husk-engine-spec-{}", std::process::id()));
    Engine::new(dir).expect("engine")
}

fn bundle_with(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = test_dir().join(name);
    let spec = busybox_bundle::spec(&["true"]).expect("spec");
    busybox_bundle::write_bundle(&dir, &spec).expect("bundle");
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    fs::write(&path, json.to_string()).unwrap();
    dir
}

#[test]
fn missing_root_is_a_clear_error() {
    let bundle = bundle_with("no-root", |j| {
        j.as_object_mut().unwrap().remove("root");
    });
    let err = support::engine::create_from_bundle(&spec_engine(), "bad", &bundle).unwrap_err();
    assert!(
        matches!(err, Error::Spec(SpecError::MissingRoot)),
        "{err:?}"
    );
    assert_eq!(
        format!("{:#}", anyhow::Error::from(err)),
        "Invalid container spec: Spec has no root (root.path is required)"
    );
}

#[test]
fn dotdot_mount_destination_is_a_clear_error() {
    let bundle = bundle_with("dotdot", |j| {
        let mount = serde_json::json!({"destination": "/tmp/../../etc", "type": "tmpfs", "source": "tmpfs"});
        j["mounts"].as_array_mut().unwrap().push(mount);
    });
    let err = support::engine::create_from_bundle(&spec_engine(), "bad", &bundle).unwrap_err();
    assert!(
        matches!(err, Error::Spec(SpecError::MountDestinationEscapes(ref d)) if d == "/tmp/../../etc"),
        "{err:?}"
    );
}

#[test]
fn unknown_namespace_is_a_clear_error() {
    let bundle = bundle_with("bogus-ns", |j| {
        let ns = serde_json::json!({"type": "bogus"});
        j["linux"]["namespaces"].as_array_mut().unwrap().push(ns);
    });
    let err = support::engine::create_from_bundle(&spec_engine(), "bad", &bundle).unwrap_err();
    assert!(matches!(err, Error::LoadSpec { .. }), "{err:?}");
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(text.contains("bogus"), "{text}");
}
