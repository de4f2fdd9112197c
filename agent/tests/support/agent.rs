//! A `husk-agent serve` process for tests, its ttrpc client and its stdio
//! port.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::agent::{self, ServingStatus, StdioStream};
use husk_protocol::agent_ttrpc::AgentClient;
use husk_protocol::{stdio_attach, ttrpc};

/// A `husk-agent serve` process, killed when dropped.
pub struct Agent {
    pub child: Child,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub stdio_sock: PathBuf,
    pub forward_sock: PathBuf,
}

impl Agent {
    /// Starts an agent in a fresh `<tmp>/husk-api-<name>-<pid>`.
    pub fn start(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("husk-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Self::start_in(dir)
    }

    /// Starts an agent in a fresh `<tmp>/husk-api-<name>-<pid>` and a new
    /// network namespace of its own (only a down `lo` in it), which goes
    /// away with the agent; tests reach it through `/proc/<pid>/ns/net`.
    pub fn start_in_new_netns(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("husk-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Self::start_with(dir, true)
    }

    /// Starts an agent listening on `<dir>/agent.sock`, its state under
    /// `<dir>/root`.
    pub fn start_in(dir: PathBuf) -> Result<Self> {
        Self::start_with(dir, false)
    }

    fn start_with(dir: PathBuf, new_netns: bool) -> Result<Self> {
        let sock = dir.join("agent.sock");
        let stdio_sock = dir.join("agent.sock.stdio");
        let forward_sock = dir.join("agent.sock.forward");
        // Appended to, so a second agent in the same dir keeps the first's log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk-agent"));
        if new_netns {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the child only calls unshare, which
            // is async-signal-safe and touches no memory of ours.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--root")
            .arg(dir.join("root"))
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .context("Failed to start husk-agent serve")?;
        let mut agent = Agent {
            child,
            dir,
            sock,
            stdio_sock,
            forward_sock,
        };
        agent.wait_listening()?;
        Ok(agent)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("husk-agent serve exited early: {status}\n{}", self.log());
            }
            if UnixStream::connect(&self.sock).is_ok()
                && self.stdio_sock.exists()
                && self.forward_sock.exists()
            {
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

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn client(&self) -> Result<AgentClient> {
        let addr = format!("unix://{}", self.sock.display());
        let client = ttrpc::Client::connect(&addr).context("Failed to connect")?;
        Ok(AgentClient::new(client))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Alive, and no thread of it panicked (in a debug build a panicking
    /// connection thread would not kill the process; PID 1's release build
    /// aborts on panic, which panics the guest kernel).
    pub fn assert_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("husk-agent died: {status}\n{}", self.log());
        }
        let log = self.log();
        if log.contains("panicked") {
            bail!("husk-agent panicked:\n{log}");
        }
        Ok(())
    }

    /// Opens a stdio stream; fails with the agent's refusal message.
    pub fn attach(&self, id: &str, exec_id: &str, stream: StdioStream) -> Result<UnixStream> {
        let s = UnixStream::connect(&self.stdio_sock).context("connect to the stdio port")?;
        match stdio_attach::attach(s, id, exec_id, stream, Duration::from_secs(30)) {
            Ok(s) => Ok(s),
            // The agent's refusal alone, as the tests match on it.
            Err(stdio_attach::AttachError::Refused { reason, .. }) => bail!("{reason}"),
            Err(e) => Err(e.into()),
        }
    }

    /// Attaches an output stream and reads it to its end on a thread.
    pub fn read_stream(
        &self,
        id: &str,
        exec_id: &str,
        stream: StdioStream,
    ) -> Result<std::thread::JoinHandle<std::io::Result<Vec<u8>>>> {
        let mut s = self.attach(id, exec_id, stream)?;
        Ok(std::thread::spawn(move || {
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).map(|_| buf)
        }))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("agent log:\n{}", self.log());
        }
    }
}

/// A context with a timeout.
pub fn ctx_secs(secs: i64) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(secs * 1_000_000_000)
}

pub fn ctx() -> ttrpc::context::Context {
    ctx_secs(30)
}

pub fn health_ok(client: &AgentClient) -> Result<agent::HealthResponse> {
    let h = client.health(ctx(), &agent::HealthRequest::new())?;
    if h.status.enum_value() != Ok(ServingStatus::SERVING_STATUS_SERVING) {
        bail!("Health status is {:?}", h.status);
    }
    Ok(h)
}
