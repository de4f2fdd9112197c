//! The agent API end to end (`support::api`): a hundred create/remove
//! cycles leave no process, mount, descriptor, cgroup or state file behind.
//! Alone in its test binary: the agent's sandbox mounts (the sandbox test)
//! are made in the host's mount namespace, which this test compares before
//! and after.

mod support;

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use support::agent::{health_ok, Agent};
use support::api::{
    cgroup_dirs, create, exec, is_root, joined, remove, run, signal, start, stdio, wait, OUT,
};

/// Pids whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if rest.split_whitespace().nth(1) == Some(parent.to_string().as_str()) {
            children.push(pid);
        }
    }
    children
}

fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn hundred_create_remove_cycles_leave_nothing_behind() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let mut agent = Agent::start("cycles")?;
    let c = agent.client()?;
    // One warm-up cycle, so lazily opened files are open before counting.
    let (_, _, s) = run(&agent, &c, "api-cyc-warm", &["true"])?;
    assert_eq!(s.exit_status, 0);
    let mounts_before = fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid()))?;
    let host_mounts_before = fs::read_to_string("/proc/self/mountinfo")?;
    let fds_before = fd_count(agent.pid());
    for i in 0..100 {
        let id = format!("api-cyc-{i}");
        match i % 4 {
            // Run to the end with both streams attached.
            0 => {
                let (out, _, s) = run(&agent, &c, &id, &["echo", "x"])?;
                assert_eq!((out.as_slice(), s.exit_status), (&b"x\n"[..], 0));
            }
            // Created, never started, removed.
            1 => {
                create(&c, &id, &["true"], stdio(true, true, true))?;
                remove(&c, &id, false)?;
            }
            // Running, with an exec, force-removed.
            2 => {
                create(&c, &id, &["sleep", "100"], stdio(false, true, false))?;
                let out = agent.read_stream(&id, "", OUT)?;
                start(&c, &id)?;
                exec(
                    &c,
                    &id,
                    "e",
                    &["sleep", "100"],
                    false,
                    stdio(false, true, false),
                )?;
                let eout = agent.read_stream(&id, "e", OUT)?;
                remove(&c, &id, true)?;
                joined(out)?;
                joined(eout)?;
            }
            // A terminal exec, then stop and remove.
            _ => {
                create(&c, &id, &["sleep", "100"], stdio(false, false, false))?;
                start(&c, &id)?;
                exec(
                    &c,
                    &id,
                    "t",
                    &["echo", "tty"],
                    true,
                    stdio(false, true, false),
                )?;
                let out = agent.read_stream(&id, "t", OUT)?;
                assert_eq!(wait(&c, &id, "t")?.exit_status, 0);
                assert!(String::from_utf8_lossy(&joined(out)?).contains("tty"));
                signal(&c, &id, "", 9, false)?;
                wait(&c, &id, "")?;
                remove(&c, &id, false)?;
            }
        }
        let left = cgroup_dirs(&id);
        assert!(left.is_empty(), "cycle {i}: cgroups left behind: {left:?}");
    }
    // Exit statuses reach the reaper asynchronously: give stragglers a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children_of(agent.pid()).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        children_of(agent.pid()),
        Vec::<i32>::new(),
        "processes left behind"
    );
    assert_eq!(
        fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid()))?,
        mounts_before
    );
    assert_eq!(
        fs::read_to_string("/proc/self/mountinfo")?,
        host_mounts_before
    );
    let fds_after = fd_count(agent.pid());
    assert!(
        fds_after <= fds_before,
        "fds: {fds_before} before, {fds_after} after"
    );
    let root = agent.dir.join("root");
    for sub in ["state", "bundles", "tty"] {
        let left: Vec<_> = fs::read_dir(root.join(sub))?
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{sub} left behind: {left:?}");
    }
    health_ok(&c)?;
    agent.assert_alive()
}
