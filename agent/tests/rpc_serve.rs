//! `husk-agent serve --listen unix:<path>` driven through the generated ttrpc
//! client, as the shim will drive the agent in the guest.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::agent::{self, ServingStatus};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::ttrpc::{self, Code};

const TIMEOUT_NS: i64 = 5_000_000_000;

/// A `husk-agent serve` process, killed when dropped.
struct Agent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Agent {
    fn start(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("husk-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Self::start_in(dir)
    }

    /// Starts an agent listening on `<dir>/agent.sock`.
    fn start_in(dir: PathBuf) -> Result<Self> {
        let sock = dir.join("agent.sock");
        // Appended to, so a second agent in the same dir keeps the first's log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--root")
            .arg(dir.join("root"))
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .context("Failed to start husk-agent serve")?;
        let mut agent = Agent { child, dir, sock };
        agent.wait_listening()?;
        Ok(agent)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("husk-agent serve exited early: {status}");
            }
            if UnixStream::connect(&self.sock).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "husk-agent did not listen on {} within 10 s",
                    self.sock.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self) -> Result<AgentClient> {
        let addr = format!("unix://{}", self.sock.display());
        let client = ttrpc::Client::connect(&addr).context("Failed to connect")?;
        Ok(AgentClient::new(client))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Alive, and no thread of it panicked (in a debug build a panicking
    /// connection thread would not kill the process; PID 1's release build
    /// aborts on panic, which panics the guest kernel).
    fn assert_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("husk-agent died: {status}\n{}", self.log());
        }
        let log = self.log();
        if log.contains("panicked") {
            bail!("husk-agent panicked:\n{log}");
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(TIMEOUT_NS)
}

fn health_ok(client: &AgentClient) -> Result<agent::HealthResponse> {
    let h = client.health(ctx(), &agent::HealthRequest::new())?;
    if h.status.enum_value() != Ok(ServingStatus::SERVING_STATUS_SERVING) {
        bail!("Health status is {:?}", h.status);
    }
    Ok(h)
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

/// The RPCs that wait for the engine's cgroup features, called with an
/// empty request.
fn call_unimplemented(c: &AgentClient) -> Vec<(&'static str, ttrpc::Result<()>)> {
    fn ok<T>(r: ttrpc::Result<T>) -> ttrpc::Result<()> {
        r.map(|_| ())
    }
    vec![
        (
            "PauseContainer",
            ok(c.pause_container(ctx(), &Default::default())),
        ),
        (
            "ResumeContainer",
            ok(c.resume_container(ctx(), &Default::default())),
        ),
        (
            "StatsContainer",
            ok(c.stats_container(ctx(), &Default::default())),
        ),
        (
            "UpdateContainer",
            ok(c.update_container(ctx(), &Default::default())),
        ),
        (
            "ListProcesses",
            ok(c.list_processes(ctx(), &Default::default())),
        ),
        (
            "GetOOMEvent",
            ok(c.get_oom_event(ctx(), &Default::default())),
        ),
    ]
}

#[test]
fn other_rpcs_answer_unimplemented_naming_themselves() -> Result<()> {
    let mut agent = Agent::start("unimpl")?;
    let client = agent.client()?;
    let results = call_unimplemented(&client);
    assert_eq!(results.len(), 6);
    for (rpc, result) in results {
        match result {
            Err(ttrpc::Error::RpcStatus(s)) => {
                assert_eq!(s.code(), Code::UNIMPLEMENTED, "{rpc}: {s:?}");
                assert!(
                    s.message()
                        .starts_with(&format!("{rpc} is not implemented yet")),
                    "{rpc}: message {:?}",
                    s.message()
                );
            }
            other => panic!("{rpc}: expected UNIMPLEMENTED, got {other:?}"),
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
