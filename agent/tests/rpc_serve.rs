//! `husk-agent serve --listen unix:<path>` driven through the generated ttrpc
//! client, as the shim will drive the agent in the guest.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use husk_protocol::agent;
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::ttrpc::{self, Code};
use support::agent::{ctx_secs, health_ok, Agent};

/// The deadline of this suite's direct calls.
fn ctx() -> ttrpc::context::Context {
    ctx_secs(5)
}

#[test]
fn health_and_version() -> Result<()> {
    let agent = Agent::start("health")?;
    let client = agent.client()?;

    let first = health_ok(&client)?;
    assert!(first.uptime_ms < 60_000, "uptime {} ms", first.uptime_ms);
    std::thread::sleep(Duration::from_millis(50));
    let second = health_ok(&client)?;
    assert!(
        second.uptime_ms >= first.uptime_ms + 50,
        "uptime did not advance: {} then {}",
        first.uptime_ms,
        second.uptime_ms
    );

    let v = client.version(ctx(), &agent::VersionRequest::new())?;
    assert_eq!(v.api_version, "husk.agent.v1");
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    assert_eq!(v.kernel_release, release.trim());
    Ok(())
}

/// The cgroup RPCs, called for a container that does not exist.
fn call_cgroup_rpcs(c: &AgentClient) -> Vec<(&'static str, ttrpc::Result<()>)> {
    fn ok<T>(r: ttrpc::Result<T>) -> ttrpc::Result<()> {
        r.map(|_| ())
    }
    let id = || "nope".to_string();
    let mut pause = agent::PauseContainerRequest::new();
    pause.container_id = id();
    let mut resume = agent::ResumeContainerRequest::new();
    resume.container_id = id();
    let mut stats = agent::StatsContainerRequest::new();
    stats.container_id = id();
    let mut update = agent::UpdateContainerRequest::new();
    update.container_id = id();
    update.resources_json = b"{}".to_vec();
    let mut ps = agent::ListProcessesRequest::new();
    ps.container_id = id();
    vec![
        ("PauseContainer", ok(c.pause_container(ctx(), &pause))),
        ("ResumeContainer", ok(c.resume_container(ctx(), &resume))),
        ("StatsContainer", ok(c.stats_container(ctx(), &stats))),
        ("UpdateContainer", ok(c.update_container(ctx(), &update))),
        ("ListProcesses", ok(c.list_processes(ctx(), &ps))),
    ]
}

#[test]
fn cgroup_rpcs_for_an_unknown_container_answer_not_found() -> Result<()> {
    let mut agent = Agent::start("cgroup-notfound")?;
    let client = agent.client()?;
    let results = call_cgroup_rpcs(&client);
    assert_eq!(results.len(), 5);
    for (rpc, result) in results {
        match result {
            Err(ttrpc::Error::RpcStatus(s)) => {
                assert_eq!(s.code(), Code::NOT_FOUND, "{rpc}: {s:?}");
                assert!(s.message().contains("\"nope\""), "{rpc}: {:?}", s.message());
            }
            other => panic!("{rpc}: expected NOT_FOUND, got {other:?}"),
        }
    }
    // Still serving after the errors.
    health_ok(&client)?;
    agent.assert_alive()
}

/// Writes `bytes` on a fresh raw connection and reads whatever comes back
/// until the agent closes it or 2 s pass.
fn send_raw(sock: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    // The agent may close the connection before reading everything.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    Ok(reply)
}

/// A ttrpc frame header: length, stream id, type (1 = request), flags.
fn header(len: u32, stream_id: u32, msg_type: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(10);
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&stream_id.to_be_bytes());
    h.push(msg_type);
    h.push(0);
    h
}

#[test]
fn garbage_does_not_stop_the_agent() -> Result<()> {
    let mut agent = Agent::start("garbage")?;
    let client = agent.client()?;
    health_ok(&client)?;

    // Pseudo-random junk (a fixed LCG, so a failure is reproducible).
    let mut x: u32 = 0x1234_5678;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();

    let mut oversized = header(u32::MAX, 1, 1);
    oversized.extend_from_slice(&junk[..64]);
    let mut bad_body = header(32, 1, 1);
    bad_body.extend_from_slice(&[0xff; 32]);
    let mut unknown_type = header(4, 3, 0x7f);
    unknown_type.extend_from_slice(b"abcd");
    let truncated = header(100, 5, 1);

    for (what, bytes) in [
        ("junk", junk.clone()),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("oversized frame", oversized),
        ("undecodable request", bad_body),
        ("unknown frame type", unknown_type),
        ("truncated frame", truncated),
        ("empty", Vec::new()),
    ] {
        send_raw(&agent.sock, &bytes).with_context(|| format!("sending {what}"))?;
        agent
            .assert_alive()
            .with_context(|| format!("after {what}"))?;
        // The connection opened before keeps working, and new ones are served.
        health_ok(&client).with_context(|| format!("old client after {what}"))?;
        health_ok(&agent.client()?).with_context(|| format!("new client after {what}"))?;
    }

    // A peer that stalls mid-frame holds only its own connection.
    let mut stalled = UnixStream::connect(&agent.sock)?;
    stalled.write_all(&header(64, 7, 1)[..6])?;
    health_ok(&agent.client()?).context("new client while another stalls")?;
    drop(stalled);
    agent.assert_alive()?;
    health_ok(&client)?;
    Ok(())
}

#[test]
fn a_second_agent_replaces_a_stale_socket() -> Result<()> {
    let mut first = Agent::start("stale")?;
    // Killed without cleanup: the socket file stays behind.
    first.child.kill()?;
    first.child.wait()?;
    assert!(first.sock.exists());

    let second = Agent::start_in(first.dir.clone())?;
    health_ok(&second.client()?)?;
    drop(first);
    Ok(())
}
