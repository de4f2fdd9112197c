//! A container's cgroup: freezer (pause/resume), statistics, resource
//! updates, its processes, and OOM-kill events ([`oom`]).
//!
//! Where the cgroup is: the engine creates every container with
//! `linux.cgroupsPath` set (`/husk/<id>` unless the spec names one), never
//! with systemd, and libcontainer records that path in the container's
//! state (`youki_config.json`). [`Container::cgroup`] reads it back from
//! there, so the path used here is the one libcontainer created. On cgroup
//! v2 (the guest, which mounts only cgroup2) the cgroup is the directory
//! `/sys/fs/cgroup/<path>`; on a v1/hybrid host (tests) it is `<path>` under
//! each controller's hierarchy.
//!
//! One code path for both: freezing, resource updates and the pid list go
//! through libcgroups' manager (what libcontainer itself uses), which picks
//! v1 or v2 from what is mounted. Statistics on v2 are read by our own
//! parsers ([`stats`]) because libcgroups' v2 reader fails on a cgroup whose
//! `cpu` controller is not enabled (no `nr_periods` in cpu.stat) and reads
//! hugetlb and PSI files our guest kernel may not have; on v1 they come
//! from libcgroups' v1 reader. The guest binary builds libcgroups with v2
//! only; v1 is a test (dev-dependency) feature.

pub mod oom;
pub mod stats;
pub mod update;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use libcgroups::common::{
    self, AnyCgroupManager, AnyManagerError, CgroupConfig, CgroupManager, CgroupSetup,
    ControllerOpt, CreateCgroupSetupError, GetCgroupSetupError,
};
use libcontainer::error::LibcontainerError;
use oci_spec::runtime::LinuxResources;

pub use self::oom::{OomEvent, OomMonitor, OomWaitError};
pub use self::stats::{
    ContainerStats, CpuStats, IoDeviceStats, MemoryStats, ParseError, PidsStats,
};
pub use self::update::{parse_resources, ResourcesError};
use super::Container;

/// Where cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("Cannot tell which cgroup version is mounted at {root}")]
    Setup {
        root: PathBuf,
        #[source]
        source: GetCgroupSetupError,
    },
    #[error("Cannot open the cgroup {path}")]
    Manager {
        path: PathBuf,
        #[source]
        source: Box<CreateCgroupSetupError>,
    },
    #[error("Cannot {op} the cgroup {path}")]
    Op {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Box<AnyManagerError>,
    },
    #[error("Cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Unexpected cgroup file contents")]
    Parse(#[from] ParseError),
    #[error("Invalid resources")]
    Resources(#[from] ResourcesError),
    #[error("Cannot {op} container {id}")]
    Runtime {
        op: &'static str,
        id: String,
        #[source]
        source: Box<LibcontainerError>,
    },
    #[error("Cannot start the OOM monitor thread")]
    Thread(#[source] io::Error),
}

impl CgroupError {
    /// The kind of a cgroup error, for the RPC status code: bad resources are the
    /// caller's, a container in the wrong state (pausing a paused one) a failed
    /// precondition.
    pub fn kind(&self) -> super::ErrorKind {
        match self {
            Self::Resources(_) => super::ErrorKind::InvalidArgument,
            Self::Runtime { source, .. }
                if matches!(**source, LibcontainerError::IncorrectStatus(_)) =>
            {
                super::ErrorKind::FailedPrecondition
            }
            _ => super::ErrorKind::Internal,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    /// cgroup v2: one directory per cgroup.
    Unified,
    /// cgroup v1 or hybrid: one directory per controller.
    Legacy,
}

/// The cgroup of one container. Holds paths only, no open files: a cgroup
/// that has been removed makes its operations fail with the path named.
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// Where cgroup file systems are mounted (`/sys/fs/cgroup`).
    root: PathBuf,
    /// The cgroup path as in the spec (`/husk/<id>`).
    path: PathBuf,
    /// The container the cgroup belongs to (for libcgroups' naming).
    container_id: String,
    hierarchy: Hierarchy,
}

impl Cgroup {
    /// The cgroup `path` (a spec's `linux.cgroupsPath`) under
    /// `/sys/fs/cgroup`.
    pub fn new(container_id: &str, path: &Path) -> Result<Self, CgroupError> {
        Self::with_root(Path::new(CGROUP_ROOT), container_id, path)
    }

    /// The cgroup `path` under another mount point `root`.
    pub fn with_root(root: &Path, container_id: &str, path: &Path) -> Result<Self, CgroupError> {
        let setup =
            common::get_cgroup_setup_with_root(root).map_err(|source| CgroupError::Setup {
                root: root.to_owned(),
                source,
            })?;
        let hierarchy = match setup {
            CgroupSetup::Unified => Hierarchy::Unified,
            CgroupSetup::Legacy | CgroupSetup::Hybrid => Hierarchy::Legacy,
        };
        Ok(Self {
            root: root.to_owned(),
            path: path.to_owned(),
            container_id: container_id.to_owned(),
            hierarchy,
        })
    }

    /// A v2 cgroup directory, whatever is mounted (parser tests).
    #[cfg(test)]
    pub(crate) fn v2_at(dir: &Path) -> Self {
        Self {
            root: dir.to_owned(),
            path: PathBuf::from("/"),
            container_id: String::new(),
            hierarchy: Hierarchy::Unified,
        }
    }

    /// The cgroup path as the spec gives it (`/husk/<id>`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True on cgroup v2.
    pub fn is_unified(&self) -> bool {
        self.hierarchy == Hierarchy::Unified
    }

    /// The directory of this cgroup in `controller`'s hierarchy (v1), or
    /// the cgroup's one directory (v2, `controller` ignored).
    pub fn dir(&self, controller: &str) -> PathBuf {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        match self.hierarchy {
            Hierarchy::Unified => self.root.join(rel),
            Hierarchy::Legacy => self.root.join(controller).join(rel),
        }
    }

    fn manager(&self) -> Result<AnyCgroupManager, CgroupError> {
        common::create_cgroup_manager_with_root(
            Some(&self.root),
            CgroupConfig {
                cgroup_path: self.path.clone(),
                systemd_cgroup: false,
                container_name: self.container_id.clone(),
            },
        )
        .map_err(|source| CgroupError::Manager {
            path: self.path.clone(),
            source: Box::new(source),
        })
    }

    fn op_error(&self, op: &'static str) -> impl FnOnce(AnyManagerError) -> CgroupError + '_ {
        move |source| CgroupError::Op {
            op,
            path: self.path.clone(),
            source: Box::new(source),
        }
    }

    /// Pids (in the agent's pid namespace) of every process in the cgroup
    /// and its sub-cgroups, sorted: the `ListProcesses` answer.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let manager = self.manager()?;
        let mut pids: Vec<u32> = manager
            .get_all_pids()
            .map_err(self.op_error("list the processes of"))?
            .into_iter()
            .filter_map(|p| u32::try_from(p.as_raw()).ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Applies `resources` (already checked by [`parse_resources`], or
    /// checked here): fields left out keep their current values.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        update::validate(resources)?;
        let manager = self.manager()?;
        manager
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(self.op_error("update"))
    }

    /// Whether the freezer has the cgroup frozen (v2 `cgroup.events`
    /// `frozen 1`, v1 `freezer.state` `FROZEN`).
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        Ok(match self.hierarchy {
            Hierarchy::Unified => {
                let text = self.read(&self.dir(""), "cgroup.events")?;
                stats::parse_flat_keyed("cgroup.events", &text)?
                    .get("frozen")
                    .is_some_and(|v| *v == 1)
            }
            Hierarchy::Legacy => {
                self.read(&self.dir("freezer"), "freezer.state")?.trim() == "FROZEN"
            }
        })
    }

    /// The container's resource figures: the `StatsContainer` answer.
    pub fn stats(&self) -> Result<ContainerStats, CgroupError> {
        match self.hierarchy {
            Hierarchy::Unified => self.stats_v2(),
            Hierarchy::Legacy => {
                let v1 = self
                    .manager()?
                    .stats()
                    .map_err(self.op_error("read the statistics of"))?;
                let (file, name) = self.oom_counter_file()?;
                let oom_kill = match self.read_optional(&file)? {
                    Some(text) => stats::parse_oom_kill(name, &text)?,
                    None => 0,
                };
                Ok(stats::from_v1(&v1, oom_kill))
            }
        }
    }

    fn stats_v2(&self) -> Result<ContainerStats, CgroupError> {
        let dir = self.dir("");
        // cpu.stat is in every v2 cgroup: its absence means the cgroup is gone.
        let cpu = stats::parse_cpu_stat(&self.read(&dir, "cpu.stat")?)?;
        let optional = |name: &str| self.read_optional(&dir.join(name));
        let single = |name: &'static str| -> Result<u64, CgroupError> {
            Ok(match optional(name)? {
                Some(text) => stats::parse_single_or_max(name, &text)?,
                None => 0,
            })
        };
        let memory = MemoryStats {
            usage: single("memory.current")?,
            limit: single("memory.max")?,
            swap_usage: single("memory.swap.current")?,
            stat: match optional("memory.stat")? {
                Some(text) => stats::parse_flat_keyed("memory.stat", &text)?,
                None => Default::default(),
            },
            oom_kill: match optional("memory.events")? {
                Some(text) => stats::parse_oom_kill("memory.events", &text)?,
                None => 0,
            },
        };
        let pids = PidsStats {
            current: single("pids.current")?,
            limit: single("pids.max")?,
        };
        let io = match optional("io.stat")? {
            Some(text) => stats::parse_io_stat(&text)?,
            None => Vec::new(),
        };
        Ok(ContainerStats {
            cpu,
            memory,
            pids,
            io,
        })
    }

    /// The file holding the cgroup's OOM-kill counter, and its name for
    /// error messages.
    pub(crate) fn oom_counter_file(&self) -> Result<(PathBuf, &'static str), CgroupError> {
        Ok(match self.hierarchy {
            Hierarchy::Unified => (self.dir("").join("memory.events"), "memory.events"),
            Hierarchy::Legacy => (
                self.dir("memory").join("memory.oom_control"),
                "memory.oom_control",
            ),
        })
    }

    fn read(&self, dir: &Path, name: &str) -> Result<String, CgroupError> {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
    }

    /// A file a cgroup may lack (controller not enabled): `None` then.
    fn read_optional(&self, path: &Path) -> Result<Option<String>, CgroupError> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CgroupError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// The cgroup operations of a container made by [`super::Engine`].
impl Container {
    fn cgroup_error(&self, op: &'static str, source: LibcontainerError) -> CgroupError {
        CgroupError::Runtime {
            op,
            id: self.id.clone(),
            source: Box::new(source),
        }
    }

    /// The container's cgroup, at the path libcontainer recorded when it
    /// created it.
    pub fn cgroup(&self) -> Result<Cgroup, CgroupError> {
        let config = self
            .inner
            .spec()
            .map_err(|e| self.cgroup_error("find the cgroup of", e))?;
        Cgroup::new(&self.id, &config.cgroup_path)
    }

    /// Freezes every process of the running container (libcontainer's
    /// pause: the freezer, and the container's state becomes paused, so a
    /// later kill or delete thaws it first where v1 needs that).
    pub fn pause(&mut self) -> Result<(), CgroupError> {
        self.inner
            .pause()
            .map_err(|e| self.cgroup_error("pause", e))
    }

    /// Thaws a paused container.
    pub fn resume(&mut self) -> Result<(), CgroupError> {
        self.inner
            .resume()
            .map_err(|e| self.cgroup_error("resume", e))
    }
}
