//! The agent's state: the sandbox's containers, their processes, and the
//! operations the RPCs map to.
//!
//! Locking: the container map's lock is held only to look an entry up or
//! change the map; each container's libcontainer handle has its own lock,
//! held by start, signal, exec and remove; a process's exit status and
//! streams are behind `Arc`s of their own, so WaitProcess blocks holding
//! no lock another RPC needs.

mod pod_spec;
pub mod resources;
pub mod restored;
pub mod setup;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use husk_protocol::agent::{CreateSandboxRequest, StdioSet, UpdateNetworkRequest};
use oci_spec::runtime::{Process, RootBuilder, Spec};

use self::setup::{SetupError, Target};
use crate::container::cgroups::{self as cg, CgroupError, OomMonitor};
use crate::container::{self, Container, Engine, ExitCell, Exited};
use crate::network::{self, NetworkError};
use crate::reaper::Reaper;
use crate::stdio::slots::AttachError;
use crate::stdio::{AttachTarget, ProcessIo, StdioError};
use crate::sys;
use tracing::{debug, info, warn};

/// Longest container or exec id accepted.
const MAX_ID_LEN: usize = 256;

/// Largest WriteStdin payload (agent.proto: at most 1 MiB per call).
pub const MAX_STDIN_WRITE: usize = 1 << 20;

/// Why an operation failed; [`SandboxError::kind`] says whose fault.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("Container {0:?} not found")]
    ContainerNotFound(String),
    #[error("Process {exec_id:?} not found in container {id:?}")]
    ExecNotFound { id: String, exec_id: String },
    #[error("Container {0:?} already exists")]
    ContainerExists(String),
    #[error("Process {exec_id:?} already exists in container {id:?}")]
    ExecExists { id: String, exec_id: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("Malformed {what} JSON")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("Stdio of {id:?}/{exec_id:?}")]
    Stdin {
        id: String,
        exec_id: String,
        #[source]
        source: AttachError,
    },
    #[error(transparent)]
    Container(#[from] container::Error),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("Cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub use crate::container::ErrorKind;

impl SandboxError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::ContainerNotFound(_) | Self::ExecNotFound { .. } => ErrorKind::NotFound,
            Self::ContainerExists(_) | Self::ExecExists { .. } => ErrorKind::AlreadyExists,
            Self::InvalidArgument(_) | Self::Json { .. } => ErrorKind::InvalidArgument,
            Self::Setup(SetupError::Invalid { .. }) => ErrorKind::InvalidArgument,
            Self::Network(e) if e.is_invalid_argument() => ErrorKind::InvalidArgument,
            Self::Network(NetworkError::NoSuchMac { .. }) => ErrorKind::NotFound,
            Self::Network(
                NetworkError::AmbiguousMac { .. } | NetworkError::HostNamespace { .. },
            ) => ErrorKind::FailedPrecondition,
            // Stdin not declared or already closed.
            Self::FailedPrecondition(_) | Self::Stdin { .. } => ErrorKind::FailedPrecondition,
            Self::Cgroup(e) => e.kind(),
            Self::Container(e) => e.kind(),
            _ => ErrorKind::Internal,
        }
    }
}

type Result<T> = std::result::Result<T, SandboxError>;

/// A new process's standard streams before it exists: with a terminal, nothing yet (the
/// terminal comes with the process); otherwise the pipes (the agent's side and the
/// process's).
fn process_stdio(
    terminal: bool,
    stdio: &StdioSet,
) -> Result<(Option<ProcessIo>, container::ProcessStdio)> {
    if terminal {
        return Ok((None, container::ProcessStdio::default()));
    }
    let (io, child) = ProcessIo::pipes(stdio)?;
    Ok((Some(io), child))
}

/// The agent's side of a spawned process's streams: the pipes made before, or its
/// terminal's master.
fn finish_stdio(
    pipes: Option<ProcessIo>,
    stdio: &StdioSet,
    spawned: &container::Spawned,
    what: &str,
) -> Result<ProcessIo> {
    match (pipes, &spawned.pty_master) {
        (Some(io), _) => Ok(io),
        (None, Some(master)) => Ok(ProcessIo::terminal(stdio, master, spawned.exit.clone())?),
        (None, None) => Err(SandboxError::FailedPrecondition(format!(
            "The {what} has a terminal but none was received"
        ))),
    }
}

/// One process of a container: its pid, exit status and streams.
#[derive(Debug)]
pub struct Proc {
    pub pid: i32,
    pub exit: Arc<ExitCell>,
    pub io: Arc<ProcessIo>,
    /// The terminal's master, for TtyWinResize.
    pub tty: Option<std::fs::File>,
}

impl Proc {
    /// Waits for the exit and the end of the attached output streams.
    pub fn wait(&self) -> Exited {
        self.io.wait(&self.exit)
    }
}

/// A container and its processes.
#[derive(Debug)]
struct Entry {
    id: String,
    /// libcontainer's handle; `None` once removed.
    container: Mutex<Option<Container>>,
    init: Arc<Proc>,
    started: AtomicBool,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, Option<Container>> {
        self.container
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Proc>>> {
        self.execs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn running(&self) -> bool {
        self.started.load(Ordering::SeqCst) && self.init.exit.get().is_none()
    }
}

/// The pod's name and address, for /etc/hosts.
#[derive(Debug, Default)]
struct HostsInfo {
    hostname: Option<String>,
    address: Option<std::net::IpAddr>,
}

/// The whole sandbox: engine, containers, set-up.
pub struct Sandbox {
    engine: Engine,
    target: Target,
    containers: Mutex<HashMap<String, Arc<Entry>>>,
    /// CreateContainer runs one at a time, so an id is checked and taken
    /// atomically.
    create_lock: Mutex<()>,
    shared_mounts: Mutex<Vec<PathBuf>>,
    /// UpdateNetwork runs one at a time.
    network_lock: Mutex<()>,
    /// What /etc/hosts says: CreateSandbox's hostname, UpdateNetwork's
    /// first address.
    hosts: Mutex<HostsInfo>,
    /// OOM kills in any container, for GetOOMEvent.
    oom: OomMonitor,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("engine", &self.engine)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(SandboxError::InvalidArgument(format!(
            "The {what} is empty"
        )));
    }
    if id.len() > MAX_ID_LEN || id.contains(['/', '\0']) || id == "." || id == ".." {
        return Err(SandboxError::InvalidArgument(format!(
            "Invalid {what} {id:?}: at most {MAX_ID_LEN} bytes, no '/' or NUL"
        )));
    }
    Ok(())
}

impl Sandbox {
    /// A sandbox whose engine keeps its state under `root`, with exit
    /// statuses from `reaper`. `target` says where CreateSandbox acts.
    pub fn new(root: &Path, reaper: Arc<Reaper>, target: Target) -> Result<Self> {
        Ok(Self {
            engine: Engine::with_reaper(root, reaper)?,
            target,
            containers: Mutex::new(HashMap::new()),
            create_lock: Mutex::new(()),
            shared_mounts: Mutex::new(Vec::new()),
            network_lock: Mutex::new(()),
            hosts: Mutex::new(HostsInfo::default()),
            oom: OomMonitor::start(cg::oom::DEFAULT_INTERVAL)?,
        })
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxError::ContainerNotFound(id.to_string()))
    }

    /// The process named by (container, exec); an empty exec id is the init.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Proc>> {
        let entry = self.entry(id)?;
        if exec_id.is_empty() {
            return Ok(entry.init.clone());
        }
        let proc = entry.execs().get(exec_id).cloned();
        proc.ok_or_else(|| SandboxError::ExecNotFound {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
        })
    }

    /// Runs `f` on a container's engine handle, under its lock (for the
    /// cgroup RPCs: `Container::cgroup`, `pause`, `resume`, `pid`).
    pub fn with_container<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> T) -> Result<T> {
        let entry = self.entry(id)?;
        let mut guard = entry.lock();
        let container = guard
            .as_mut()
            .ok_or_else(|| SandboxError::ContainerNotFound(id.to_string()))?;
        Ok(f(container))
    }

    /// Ids of the containers.
    pub fn container_ids(&self) -> Vec<String> {
        lock(&self.containers).keys().cloned().collect()
    }

    /// CreateSandbox: hostname, DNS, /etc/hosts, sysctls, shared mounts.
    pub fn setup(&self, req: &CreateSandboxRequest) -> Result<()> {
        info!("Setting up sandbox {:?}", req.sandbox_id);
        if !req.hostname.is_empty() {
            setup::check_hostname(&req.hostname)?;
        }
        if let Some(dns) = req.dns.as_ref() {
            setup::resolv_conf(dns)?;
        }
        for m in &req.shared_mounts {
            setup::check_destination(&m.destination)?;
        }
        if !req.hostname.is_empty() {
            setup::set_hostname(&self.target, &req.hostname)?;
        }
        if let Some(dns) = req.dns.as_ref() {
            setup::set_dns(&self.target, dns)?;
        }
        self.update_hosts(|h| {
            if !req.hostname.is_empty() {
                h.hostname = Some(req.hostname.clone());
            }
        })?;
        setup::set_sysctls(&self.target, req.sysctls.iter())?;
        let mounted = setup::mount_shared(&self.target, &req.shared_mounts)?;
        lock(&self.shared_mounts).extend(mounted);
        Ok(())
    }

    /// UpdateNetwork: checks the whole request, then sets up the links and
    /// routes (see [`network`]). On the host (`husk-agent serve`) only in a
    /// network namespace of its own, never the host's.
    pub fn update_network(&self, req: &UpdateNetworkRequest) -> Result<()> {
        let plan = network::plan(req).map_err(NetworkError::from)?;
        if let Target::Host(_) = self.target {
            network::check_own_namespace()?;
        }
        let _one_at_a_time = lock(&self.network_lock);
        info!(
            "Updating the network: {} interface(s), {} route(s)",
            plan.interfaces.len(),
            plan.routes.len()
        );
        network::apply(&plan)?;
        self.update_hosts(|h| h.address = plan.first_address())
    }

    /// Changes what /etc/hosts says, and rewrites it.
    fn update_hosts(&self, change: impl FnOnce(&mut HostsInfo)) -> Result<()> {
        let mut hosts = lock(&self.hosts);
        change(&mut hosts);
        setup::set_hosts(&self.target, hosts.hostname.as_deref(), hosts.address)?;
        Ok(())
    }

    /// CreateContainer.
    pub fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &str,
        terminal: bool,
        stdio: &StdioSet,
    ) -> Result<i32> {
        check_id("container id", id)?;
        let mut spec: Spec =
            serde_json::from_slice(spec_json).map_err(|source| SandboxError::Json {
                what: "OCI runtime spec",
                source,
            })?;
        let rootfs = if rootfs.is_empty() {
            // Without rootfs_path the spec's root.path is used.
            let root = spec.root().as_ref().ok_or_else(|| {
                SandboxError::InvalidArgument(
                    "No root: rootfs_path is empty and the spec has no root.path".into(),
                )
            })?;
            root.path().clone()
        } else {
            PathBuf::from(rootfs)
        };
        if !rootfs.is_absolute() {
            return Err(SandboxError::InvalidArgument(format!(
                "The rootfs path {} is not absolute",
                rootfs.display()
            )));
        }
        if spec.root().is_none() {
            let root = RootBuilder::default()
                .path(&rootfs)
                .build()
                .map_err(|e| SandboxError::InvalidArgument(e.to_string()))?;
            spec.set_root(Some(root));
        }
        let mut process = spec
            .process()
            .clone()
            .ok_or(container::SpecError::MissingProcess)
            .map_err(container::Error::from)?;
        let terminal = terminal || process.terminal().unwrap_or(false);
        process.set_terminal(Some(terminal));
        spec.set_process(Some(process));

        let _create = lock(&self.create_lock);
        if lock(&self.containers).contains_key(id) {
            return Err(SandboxError::ContainerExists(id.to_string()));
        }
        self.fit_to_pod(id, &mut spec)?;
        let (pipes, child) = process_stdio(terminal, stdio)?;
        let building = std::time::Instant::now();
        let (container, spawned) = self.engine.create_with_stdio(id, spec, &rootfs, child)?;
        let built = building.elapsed();
        let io = finish_stdio(pipes, stdio, &spawned, "container")?;
        let pid = spawned.pid;
        let entry = Arc::new(Entry {
            id: id.to_string(),
            container: Mutex::new(Some(container)),
            init: Arc::new(Proc {
                pid,
                exit: spawned.exit,
                io: Arc::new(io),
                tty: spawned.pty_master,
            }),
            started: AtomicBool::new(false),
            execs: Mutex::new(HashMap::new()),
        });
        lock(&self.containers).insert(id.to_string(), entry);
        self.watch_oom(id);
        info!("Created container {id} (init pid {pid}, built in {built:?})");
        Ok(pid)
    }

    /// StartContainer.
    pub fn start_container(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let mut guard = entry.lock();
        let container = guard
            .as_mut()
            .ok_or_else(|| SandboxError::ContainerNotFound(id.to_string()))?;
        if entry.started.load(Ordering::SeqCst) {
            return Err(SandboxError::FailedPrecondition(format!(
                "Container {id:?} was already started"
            )));
        }
        if entry.init.exit.get().is_some() {
            return Err(SandboxError::FailedPrecondition(format!(
                "The init of container {id:?} has already exited"
            )));
        }
        container.start()?;
        entry.started.store(true, Ordering::SeqCst);
        info!("Started container {id}");
        Ok(())
    }

    /// RemoveContainer: a running container only with `force`.
    pub fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let entry = self.entry(id)?;
        let mut guard = entry.lock();
        if guard.is_none() {
            return Err(SandboxError::ContainerNotFound(id.to_string()));
        }
        if entry.running() && !force {
            return Err(SandboxError::FailedPrecondition(format!(
                "Container {id:?} is running: stop it first, or remove with force"
            )));
        }
        if let Some(container) = guard.take() {
            // Reads the counter a last time: a kill just before is still reported.
            self.oom.unwatch(id);
            container.delete()?;
        }
        drop(guard);
        // Remove the entry only if it is still this one.
        let mut map = lock(&self.containers);
        if map.get(id).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            map.remove(id);
        }
        info!("Removed container {id}");
        Ok(())
    }

    /// ExecProcess.
    pub fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: &StdioSet,
    ) -> Result<i32> {
        check_id("exec id", exec_id)?;
        let process: Process =
            serde_json::from_slice(process_json).map_err(|source| SandboxError::Json {
                what: "OCI process",
                source,
            })?;
        container::validate_process(&process).map_err(container::Error::from)?;
        let terminal = process.terminal().unwrap_or(false);
        let entry = self.entry(id)?;
        let guard = entry.lock();
        let container = guard
            .as_ref()
            .ok_or_else(|| SandboxError::ContainerNotFound(id.to_string()))?;
        if !entry.running() {
            return Err(SandboxError::FailedPrecondition(format!(
                "Container {id:?} is not running: cannot exec into it"
            )));
        }
        if entry.execs().contains_key(exec_id) {
            return Err(SandboxError::ExecExists {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
            });
        }
        let (pipes, child) = process_stdio(terminal, stdio)?;
        let spawned = self.engine.exec(container, &process, child)?;
        let io = finish_stdio(pipes, stdio, &spawned, "process")?;
        let pid = spawned.pid;
        entry.execs().insert(
            exec_id.to_string(),
            Arc::new(Proc {
                pid,
                exit: spawned.exit,
                io: Arc::new(io),
                tty: spawned.pty_master,
            }),
        );
        info!("Exec {exec_id} in container {id}: pid {pid}");
        Ok(pid)
    }

    /// SignalProcess.
    pub fn signal_process(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let signal = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| SandboxError::InvalidArgument(format!("Invalid signal {signal}")))?;
        let entry = self.entry(id)?;
        if exec_id.is_empty() || all {
            let proc = self.process(id, exec_id)?;
            if !all && proc.exit.get().is_some() {
                return Err(SandboxError::FailedPrecondition(format!(
                    "The init of container {id:?} has already exited"
                )));
            }
            let mut guard = entry.lock();
            let container = guard
                .as_mut()
                .ok_or_else(|| SandboxError::ContainerNotFound(id.to_string()))?;
            container.signal_all(signal, all)?;
            return Ok(());
        }
        let proc = self.process(id, exec_id)?;
        // Hold the container lock so the container is not removed (and
        // the pid reaped and reused) meanwhile.
        let _guard = entry.lock();
        if proc.exit.get().is_some() {
            return Err(SandboxError::FailedPrecondition(format!(
                "Process {exec_id:?} of container {id:?} has already exited"
            )));
        }
        // SAFETY: kill() takes plain integers.
        if unsafe { libc::kill(proc.pid, signal) } != 0 {
            return Err(SandboxError::Io {
                what: format!("signal process {exec_id:?}"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// WriteStdin.
    pub fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<usize> {
        if data.len() > MAX_STDIN_WRITE {
            return Err(SandboxError::InvalidArgument(format!(
                "WriteStdin of {} bytes: at most {MAX_STDIN_WRITE} per call",
                data.len()
            )));
        }
        let proc = self.process(id, exec_id)?;
        proc.io
            .stdin
            .write(data)
            .map_err(|source| SandboxError::Stdin {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
                source,
            })
    }

    /// CloseStdin.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let proc = self.process(id, exec_id)?;
        proc.io.stdin.close().map_err(|source| SandboxError::Stdin {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            source,
        })
    }

    /// TtyWinResize.
    pub fn resize_tty(&self, id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<()> {
        let (Ok(rows), Ok(columns)) = (u16::try_from(rows), u16::try_from(columns)) else {
            return Err(SandboxError::InvalidArgument(format!(
                "Terminal size {rows}x{columns} is over 65535"
            )));
        };
        let proc = self.process(id, exec_id)?;
        let tty = proc.tty.as_ref().ok_or_else(|| {
            SandboxError::FailedPrecondition(format!(
                "Process {exec_id:?} of container {id:?} has no terminal"
            ))
        })?;
        sys::set_window_size(tty, rows, columns).map_err(|source| SandboxError::Io {
            what: "set the terminal size".into(),
            source,
        })
    }

    /// DestroySandbox's first half: every container stopped (SIGTERM, then
    /// SIGKILL after `timeout`) and removed, shared mounts unmounted.
    pub fn destroy(&self, timeout: Duration) {
        let entries: Vec<Arc<Entry>> = lock(&self.containers).values().cloned().collect();
        if !timeout.is_zero() {
            for entry in &entries {
                if entry.running() {
                    if let Some(c) = entry.lock().as_mut() {
                        let _ = c.signal_all(libc::SIGTERM, true);
                    }
                }
            }
            // One deadline for all: the timeout is the sandbox's, not each
            // container's.
            let deadline = std::time::Instant::now() + timeout;
            for entry in &entries {
                if entry.running() {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    entry.init.exit.wait_timeout(left);
                }
            }
        }
        for entry in entries {
            if let Err(e) = self.remove_container(&entry.id, true) {
                warn!(
                    "Cannot remove container {}: {}",
                    entry.id,
                    husk_errors::chain(&e)
                );
            }
        }
        let mounts = std::mem::take(&mut *lock(&self.shared_mounts));
        setup::unmount_all(&mounts);
        sys::sync();
        debug!("Sandbox destroyed");
    }

    /// SetGuestTime: the guest's clock; on the host the clock is left alone.
    pub fn set_time(&self, sec: i64, nsec: u32) -> Result<()> {
        restored::check_time(sec, nsec)?;
        match self.target {
            Target::Guest => {
                sys::set_realtime_clock(sec, nsec).map_err(|source| SandboxError::Io {
                    what: "set the clock".into(),
                    source,
                })
            }
            Target::Host(_) => {
                info!("Not setting the host's clock to {sec}.{nsec:09}");
                Ok(())
            }
        }
    }
}

impl AttachTarget for Sandbox {
    fn lookup(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> std::result::Result<(Arc<ProcessIo>, Arc<ExitCell>), String> {
        self.process(container_id, exec_id)
            .map(|p| (p.io.clone(), p.exit.clone()))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests;
