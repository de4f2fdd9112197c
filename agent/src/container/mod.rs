//! The in-guest container engine: an OCI runtime spec and a rootfs
//! directory in, a running container out.
//!
//! Namespaces, mounts, pivot_root, cgroups, capabilities and the exec are
//! youki's `libcontainer`; this module adds what the agent needs around it:
//! spec checks with clear errors ([`spec_validation`]), the process's stdio
//! as the caller makes it ([`ProcessStdio`]; the agent's are `stdio::ProcessIo`,
//! whose bytes all arrive before the exit status), waiting for the
//! container's init as its reaper and exit codes in the 128+N convention
//! ([`exit_status`]), and clean removal.
//!
//! The container's init is re-parented to the agent when libcontainer's
//! intermediate process exits: the agent is PID 1 in the guest, and on the
//! host [`Engine::new`] makes the calling process a child subreaper. A
//! reaper that waits for any child must leave the init pids of live
//! containers to [`Container::wait`].

mod build_process;
pub mod cgroups;
mod exec;
mod exit_cell;
mod exit_status;
pub mod guest_devices;
pub mod seccomp;
mod spec_validation;
mod terminal;

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{RootBuilder, Spec};

pub use self::cgroups::{Cgroup, CgroupError, ContainerStats, OomEvent, OomMonitor};
use self::exec::AgentExecutor;
pub use self::exit_cell::{ExitCell, Exited};
pub use self::exit_status::ExitStatus;
pub use self::spec_validation::{
    check_joined_namespaces, normalize_rootfs_propagation, validate_process, SpecError,
};
use self::terminal::ConsoleSocket;
use crate::reaper::{ChildExit, Reaper, ReaperError};

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid container spec")]
    Spec(#[from] SpecError),
    #[error("Cannot read the container spec {path}")]
    LoadSpec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("Cannot find the container rootfs {path}")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write the container's state under {path}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot set up the container's stdio")]
    Stdio(#[source] io::Error),
    #[error("Cannot set up the terminal")]
    Terminal(#[source] io::Error),
    #[error("Cannot {op} container {id}")]
    Runtime {
        op: &'static str,
        id: String,
        #[source]
        source: Box<LibcontainerError>,
    },
    #[error("Cannot wait for the init of container {id}")]
    Wait {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("Unknown signal {0}")]
    Signal(i32),
    #[error("Cannot make the agent a child subreaper")]
    Subreaper(#[source] io::Error),
    #[error("Cannot register the process with the reaper")]
    Reaper(#[from] ReaperError),
    #[error("Invalid seccomp profile")]
    Seccomp(#[from] seccomp::SeccompError),
    /// libcontainer's build failed in its build process (see
    /// [`build_process`]): the chain of causes, as text, and its kind.
    #[error("{message}")]
    Build { kind: ErrorKind, message: String },
    #[error("Cannot run the container build process")]
    BuildProcess(#[source] io::Error),
}

/// What kind of failure an error is, for the RPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    Internal,
}

impl ErrorKind {
    const ALL: [Self; 5] = [
        Self::NotFound,
        Self::AlreadyExists,
        Self::InvalidArgument,
        Self::FailedPrecondition,
        Self::Internal,
    ];

    fn to_byte(self) -> u8 {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(4) as u8
    }

    fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.get(usize::from(b)).copied()
    }
}

impl Error {
    /// The kind of a container error: a bad spec or request is the
    /// caller's, a container in the wrong state a failed precondition.
    pub fn kind(&self) -> ErrorKind {
        use libcontainer::error::LibcontainerError as L;
        match self {
            Self::Spec(_) | Self::LoadSpec { .. } | Self::Rootfs { .. } | Self::Signal(_) => {
                ErrorKind::InvalidArgument
            }
            Self::Runtime { source, .. } => match **source {
                L::InvalidID(_) | L::InvalidSpec(_) | L::MissingSpec(_) => {
                    ErrorKind::InvalidArgument
                }
                L::Exist => ErrorKind::AlreadyExists,
                L::IncorrectStatus(_) => ErrorKind::FailedPrecondition,
                _ => ErrorKind::Internal,
            },
            Self::Build { kind, .. } => *kind,
            _ => ErrorKind::Internal,
        }
    }
}

/// The process's side of its standard streams; `None` is /dev/null. With
/// a terminal they are ignored: the terminal's slave side is all three.
#[derive(Debug, Default)]
pub struct ProcessStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A process the engine started (a container's init or an exec).
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// Where its exit status arrives.
    pub exit: Arc<ExitCell>,
    /// The master side of its terminal, when the spec asked for one.
    pub pty_master: Option<File>,
}

/// Creates containers; holds where their state lives.
#[derive(Debug)]
pub struct Engine {
    /// libcontainer's per-container state dirs.
    state_dir: PathBuf,
    /// The bundles the engine writes: the caller's spec, rootfs made absolute.
    bundles_dir: PathBuf,
    /// Console sockets, while a terminal is handed over.
    tty_dir: PathBuf,
    /// Who collects exit statuses: a shared reaper (the agent: PID 1 in the
    /// guest, the serve loop on the host) or, without one, `waitpid` on
    /// the pid itself.
    reaper: Option<Arc<Reaper>>,
    /// libcontainer changes the process's working directory while it sets
    /// up a console socket: one build at a time.
    build_lock: Mutex<()>,
    seq: AtomicU64,
}

fn runtime_error(op: &'static str, id: &str, source: LibcontainerError) -> Error {
    Error::Runtime {
        op,
        id: id.to_owned(),
        source: Box::new(source),
    }
}

impl Engine {
    /// An engine keeping its state under `root` (in the guest: a tmpfs
    /// such as /run/husk). Makes the calling process a child subreaper so
    /// it can wait for container inits when it is not PID 1. Exit statuses
    /// are collected with `waitpid` on each pid: for a process with no
    /// other `waitpid(-1)` caller.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::build_engine(root.into(), None)
    }

    /// An engine whose processes' exit statuses come from `reaper` (which
    /// some loop must drive on SIGCHLD).
    pub fn with_reaper(root: impl Into<PathBuf>, reaper: Arc<Reaper>) -> Result<Self, Error> {
        Self::build_engine(root.into(), Some(reaper))
    }

    fn build_engine(root: PathBuf, reaper: Option<Arc<Reaper>>) -> Result<Self, Error> {
        let state_dir = root.join("state");
        let bundles_dir = root.join("bundles");
        let tty_dir = root.join("tty");
        for dir in [&state_dir, &bundles_dir, &tty_dir] {
            fs::create_dir_all(dir).map_err(|source| Error::State {
                path: dir.clone(),
                source,
            })?;
        }
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches
        // no memory of ours.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(Error::Subreaper(io::Error::last_os_error()));
        }
        Ok(Self {
            state_dir,
            bundles_dir,
            tty_dir,
            reaper,
            build_lock: Mutex::new(()),
            seq: AtomicU64::new(0),
        })
    }

    /// Creates a container running `spec` on `rootfs` with the given stdio
    /// (or a terminal, if `process.terminal` is set). Returns it and its
    /// init process.
    pub fn create_with_stdio(
        &self,
        id: &str,
        mut spec: Spec,
        rootfs: &Path,
        stdio: ProcessStdio,
    ) -> Result<(Container, Spawned), Error> {
        spec_validation::validate(&spec)?;
        let rootfs = rootfs.canonicalize().map_err(|source| Error::Rootfs {
            path: rootfs.to_owned(),
            source,
        })?;
        let readonly = spec.root().as_ref().and_then(|r| r.readonly());
        let mut root = RootBuilder::default().path(rootfs);
        if let Some(readonly) = readonly {
            root = root.readonly(readonly);
        }
        spec.set_root(Some(
            root.build()
                .map_err(|e| SpecError::InvalidRoot(e.to_string()))?,
        ));
        let mut cgroup_path = PathBuf::from(format!("/husk/{id}"));
        if let Some(linux) = spec.linux_mut() {
            match linux.cgroups_path() {
                Some(path) => cgroup_path = path.clone(),
                None => {
                    linux.set_cgroups_path(Some(cgroup_path.clone()));
                }
            }
        }
        // libcontainer without libseccomp ignores linux.seccomp: compile it
        // here (a bad profile fails create) and install it before exec.
        let executor = seccomp::prepare(&mut spec)?;

        // Check the id before it becomes a path.
        let builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .validate_id()
            .map_err(|e| runtime_error("create", id, e))?;

        let bundle = self.bundles_dir.join(id);
        if bundle.exists() || self.state_dir.join(id).exists() {
            return Err(runtime_error("create", id, LibcontainerError::Exist));
        }
        let state_err = |source| Error::State {
            path: bundle.clone(),
            source,
        };
        fs::create_dir_all(&bundle).map_err(state_err)?;
        let result = self
            .build(id, builder, &spec, &bundle, stdio, executor.clone())
            .and_then(|(inner, spawned)| {
                // The init holds its copy of the spec now: save the one
                // execs start from without the capability lent for seccomp.
                executor.restore(&mut spec);
                spec.save(bundle.join("config.json"))
                    .map_err(|e| Error::State {
                        path: bundle.clone(),
                        source: io::Error::other(e),
                    })?;
                Ok((inner, spawned))
            });
        match result {
            Ok((inner, spawned)) => Ok((
                Container {
                    id: id.to_owned(),
                    inner,
                    pid: spawned.pid,
                    exit: spawned.exit.clone(),
                    direct_wait: self.reaper.is_none(),
                    bundle: bundle.to_owned(),
                    cgroup_path,
                    removed: false,
                },
                spawned,
            )),
            Err(e) => {
                let _ = fs::remove_dir_all(&bundle);
                let _ = fs::remove_dir_all(self.state_dir.join(id));
                Err(e)
            }
        }
    }

    fn console_socket(&self, terminal: bool) -> Result<Option<ConsoleSocket>, Error> {
        if !terminal {
            return Ok(None);
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.tty_dir.join(format!("{n}.sock"));
        ConsoleSocket::bind(path).map(Some).map_err(Error::Terminal)
    }

    /// Runs `spawn` (which starts a process through libcontainer) so that
    /// its exit status reaches the returned cell, however early it exits.
    /// Runs libcontainer's build (`spawn`, which returns the new process's
    /// pid) in a one-thread child process ([`build_process`]), and watches
    /// the pid for its exit status.
    fn spawn(
        &self,
        spawn: impl FnOnce() -> Result<i32, Error>,
    ) -> Result<(i32, Arc<ExitCell>), Error> {
        let exit = Arc::new(ExitCell::new());
        let _build = self
            .build_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &self.reaper {
            None => Ok((build_process::build_in_child(spawn)?, exit)),
            Some(reaper) => {
                let cell = exit.clone();
                // The reaper waits for nobody while the build process runs
                // (its own children, then itself, are waited for there),
                // and learns the new pid before it can collect its status.
                let pid = reaper.spawn_watched(
                    || build_process::build_in_child(spawn),
                    Box::new(move |child_exit| cell.set(ExitStatus::from(child_exit))),
                )?;
                Ok((pid, exit))
            }
        }
    }

    fn build(
        &self,
        id: &str,
        builder: ContainerBuilder,
        spec: &Spec,
        bundle: &Path,
        stdio: ProcessStdio,
        seccomp: seccomp::SeccompExecutor,
    ) -> Result<(libcontainer::container::Container, Spawned), Error> {
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        spec.save(bundle.join("config.json"))
            .map_err(|e| Error::State {
                path: bundle.to_owned(),
                source: io::Error::other(e),
            })?;
        let console = self.console_socket(terminal)?;
        let (stdin, stdout, stderr) = stdio_or_null(stdio)?;
        let (pid, exit) = self.spawn(|| {
            let inner = builder
                .with_root_path(&self.state_dir)
                .map_err(|e| runtime_error("create", id, e))?
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .with_console_socket(console.as_ref().map(|c| c.path().to_owned()))
                .with_executor(AgentExecutor::new(seccomp))
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| runtime_error("create", id, e))?;
            let pid = inner
                .pid()
                .ok_or_else(|| {
                    runtime_error("create", id, LibcontainerError::Other("no init pid".into()))
                })?
                .as_raw();
            Ok(pid)
        })?;
        // The build process saved the container's state; this process
        // reads it back.
        let loaded = libcontainer::container::Container::load(self.state_dir.join(id));
        let inner = ReapOnError {
            inner: loaded.as_ref().ok().cloned(),
            pid,
            exit: &exit,
            direct_wait: self.reaper.is_none(),
        };
        if let Err(e) = loaded {
            kill_and_wait(pid, self.reaper.is_none(), &exit);
            return Err(runtime_error("load the state of", id, e));
        }
        let pty_master = match console {
            Some(console) => Some(console.receive_master().map_err(Error::Terminal)?),
            None => None,
        };
        let inner = inner.take().ok_or_else(|| {
            runtime_error(
                "create",
                id,
                LibcontainerError::Other("no container".into()),
            )
        })?;
        Ok((
            inner,
            Spawned {
                pid,
                exit,
                pty_master,
            },
        ))
    }

    /// Starts `process` (an OCI runtime spec's process object) in the
    /// running `container`, with the given stdio (or a terminal, if
    /// `process.terminal` is set).
    pub fn exec(
        &self,
        container: &Container,
        process: &oci_spec::runtime::Process,
        stdio: ProcessStdio,
    ) -> Result<Spawned, Error> {
        validate_process(process)?;
        let id = container.id.as_str();
        // An exec'd process runs under the container's seccomp profile.
        let spec_path = container.bundle.join("config.json");
        let spec = Spec::load(&spec_path).map_err(|source| Error::LoadSpec {
            path: spec_path,
            source,
        })?;
        let profile = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let mut process = process.clone();
        let seccomp = seccomp::prepare_process(profile.as_ref(), &mut process)?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let process_path = container.bundle.join(format!("exec-{n}.json"));
        let json = serde_json::to_vec(&process).map_err(|e| Error::State {
            path: process_path.clone(),
            source: io::Error::other(e),
        })?;
        fs::write(&process_path, json).map_err(|source| Error::State {
            path: process_path.clone(),
            source,
        })?;
        let result = self.exec_built(container, &process, &process_path, stdio, seccomp);
        let _ = fs::remove_file(&process_path);
        result.map_err(|e| match e {
            Error::Runtime { op, source, .. } => Error::Runtime {
                op,
                id: id.to_owned(),
                source,
            },
            other => other,
        })
    }

    fn exec_built(
        &self,
        container: &Container,
        process: &oci_spec::runtime::Process,
        process_path: &Path,
        stdio: ProcessStdio,
        seccomp: seccomp::SeccompExecutor,
    ) -> Result<Spawned, Error> {
        let id = container.id.as_str();
        let console = self.console_socket(process.terminal().unwrap_or(false))?;
        let (stdin, stdout, stderr) = stdio_or_null(stdio)?;
        let (pid, exit) = self.spawn(|| {
            let pid = ContainerBuilder::new(id.to_owned(), SyscallType::default())
                .with_root_path(&self.state_dir)
                .map_err(|e| runtime_error("exec in", id, e))?
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .with_console_socket(console.as_ref().map(|c| c.path().to_owned()))
                .with_executor(AgentExecutor::new(seccomp))
                .as_tenant()
                .with_process(Some(process_path))
                .with_detach(true)
                .build()
                .map_err(|e| runtime_error("exec in", id, e))?;
            Ok(pid.as_raw())
        })?;
        let pty_master = match console {
            Some(console) => match console.receive_master() {
                Ok(master) => Some(master),
                Err(e) => {
                    // The process runs without its terminal: end it.
                    kill_and_wait(pid, self.reaper.is_none(), &exit);
                    return Err(Error::Terminal(e));
                }
            },
            None => None,
        };
        Ok(Spawned {
            pid,
            exit,
            pty_master,
        })
    }
}

/// Hands a just-built libcontainer container back, or on an error path
/// deletes it (killing and reaping its init) so nothing is left behind.
struct ReapOnError<'a> {
    inner: Option<libcontainer::container::Container>,
    pid: i32,
    exit: &'a ExitCell,
    direct_wait: bool,
}

impl ReapOnError<'_> {
    fn take(mut self) -> Option<libcontainer::container::Container> {
        self.inner.take()
    }
}

impl Drop for ReapOnError<'_> {
    fn drop(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            let _ = inner.kill(Signal::try_from(9).expect("SIGKILL"), true);
            if self.direct_wait {
                if let Ok(status) = wait_pid(self.pid) {
                    self.exit.set(status);
                }
            } else {
                // The reaper collects it.
                self.exit.wait_timeout(std::time::Duration::from_secs(5));
            }
            let _ = inner.delete(true);
        }
    }
}

fn stdio_or_null(stdio: ProcessStdio) -> Result<(OwnedFd, OwnedFd, OwnedFd), Error> {
    let null = || -> Result<OwnedFd, Error> {
        Ok(File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(Error::Stdio)?
            .into())
    };
    Ok((
        stdio.stdin.map_or_else(null, Ok)?,
        stdio.stdout.map_or_else(null, Ok)?,
        stdio.stderr.map_or_else(null, Ok)?,
    ))
}

/// `waitpid` on one pid until it has ended.
/// Ends a process this engine started and has no container object for,
/// and waits for it (directly, or for the reaper to collect it).
fn kill_and_wait(pid: i32, direct_wait: bool, exit: &ExitCell) {
    // SAFETY: kill() takes plain integers.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    if direct_wait {
        if let Ok(status) = wait_pid(pid) {
            exit.set(status);
        }
    } else {
        exit.wait_timeout(std::time::Duration::from_secs(5));
    }
}

fn wait_pid(pid: i32) -> io::Result<ExitStatus> {
    loop {
        let mut raw = 0;
        // SAFETY: `raw` is a live i32 the kernel writes the status into.
        let r = unsafe { libc::waitpid(pid, &mut raw, 0) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if let Some(status) = ExitStatus::from_wait_status(raw) {
            return Ok(status);
        }
    }
}

impl From<ChildExit> for ExitStatus {
    fn from(exit: ChildExit) -> Self {
        match exit {
            ChildExit::Exited(code) => ExitStatus::Exited(code),
            ChildExit::Signaled { signal, .. } => ExitStatus::Signaled(signal),
        }
    }
}

/// A created container. Remove it with [`Container::delete`].
#[derive(Debug)]
pub struct Container {
    id: String,
    inner: libcontainer::container::Container,
    pid: i32,
    exit: Arc<ExitCell>,
    /// Whether `wait` calls `waitpid` itself (no shared reaper).
    direct_wait: bool,
    bundle: PathBuf,
    cgroup_path: PathBuf,
    /// Set once `delete` has removed it.
    removed: bool,
}

impl Container {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pid of the container's init, as the agent sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The container's cgroup, relative to the cgroup mount (the spec's
    /// `linux.cgroupsPath`, `/husk/<id>` by default).
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup_path
    }

    /// Where the init's exit status arrives.
    pub fn exit_cell(&self) -> Arc<ExitCell> {
        self.exit.clone()
    }

    fn runtime(&self, op: &'static str, source: LibcontainerError) -> Error {
        runtime_error(op, &self.id, source)
    }

    /// Lets the init exec the spec's process.
    pub fn start(&mut self) -> Result<(), Error> {
        self.inner.start().map_err(|e| self.runtime("start", e))
    }

    /// Sends `signal` to the container's init, or with `all` to every
    /// process of the container.
    pub fn signal_all(&mut self, signal: i32, all: bool) -> Result<(), Error> {
        let sig = Signal::try_from(signal).map_err(|_| Error::Signal(signal))?;
        self.inner
            .kill(sig, all)
            .map_err(|e| self.runtime("signal", e))
    }

    /// Sends `signal` to the container's init.
    pub fn signal(&mut self, signal: i32) -> Result<(), Error> {
        self.signal_all(signal, false)
    }

    /// Waits for the init to end and returns its exit status. (Its output is the
    /// caller's: the agent waits for its streams to drain, `stdio::ProcessIo::wait`.)
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        self.reap()
    }

    fn reap(&mut self) -> Result<ExitStatus, Error> {
        if let Some(exited) = self.exit.get() {
            return Ok(exited.status);
        }
        if !self.direct_wait {
            return Ok(self.exit.wait().status);
        }
        let status = wait_pid(self.pid).map_err(|source| Error::Wait {
            id: self.id.clone(),
            source,
        })?;
        self.exit.set(status);
        Ok(status)
    }

    /// Kills what is left of the container, reaps its init and removes its
    /// cgroup, state and bundle. Output streams stay readable to their end.
    pub fn delete(mut self) -> Result<(), Error> {
        self.remove()
    }

    fn remove(&mut self) -> Result<(), Error> {
        if self.removed {
            return Ok(());
        }
        // Created-but-not-started, running, and exited with execs still
        // running all end here: SIGKILL to every process of the container
        // (its cgroup), then reap the init.
        if let Err(e) = self.inner.kill(Signal::try_from(9).expect("SIGKILL"), true) {
            if self.exit.get().is_none() && self.inner.can_kill() {
                return Err(self.runtime("kill", e));
            }
        }
        self.reap()?;
        self.inner
            .delete(true)
            .map_err(|e| self.runtime("delete", e))?;
        self.removed = true;
        fs::remove_dir_all(&self.bundle).map_err(|source| Error::State {
            path: self.bundle.clone(),
            source,
        })
    }
}

/// A container dropped without [`Container::delete`] (an error path of the
/// caller) is still removed, so nothing outlives its handle.
impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}
