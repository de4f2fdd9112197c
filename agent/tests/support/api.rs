//! The agent API as its end-to-end tests call it: `husk-agent serve` on
//! Unix sockets ([`super::agent::Agent`]), driven through the generated
//! ttrpc client and the stdio port, as the shim drives the agent in the
//! guest, with busybox containers. The tests need root and say SKIPPED
//! without it. On a cgroup v1/hybrid host the agent test build uses
//! libcontainer's v1 manager (a dev-dependency feature).

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::agent::{
    CreateContainerRequest, ExecProcessRequest, RemoveContainerRequest, SignalProcessRequest,
    StartContainerRequest, StdioSet, StdioStream, WaitProcessRequest, WaitProcessResponse,
};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::ttrpc::{self, Code};

use super::agent::{ctx, ctx_secs, Agent};
use super::busybox_bundle;

pub const OUT: StdioStream = StdioStream::STDIO_STREAM_STDOUT;
pub const ERR: StdioStream = StdioStream::STDIO_STREAM_STDERR;
pub const IN: StdioStream = StdioStream::STDIO_STREAM_STDIN;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: agent API tests need root (namespaces, mounts, cgroups)");
        return false;
    }
    true
}

pub fn rootfs() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("husk-api-rootfs-{}", std::process::id()));
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    busybox_bundle::busybox_rootfs(&dir).expect("busybox rootfs")
}

pub fn spec_json(args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let spec = busybox_bundle::spec(args).expect("spec");
    let mut json = serde_json::to_value(&spec).expect("spec to json");
    edit(&mut json);
    serde_json::to_vec(&json).expect("json")
}

pub fn stdio(stdin: bool, stdout: bool, stderr: bool) -> StdioSet {
    let mut s = StdioSet::new();
    s.stdin = stdin;
    s.stdout = stdout;
    s.stderr = stderr;
    s
}

pub fn create_req(id: &str, spec: Vec<u8>, set: StdioSet) -> CreateContainerRequest {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.into();
    req.oci_spec_json = spec;
    req.rootfs_path = rootfs().display().to_string();
    req.stdio = Some(set).into();
    req
}

pub fn create(c: &AgentClient, id: &str, args: &[&str], set: StdioSet) -> Result<u32> {
    let req = create_req(id, spec_json(args, |_| {}), set);
    Ok(c.create_container(ctx(), &req)
        .with_context(|| format!("create {id}"))?
        .pid)
}

pub fn start(c: &AgentClient, id: &str) -> Result<()> {
    let mut req = StartContainerRequest::new();
    req.container_id = id.into();
    c.start_container(ctx(), &req)
        .with_context(|| format!("start {id}"))?;
    Ok(())
}

pub fn wait(c: &AgentClient, id: &str, exec_id: &str) -> Result<WaitProcessResponse> {
    let mut req = WaitProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    c.wait_process(ctx_secs(60), &req)
        .with_context(|| format!("wait {id}/{exec_id}"))
}

pub fn remove(c: &AgentClient, id: &str, force: bool) -> ttrpc::Result<()> {
    let mut req = RemoveContainerRequest::new();
    req.container_id = id.into();
    req.force = force;
    c.remove_container(ctx(), &req).map(|_| ())
}

pub fn signal(c: &AgentClient, id: &str, exec_id: &str, sig: u32, all: bool) -> ttrpc::Result<()> {
    let mut req = SignalProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.signal = sig;
    req.all = all;
    c.signal_process(ctx(), &req).map(|_| ())
}

pub fn exec(
    c: &AgentClient,
    id: &str,
    exec_id: &str,
    args: &[&str],
    terminal: bool,
    set: StdioSet,
) -> ttrpc::Result<u32> {
    let process = serde_json::json!({
        "args": args,
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/",
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
    });
    let mut req = ExecProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.process_json = serde_json::to_vec(&process).unwrap();
    req.stdio = Some(set).into();
    c.exec_process(ctx(), &req).map(|r| r.pid)
}

pub fn joined(h: thread::JoinHandle<std::io::Result<Vec<u8>>>) -> Result<Vec<u8>> {
    Ok(h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??)
}

/// The code of a ttrpc error status.
pub fn code_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// Create, attach stdout and stderr, start, wait, remove.
pub fn run(
    agent: &Agent,
    c: &AgentClient,
    id: &str,
    args: &[&str],
) -> Result<(Vec<u8>, Vec<u8>, WaitProcessResponse)> {
    create(c, id, args, stdio(false, true, true))?;
    let out = agent.read_stream(id, "", OUT)?;
    let err = agent.read_stream(id, "", ERR)?;
    start(c, id)?;
    let status = wait(c, id, "")?;
    // WaitProcess answered: both streams must already be complete.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(out.is_finished() && err.is_finished()) {
        if Instant::now() > deadline {
            bail!("WaitProcess answered before the output streams were closed");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let (out, err) = (joined(out)?, joined(err)?);
    remove(c, id, false)?;
    Ok((out, err, status))
}

/// The container's cgroup dirs (`husk/<id>`) in any hierarchy.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        hierarchies.push(e.path());
    }
    for h in hierarchies {
        let p = h.join("husk").join(id);
        if p.exists() {
            found.push(p);
        }
    }
    found
}
