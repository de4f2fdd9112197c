//! The processes of a pod's VM: virtiofsd's command line, husk-vmm's and virtiofsd's exits
//! as the reaper reports them, signals, and the agent's first answer. Shared by pods and
//! the template VM ([`crate::template`]).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use husk_protocol::agent::{self, ServingStatus};
use husk_protocol::agent_client::AgentClient;
use husk_protocol::{hybrid_vsock, ttrpc, AGENT_VSOCK_PORT};

use crate::config::Config;

/// Exits of the pod's helper processes, as the reaper reported them.
#[derive(Default)]
pub(crate) struct Exits {
    codes: Mutex<HashMap<i32, i32>>,
    cond: Condvar,
}

impl Exits {
    pub(crate) fn record(&self, pid: i32, code: i32) {
        self.codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, code);
        self.cond.notify_all();
    }

    pub(crate) fn get(&self, pid: i32) -> Option<i32> {
        self.codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .copied()
    }

    pub(crate) fn wait(&self, pid: i32, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(c) = codes.get(&pid) {
                return Some(*c);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            codes = self
                .cond
                .wait_timeout(codes, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// How a reaped child ended, for messages: the reaper gives 128+N for signal N.
pub fn describe_exit(code: i32) -> String {
    if code == 128 + libc::SIGSYS {
        // husk-vmm's (and virtiofsd's) seccomp filters kill with SIGSYS.
        "killed by SIGSYS: a seccomp violation (a system call outside its allow-list; \
         the kernel log, `dmesg | grep type=1326`, names the call)"
            .to_owned()
    } else if code > 128 {
        format!("killed by signal {}", code - 128)
    } else {
        format!("exited with status {code}")
    }
}

/// The last `max` bytes of the file at `path`, headed by its name, for messages.
pub(crate) fn tail(path: &Path, max: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let start = s.len().saturating_sub(max);
    let start = (start..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    format!("--- {} ---\n{}", path.display(), &s[start..])
}

/// virtiofsd serving `shared` on `socket`.
pub(crate) fn virtiofsd_command(config: &Config, socket: &Path, shared: &Path) -> Command {
    let mut c = Command::new(&config.virtiofsd);
    c.arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", shared.display()))
        // Each container's rootfs is a mount inside the shared dir. Announced as
        // submounts, the guest kernel gives each its own FUSE superblock, which it tears
        // down when the container's mount namespace goes, racing the container's
        // asynchronous FUSE_RELEASEs: 6.1's fuse_release_end() then iput()s a freed inode
        // (a general protection fault in the guest's virtio-fs completion worker, which
        // took vsock replies down with it: WaitProcess never answered). Without submounts
        // the rootfs is a plain directory of the one virtio-fs superblock that lives as
        // long as the VM.
        .arg("--no-announce-submounts")
        .args(&config.virtiofsd_args);
    c
}

pub(crate) fn kill(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) with plain integers; a gone process gives ESRCH.
        unsafe { libc::kill(pid, sig) };
    }
}

pub(crate) fn rpc_ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX))
}

/// How often the shim probes a starting guest's agent with [`agent_health`]. A refused
/// probe costs the guest one reset packet; the pause is what a pod waits, half of it on
/// average, after its agent starts listening.
pub(crate) const HEALTH_POLL: Duration = Duration::from_millis(20);

/// A client of the agent behind husk-vmm's vsock socket `vsock` once it answers Health
/// as serving; the error says how far it got.
pub(crate) fn agent_health(vsock: &Path) -> Result<AgentClient, String> {
    let s = hybrid_vsock::connect(vsock, AGENT_VSOCK_PORT, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let client = AgentClient::new(s).map_err(|e| format!("agent client: {e}"))?;
    let h = client
        .health(
            rpc_ctx(Duration::from_secs(10)),
            &agent::HealthRequest::new(),
        )
        .map_err(|e| format!("Health: {e}"))?;
    if h.status.enum_value() != Ok(ServingStatus::SERVING_STATUS_SERVING) {
        return Err(format!("Health answered {:?}", h.status));
    }
    Ok(client)
}
