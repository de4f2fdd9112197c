//! The in-guest container engine: an OCI runtime spec and a rootfs
//! directory in, a running container out.
//!
//! Namespaces, mounts, pivot_root, cgroups, capabilities and the exec are
//! youki's `libcontainer`; this module adds what the agent needs around it:
//! spec checks with clear errors ([`spec_validation`]), stdout/stderr pipes
//! whose bytes all arrive before the exit status ([`output`]), waiting for
//! the container's init as its reaper and exit codes in the 128+N
//! convention ([`exit_status`]), and clean removal.
//!
//! The container's init is re-parented to the agent when libcontainer's
//! intermediate process exits: the agent is PID 1 in the guest, and on the
//! host [`Engine::new`] makes the calling process a child subreaper. A
//! reaper that waits for any child must leave the init pids of live
//! containers to [`Container::wait`].

pub mod cgroups;
mod exit_status;
mod output;
pub mod seccomp;
mod spec_validation;

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{RootBuilder, Spec};

pub use self::cgroups::{Cgroup, CgroupError, ContainerStats, OomEvent, OomMonitor};
pub use self::exit_status::ExitStatus;
use self::output::DrainGate;
pub use self::output::OutputStream;
pub use self::spec_validation::SpecError;

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
    #[error("Invalid seccomp profile")]
    Seccomp(#[from] seccomp::SeccompError),
}

/// Creates containers; holds where their state lives.
#[derive(Debug)]
pub struct Engine {
    /// libcontainer's per-container state dirs.
    state_dir: PathBuf,
    /// The bundles the engine writes: the caller's spec, rootfs made absolute.
    bundles_dir: PathBuf,
}

/// A container just created, and its output pipes.
#[derive(Debug)]
pub struct Created {
    pub container: Container,
    pub stdout: OutputStream,
    pub stderr: OutputStream,
}

impl Engine {
    /// An engine keeping its state under `root` (in the guest: a tmpfs
    /// such as /run/husk). Makes the calling process a child subreaper so
    /// it can wait for container inits when it is not PID 1.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        let state_dir = root.join("state");
        let bundles_dir = root.join("bundles");
        for dir in [&state_dir, &bundles_dir] {
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
        })
    }

    /// Creates a container from an OCI bundle (a dir with `config.json`;
    /// a relative `root.path` is taken from the bundle).
    pub fn create_from_bundle(&self, id: &str, bundle: &Path) -> Result<Created, Error> {
        let path = bundle.join("config.json");
        let spec = Spec::load(&path).map_err(|source| Error::LoadSpec { path, source })?;
        spec_validation::validate(&spec)?;
        let root = spec.root().as_ref().ok_or(SpecError::MissingRoot)?.path();
        let rootfs = bundle.join(root);
        self.create(id, spec, &rootfs)
    }

    /// Creates a container running `spec` on `rootfs` (the spec's own
    /// `root.path` is replaced). The init is stopped before exec until
    /// [`Container::start`]. Without `linux.cgroupsPath` the container's
    /// cgroup is `/husk/<id>`.
    pub fn create(&self, id: &str, mut spec: Spec, rootfs: &Path) -> Result<Created, Error> {
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
        if let Some(linux) = spec.linux_mut() {
            if linux.cgroups_path().is_none() {
                linux.set_cgroups_path(Some(PathBuf::from(format!("/husk/{id}"))));
            }
        }
        // libcontainer without libseccomp ignores linux.seccomp: compile it
        // here (a bad profile fails create) and install it before exec.
        let executor = seccomp::prepare(&mut spec)?;

        let runtime = |op, source| Error::Runtime {
            op,
            id: id.to_owned(),
            source: Box::new(source),
        };
        // Check the id before it becomes a path.
        let builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .validate_id()
            .map_err(|e| runtime("create", e))?;

        let bundle = self.bundles_dir.join(id);
        let state_err = |source| Error::State {
            path: bundle.clone(),
            source,
        };
        fs::create_dir_all(&bundle).map_err(state_err)?;
        let result = self
            .build(id, builder.with_executor(executor.clone()), &spec, &bundle)
            .and_then(|created| {
                // The init holds its copy of the spec now: save the one
                // execs start from without the capability lent for seccomp.
                executor.restore(&mut spec);
                spec.save(bundle.join("config.json"))
                    .map_err(|e| Error::State {
                        path: bundle.clone(),
                        source: io::Error::other(e),
                    })?;
                Ok(created)
            });
        if result.is_err() {
            let _ = fs::remove_dir_all(&bundle);
            let _ = fs::remove_dir_all(self.state_dir.join(id));
        }
        result
    }

    fn build(
        &self,
        id: &str,
        builder: ContainerBuilder,
        spec: &Spec,
        bundle: &Path,
    ) -> Result<Created, Error> {
        let runtime = |op, source| Error::Runtime {
            op,
            id: id.to_owned(),
            source: Box::new(source),
        };
        spec.save(bundle.join("config.json"))
            .map_err(|e| Error::State {
                path: bundle.to_owned(),
                source: io::Error::other(e),
            })?;
        let stdin = File::open("/dev/null").map_err(Error::Stdio)?;
        let (stdout_r, stdout_w) = io::pipe().map_err(Error::Stdio)?;
        let (stderr_r, stderr_w) = io::pipe().map_err(Error::Stdio)?;
        // The write ends move into the builder and are closed in this
        // process once the container exists, so the reader sees the end
        // when the container's last holder closes them.
        let inner = builder
            .with_root_path(&self.state_dir)
            .map_err(|e| runtime("create", e))?
            .with_stdin(stdin)
            .with_stdout(OwnedFd::from(stdout_w))
            .with_stderr(OwnedFd::from(stderr_w))
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| runtime("create", e))?;
        let pid = inner
            .pid()
            .ok_or_else(|| runtime("create", LibcontainerError::Other("no init pid".into())))?
            .as_raw();
        let gate = DrainGate::new(2);
        Ok(Created {
            stdout: OutputStream::new(OwnedFd::from(stdout_r), gate.clone()),
            stderr: OutputStream::new(OwnedFd::from(stderr_r), gate.clone()),
            container: Container {
                id: id.to_owned(),
                inner,
                pid,
                exit: None,
                gate,
                bundle: bundle.to_owned(),
                removed: false,
            },
        })
    }
}

/// A created container. Remove it with [`Container::delete`].
#[derive(Debug)]
pub struct Container {
    id: String,
    inner: libcontainer::container::Container,
    pid: i32,
    exit: Option<ExitStatus>,
    gate: Arc<DrainGate>,
    bundle: PathBuf,
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

    fn runtime(&self, op: &'static str, source: LibcontainerError) -> Error {
        Error::Runtime {
            op,
            id: self.id.clone(),
            source: Box::new(source),
        }
    }

    /// Lets the init exec the spec's process.
    pub fn start(&mut self) -> Result<(), Error> {
        self.inner.start().map_err(|e| self.runtime("start", e))
    }

    /// Sends `signal` to the container's init.
    pub fn signal(&mut self, signal: i32) -> Result<(), Error> {
        let sig = Signal::try_from(signal).map_err(|_| Error::Signal(signal))?;
        self.inner
            .kill(sig, false)
            .map_err(|e| self.runtime("signal", e))
    }

    /// Waits for the init to end, then for both output streams to be read
    /// to their end (or dropped), and only then returns the exit status.
    /// Read the streams on other threads, or before calling this.
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        let status = self.reap()?;
        self.gate.wait();
        Ok(status)
    }

    /// Waits for the init only (not the output): for delete.
    fn reap(&mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        loop {
            let mut raw = 0;
            // SAFETY: `raw` is a live i32 the kernel writes the status into.
            let r = unsafe { libc::waitpid(self.pid, &mut raw, 0) };
            if r < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Wait {
                    id: self.id.clone(),
                    source: err,
                });
            }
            if let Some(status) = ExitStatus::from_wait_status(raw) {
                self.exit = Some(status);
                return Ok(status);
            }
        }
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
        if self.exit.is_none() {
            // Created-but-not-started and running both end here: SIGKILL
            // to every process of the container, then reap the init.
            if let Err(e) = self.inner.kill(Signal::try_from(9).expect("SIGKILL"), true) {
                if self.inner.can_kill() {
                    return Err(self.runtime("kill", e));
                }
            }
            self.reap()?;
        }
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
