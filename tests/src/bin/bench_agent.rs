//! Container start benchmark on the host: create+start+wait(+remove) of
//! busybox `true` through `husk-agent serve` (ttrpc over a Unix socket)
//! against `runc run` of the same bundle, interleaved, 20 runs each by
//! default. Prints medians and their ratio; asserts nothing about time.
//! Needs root, /bin/busybox and runc (`apt-get install -y runc`).
//!
//! Usage: husk-bench-agent [--runs N] [--agent PATH] [--runc PATH]
//! (the agent defaults to `HUSK_AGENT`, else target/release/husk-agent,
//! else target/debug/husk-agent). On a cgroup v1/hybrid host build the
//! agent with `cargo build --release -p husk-agent --features cgroup-v1`.

use husk_tests::{median, ms};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::agent;
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::ttrpc;
use husk_tests::busybox_bundle::{self, SpecOptions};
use husk_tests::guest::TempDir;
use husk_tests::workspace_root;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(30_000_000_000)
}

/// The same minimal spec for both runtimes.
fn spec_json() -> serde_json::Value {
    busybox_bundle::spec(
        &["true"],
        &SpecOptions {
            hostname: "bench",
            network_namespace: true,
            ..Default::default()
        },
    )
}

fn bundle(dir: &Path) -> Result<PathBuf> {
    let rootfs = busybox_bundle::rootfs(dir, &["true"])?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec_json())?)?;
    Ok(rootfs)
}

fn agent_bin(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("HUSK_AGENT").map(PathBuf::from))
        .unwrap_or_else(|| {
            let release = workspace_root().join("target/release/husk-agent");
            if release.exists() {
                release
            } else {
                workspace_root().join("target/debug/husk-agent")
            }
        })
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(bin: &Path, dir: &Path) -> Result<(Agent, AgentClient)> {
    let sock = dir.join("agent.sock");
    let child = Command::new(bin)
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .arg("--root")
        .arg(dir.join("agent-root"))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log"))?)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let agent = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(c) = ttrpc::Client::connect(&format!("unix://{}", sock.display())) {
            let client = AgentClient::new(c);
            if client.health(ctx(), &agent::HealthRequest::new()).is_ok() {
                return Ok((agent, client));
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not serve within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One container through the agent; returns (create+start+wait, with remove).
fn agent_run(
    c: &AgentClient,
    id: &str,
    spec: &[u8],
    rootfs: &Path,
) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    let mut create = agent::CreateContainerRequest::new();
    create.container_id = id.into();
    create.oci_spec_json = spec.to_vec();
    create.rootfs_path = rootfs.display().to_string();
    c.create_container(ctx(), &create)
        .context("CreateContainer")?;
    let mut s = agent::StartContainerRequest::new();
    s.container_id = id.into();
    c.start_container(ctx(), &s).context("StartContainer")?;
    let mut w = agent::WaitProcessRequest::new();
    w.container_id = id.into();
    let status = c.wait_process(ctx(), &w).context("WaitProcess")?;
    let waited = start.elapsed();
    if status.exit_status != 0 {
        bail!("true exited with {}", status.exit_status);
    }
    let mut r = agent::RemoveContainerRequest::new();
    r.container_id = id.into();
    c.remove_container(ctx(), &r).context("RemoveContainer")?;
    Ok((waited, start.elapsed()))
}

fn runc_run(runc: &Path, root: &Path, bundle: &Path, id: &str) -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new(runc)
        .arg("--root")
        .arg(root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("cannot run {}", runc.display()))?;
    let took = start.elapsed();
    if !status.success() {
        bail!("runc run {id}: {status}");
    }
    Ok(took)
}

fn main() -> Result<()> {
    let mut runs = 20usize;
    let mut agent_path = None;
    let mut runc = PathBuf::from("runc");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--runs" => runs = value()?.parse().context("--runs")?,
            "--agent" => agent_path = Some(PathBuf::from(value()?)),
            "--runc" => runc = PathBuf::from(value()?),
            other => bail!("unknown argument {other:?}; usage: husk-bench-agent [--runs N] [--agent PATH] [--runc PATH]"),
        }
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("husk-bench-agent needs root (namespaces, mounts, cgroups)");
    }
    let dir = TempDir::new("bench-agent")?;
    let rootfs = bundle(dir.path())?;
    let spec = serde_json::to_vec(&spec_json())?;
    let bin = agent_bin(agent_path);
    let (_agent, client) = start_agent(&bin, dir.path())?;
    let runc_root = dir.path().join("runc-root");

    // One warm-up of each, not counted (page cache, first cgroup set-up).
    agent_run(&client, "bench-warm", &spec, &rootfs)?;
    runc_run(&runc, &runc_root, dir.path(), "bench-runc-warm")?;

    let mut agent_wait = Vec::new();
    let mut agent_total = Vec::new();
    let mut runc_times = Vec::new();
    let pid = std::process::id();
    for i in 0..runs {
        let (w, t) = agent_run(&client, &format!("bench-{pid}-{i}"), &spec, &rootfs)?;
        agent_wait.push(w);
        agent_total.push(t);
        runc_times.push(runc_run(
            &runc,
            &runc_root,
            dir.path(),
            &format!("bench-runc-{pid}-{i}"),
        )?);
    }
    let (aw, at, r) = (
        median(&agent_wait),
        median(&agent_total),
        median(&runc_times),
    );
    println!(
        "busybox true, {runs} runs each, interleaved; agent {}",
        bin.display()
    );
    println!(
        "  husk-agent create+start+wait        median {:8.2} ms",
        ms(aw)
    );
    println!(
        "  husk-agent create+start+wait+remove median {:8.2} ms",
        ms(at)
    );
    println!(
        "  runc run (create+start+wait+delete) median {:8.2} ms",
        ms(r)
    );
    println!(
        "  ratio agent/runc: {:.2} (with remove), {:.2} (without)",
        at.as_secs_f64() / r.as_secs_f64(),
        aw.as_secs_f64() / r.as_secs_f64()
    );
    Ok(())
}
