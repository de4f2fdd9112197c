//! The OCI seccomp profile in real busybox containers (needs root): errno
//! and kill actions, with and without no_new_privileges (the second path
//! lends CAP_SYS_ADMIN to install the filter and must take it back), a large
//! allow-list profile, and clear errors for malformed profiles at create.
//! Also run in the test host (cgroup v2, Debian's kernel): all pass there.

mod support;

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::MutexGuard;
use std::thread;

use anyhow::{Context, Result};
use husk_agent::container::seccomp::SeccompError;
use husk_agent::container::{Engine, Error, ExitStatus};
use oci_spec::runtime::{LinuxSeccomp, MountBuilder, Spec};
use support::busybox_bundle;

const SUITE: &str = "seccomp";

fn engine() -> Option<(MutexGuard<'static, ()>, &'static Engine)> {
    support::engine::engine(SUITE)
}

fn test_dir() -> PathBuf {
    support::engine::test_dir(SUITE)
}

fn rootfs() -> PathBuf {
    support::engine::rootfs(SUITE, &["mkdir", "cat", "grep", "rm"])
}

fn spec_with(args: &[&str], profile: Option<&str>, nnp: bool) -> Result<Spec> {
    let mut spec = busybox_bundle::spec(args)?;
    let mut process = spec.process().clone().context("process")?;
    process.set_no_new_privileges(Some(nnp));
    spec.set_process(Some(process));
    // The default spec's root is read-only: a tmpfs /tmp to write in.
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".to_string(), "nodev".to_string()])
            .build()?,
    );
    spec.set_mounts(Some(mounts));
    let mut linux = spec.linux().clone().context("linux")?;
    let profile: Option<LinuxSeccomp> = profile.map(serde_json::from_str).transpose()?;
    linux.set_seccomp(profile);
    spec.set_linux(Some(linux));
    Ok(spec)
}

struct Run {
    stdout: String,
    stderr: String,
    status: ExitStatus,
}

fn run(engine: &Engine, id: &str, spec: Spec) -> Result<Run> {
    let created = support::engine::create(engine, id, spec, &rootfs()).context("create")?;
    let mut readers = Vec::new();
    for mut stream in [created.stdout, created.stderr] {
        readers.push(thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stream.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        }));
    }
    let mut container = created.container;
    container.start().context("start")?;
    let status = container.wait().context("wait")?;
    container.delete().context("delete")?;
    let mut out = readers.into_iter().map(|r| r.join().expect("reader"));
    Ok(Run {
        stdout: out.next().unwrap_or_default(),
        stderr: out.next().unwrap_or_default(),
        status,
    })
}

const DENY_MKDIR: &str = r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
    "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#;

/// mkdir fails with EPERM, other calls work; the effective and permitted
/// capabilities the workload ends up with are those of the same container
/// without a profile (so a lent CAP_SYS_ADMIN never survives).
fn errno_profile_case(engine: &Engine, id: &str, nnp: bool) -> Result<()> {
    let script = "mkdir /tmp/d; echo rc=$?; [ -d /tmp/d ] && echo made; \
         echo ok > /tmp/f && cat /tmp/f; grep -E '^Cap(Eff|Prm)' /proc/self/status";
    let args = ["sh", "-c", script];
    let r = run(engine, id, spec_with(&args, Some(DENY_MKDIR), nnp)?)?;
    assert_eq!(r.status, ExitStatus::Exited(0), "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains("Operation not permitted"),
        "stderr: {}",
        r.stderr
    );
    assert!(r.stdout.starts_with("rc=1\nok\n"), "stdout: {}", r.stdout);

    let plain = run(engine, &format!("{id}-plain"), spec_with(&args, None, nnp)?)?;
    assert!(
        plain.stdout.starts_with("rc=0\nmade\nok\n"),
        "stdout: {}",
        plain.stdout
    );
    let caps = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with("Cap"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(caps(&r.stdout), caps(&plain.stdout));
    assert!(!caps(&r.stdout).is_empty());
    Ok(())
}

#[test]
fn errno_action_with_no_new_privileges() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    errno_profile_case(engine, "errno-nnp", true)
}

#[test]
fn errno_action_without_no_new_privileges() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    errno_profile_case(engine, "errno-privs", false)?;
    // The spec the engine keeps (execs start from it) has the capabilities
    // asked for, not the CAP_SYS_ADMIN lent to the init for seccomp.
    let spec = spec_with(&["true"], Some(DENY_MKDIR), false)?;
    let asked = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().clone());
    let created = support::engine::create(engine, "saved", spec, &rootfs())?;
    let saved = Spec::load(test_dir().join("engine/bundles/saved/config.json"))?;
    created.container.delete()?;
    let saved = saved
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().clone());
    assert_eq!(saved, asked);
    Ok(())
}

#[test]
fn kill_action_kills_with_sigsys() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW",
        "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_KILL"}]}"#;
    for nnp in [true, false] {
        let r = run(
            engine,
            "kill",
            spec_with(&["mkdir", "/tmp/killed"], Some(profile), nnp)?,
        )?;
        assert_eq!(r.status, ExitStatus::Signaled(libc::SIGSYS), "nnp {nnp}");
        assert_eq!(r.status.code(), 159);
    }
    Ok(())
}

#[test]
fn allow_list_profile_with_errno_default() -> Result<()> {
    let Some((_g, engine)) = engine() else {
        return Ok(());
    };
    // Every x86_64 syscall but mkdir/mkdirat allowed by name; the default
    // (what mkdir gets) is EACCES: a ~2000-instruction program.
    let names: Vec<String> = (0..500)
        .filter_map(|nr| {
            husk_agent::container::seccomp::syscall_name(nr)
                .filter(|n| *n != "mkdir" && *n != "mkdirat")
                .map(|n| format!("\"{n}\""))
        })
        .collect();
    assert!(names.len() > 300);
    let profile = format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":13,
            "syscalls":[{{"names":[{}],"action":"SCMP_ACT_ALLOW"}}]}}"#,
        names.join(",")
    );
    let r = run(
        engine,
        "allowlist",
        spec_with(
            &["sh", "-c", "mkdir /tmp/al; echo rc=$?"],
            Some(&profile),
            false,
        )?,
    )?;
    assert_eq!(r.status, ExitStatus::Exited(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "rc=1\n");
    assert!(
        r.stderr.contains("Permission denied"),
        "stderr: {}",
        r.stderr
    );
    Ok(())
}

/// A bundle whose config.json has `profile` (raw JSON) as linux.seccomp.
fn bundle_with_profile(name: &str, profile: &str) -> Result<PathBuf> {
    let dir = test_dir().join(name);
    busybox_bundle::write_bundle(&dir, &busybox_bundle::spec(&["true"])?)?;
    let path = dir.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path)?)?;
    json["linux"]["seccomp"] = serde_json::from_str(profile)?;
    fs::write(&path, json.to_string())?;
    Ok(dir)
}

#[test]
fn malformed_profiles_fail_create_with_clear_errors() -> Result<()> {
    // No root needed: these fail before anything is created.
    let dir = std::env::temp_dir().join(format!("husk-seccomp-spec-{}", std::process::id()));
    let engine = Engine::new(&dir)?;
    let cases = [
        (
            "bad-action",
            r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#,
            "SCMP_ACT_BOGUS",
        ),
        (
            "bad-op",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
                "args":[{"index":0,"value":1,"op":"SCMP_CMP_SOMETIMES"}]}]}"#,
            "SCMP_CMP_SOMETIMES",
        ),
    ];
    for (name, profile, needle) in cases {
        let bundle = bundle_with_profile(name, profile)?;
        let err = support::engine::create_from_bundle(&engine, name, &bundle).unwrap_err();
        assert!(matches!(err, Error::LoadSpec { .. }), "{err:?}");
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(text.contains(needle), "{text}");
    }
    let bundle = bundle_with_profile(
        "notify",
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#,
    )?;
    let err = support::engine::create_from_bundle(&engine, "notify", &bundle).unwrap_err();
    assert!(
        matches!(err, Error::Seccomp(SeccompError::UnsupportedAction(_))),
        "{err:?}"
    );
    assert_eq!(
        format!("{:#}", anyhow::Error::from(err)),
        "Invalid seccomp profile: Seccomp action SCMP_ACT_NOTIFY is not supported in the guest"
    );
    // Nothing was left of the refused containers.
    assert_eq!(fs::read_dir(dir.join("bundles"))?.count(), 0);
    assert_eq!(fs::read_dir(dir.join("state"))?.count(), 0);
    Ok(())
}
