//! A pod's confinement on the host (SECURITY.md): a uid/gid of its own for husk-vmm, leased
//! from the configured range; the pod's cgroup (the spec's `linux.cgroupsPath`) holding
//! husk-vmm and virtiofsd; and the husk-jailer command that starts husk-vmm in its jail.
//! What teardown needs of it is persisted in the pod dir ([`JailState`]), so that
//! `shim delete` after a crash releases the same uid and removes the same cgroups.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use husk_jail::{cgroup, Bind, Jail};
use serde::{Deserialize, Serialize};

use crate::persist::{self, PersistError, Persisted};

/// The persisted state, in the pod dir.
/// Leases: `<state_dir>/.jail-ids/<id>` holds the pod dir that has the id.
const IDS_DIR: &str = ".jail-ids";
/// The pod's `vm` dir (sockets and console) as the jailed VMM sees it.
pub const RUN_IN_JAIL: &str = "/run";
pub const KERNEL_IN_JAIL: &str = "/kernel";
pub const INITRAMFS_IN_JAIL: &str = "/initramfs";
/// A template's snapshot dir: read-only for a VMM restoring from it, writable for the
/// template VM that writes it.
pub const SNAPSHOT_IN_JAIL: &str = "/snapshot";
/// The shim's environment variables a VMM inherits (nothing else reaches a jailed one).
pub const VMM_ENV: [&str; 3] = ["HUSK_LOG", "HUSK_SECCOMP_SELFTEST", "RUST_BACKTRACE"];

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("no free jail uid in {first}..{last} (jail_id_first, jail_id_count): as many pods run as the range holds, or leases in {dir} are stale")]
    NoFreeId { first: u32, last: u64, dir: PathBuf },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    State(#[from] PersistError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JailError {
    let path = path.to_owned();
    move |source| JailError::Io { what, path, source }
}

/// What a pod's teardown undoes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailState {
    /// The VMM's uid and gid (the same number); `None` when the VMM is not jailed.
    pub id: Option<u32>,
    /// The pod's cgroup directories, created by the shim.
    pub cgroups: Vec<PathBuf>,
}

impl Persisted for JailState {
    const FILE: &'static str = "jail.json";
    const VERSION: u32 = 1;
}

impl JailState {
    pub fn new(id: Option<u32>, cgroups: Vec<PathBuf>) -> Self {
        Self { id, cgroups }
    }

    pub fn write(&self, pod_dir: &Path) -> Result<(), JailError> {
        Ok(persist::write(pod_dir, self)?)
    }

    /// The state a pod dir holds; `Ok(None)` if it has none (the pod never got that far).
    pub fn read(pod_dir: &Path) -> Result<Option<Self>, JailError> {
        Ok(persist::read(pod_dir)?)
    }

    /// Removes the cgroups and releases the id. Call once the pod's processes are gone.
    pub fn undo(&self, state_dir: &Path, pod_dir: &Path) -> Result<(), JailError> {
        let r = cgroup::remove(&self.cgroups).map_err(JailError::from);
        if let Some(id) = self.id {
            release_id(state_dir, id, pod_dir);
        }
        r
    }
}

/// Leases the first free id of `first .. first+count` to `owner` (a pod dir). A lease
/// whose owner dir is gone is stale (its shim died before `shim delete`) and is taken.
pub fn lease_id(state_dir: &Path, first: u32, count: u32, owner: &Path) -> Result<u32, JailError> {
    let dir = state_dir.join(IDS_DIR);
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let owner_text = owner.as_os_str().as_encoded_bytes();
    let ids = (0..count).filter_map(|i| first.checked_add(i));
    for id in ids {
        let file = dir.join(id.to_string());
        // A stale lease is removed and the id taken on the next try; a leases dir that the
        // last release removed meanwhile is made again.
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)
            {
                Ok(mut f) => {
                    f.write_all(owner_text).map_err(io("write", &file))?;
                    return Ok(id);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read(&file).unwrap_or_default();
                    let holder = PathBuf::from(String::from_utf8_lossy(&holder).into_owned());
                    // An empty lease is one being written this instant: leave it.
                    if holder.as_os_str().is_empty() || holder.exists() {
                        break;
                    }
                    tracing::info!(
                        "jail id {id}: its pod dir {} is gone; the lease is free again",
                        holder.display()
                    );
                    let _ = std::fs::remove_file(&file);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
                }
                Err(e) => return Err(io("create", &file)(e)),
            }
        }
    }
    Err(JailError::NoFreeId {
        first,
        last: u64::from(first) + u64::from(count) - 1,
        dir,
    })
}

/// Releases `owner`'s lease of `id` (another pod's lease of it is left alone); the leases
/// dir goes with the last lease, so an idle host keeps no state.
pub fn release_id(state_dir: &Path, id: u32, owner: &Path) {
    let dir = state_dir.join(IDS_DIR);
    let file = dir.join(id.to_string());
    let holder = std::fs::read(&file).unwrap_or_default();
    if holder == owner.as_os_str().as_encoded_bytes() {
        let _ = std::fs::remove_file(&file);
        // Fails harmlessly while other leases remain.
        let _ = std::fs::remove_dir(&dir);
    }
}

/// The pod's cgroup directories for an OCI `cgroupsPath` (none without one), created.
pub fn create_pod_cgroups(cgroups_path: Option<&str>) -> Result<Vec<PathBuf>, JailError> {
    let Some(p) = cgroups_path.filter(|p| !p.is_empty()) else {
        return Ok(Vec::new());
    };
    let root = Path::new(cgroup::ROOT);
    let dirs = cgroup::directories(root, &cgroup::relative_path(p)?);
    cgroup::create(root, &dirs)?;
    Ok(dirs)
}

/// Opens the pod's cgroup.procs files, for [`join_cgroups_on_exec`].
pub fn open_procs(cgroups: &[PathBuf]) -> Result<Vec<OwnedFd>, JailError> {
    cgroup::procs_files(cgroups)
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(io("open", p))
        })
        .collect()
}

/// Makes `cmd`'s process join the pod's cgroups before it execs (so whatever it forks is
/// born there: virtiofsd's sandbox forks its server).
pub fn join_cgroups_on_exec(cmd: &mut Command, procs: Vec<OwnedFd>) {
    if procs.is_empty() {
        return;
    }
    let raw: Vec<i32> = procs.iter().map(AsRawFd::as_raw_fd).collect();
    // The closure runs in the forked child before exec and only calls write(2) on fds
    // opened before the fork (kept alive by the closure owning `procs`); it allocates
    // nothing.
    // SAFETY: only write(2), async-signal-safe, on fds the closure keeps open.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &procs;
            for fd in &raw {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// What the jailer needs from the shim for one pod.
pub struct JailPlan<'a> {
    pub jailer: &'a Path,
    pub vmm: &'a Path,
    pub pod_dir: &'a Path,
    pub vm_dir: PathBuf,
    pub id: u32,
    pub cgroups: &'a [PathBuf],
    pub keep_fds: Vec<i32>,
    /// Read-only in the jail: what the VM starts from ([`boot_binds`], or a template's
    /// [`snapshot_bind`]).
    pub ro: Vec<Bind>,
    /// Writable directories besides the `vm` dir (`/run`): a template's snapshot dir
    /// while it is written.
    pub rw: Vec<Bind>,
    pub vmm_args: Vec<OsString>,
}

fn bind(src: &Path, in_jail: &str) -> Bind {
    Bind {
        src: src.to_owned(),
        name: in_jail.trim_start_matches('/').into(),
    }
}

/// A booting VM's kernel and initramfs.
pub fn boot_binds(kernel: &Path, initramfs: &Path) -> Vec<Bind> {
    vec![
        bind(kernel, KERNEL_IN_JAIL),
        bind(initramfs, INITRAMFS_IN_JAIL),
    ]
}

/// A template's snapshot dir as [`SNAPSHOT_IN_JAIL`].
pub fn snapshot_bind(dir: &Path) -> Bind {
    bind(dir, SNAPSHOT_IN_JAIL)
}

/// The jail's root on the host (an empty dir; the tmpfs is only in the jail's namespace).
pub fn jail_root(pod_dir: &Path) -> PathBuf {
    pod_dir.join("jail")
}

impl JailPlan<'_> {
    pub fn jail(&self) -> Jail {
        Jail {
            root: jail_root(self.pod_dir),
            exec: self.vmm.to_owned(),
            ro: self.ro.clone(),
            rw: std::iter::once(bind(&self.vm_dir, RUN_IN_JAIL))
                .chain(self.rw.iter().cloned())
                .collect(),
            uid: self.id,
            gid: self.id,
            cgroup_procs: cgroup::procs_files(self.cgroups),
            keep_fds: self.keep_fds.clone(),
            env: vmm_env(),
            nofile: husk_jail::DEFAULT_NOFILE,
            nproc: husk_jail::DEFAULT_NPROC,
            args: self.vmm_args.clone(),
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.jailer);
        cmd.args(self.jail().to_args());
        cmd
    }
}

/// `KEY=VALUE` of the [`VMM_ENV`] variables the shim has.
pub fn vmm_env() -> Vec<String> {
    VMM_ENV
        .iter()
        .filter_map(|k| Some(format!("{k}={}", std::env::var(k).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-jail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn ids_are_leased_once_released_by_their_owner_and_stale_ones_reclaimed() {
        let state = temp("ids");
        let (a, b, gone) = (
            state.join("ns/a"),
            state.join("ns/b"),
            state.join("ns/gone"),
        );
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(lease_id(&state, 1000, 2, &a).unwrap(), 1000);
        assert_eq!(lease_id(&state, 1000, 2, &b).unwrap(), 1001);
        let e = lease_id(&state, 1000, 2, &a).unwrap_err().to_string();
        assert!(e.contains("no free jail uid in 1000..1001"), "{e}");
        // Only the owner releases.
        release_id(&state, 1000, &b);
        assert!(lease_id(&state, 1000, 2, &b).is_err());
        release_id(&state, 1000, &a);
        assert_eq!(lease_id(&state, 1000, 2, &b).unwrap(), 1000);
        // A lease whose pod dir is gone is reclaimed (on the next call).
        std::fs::write(
            state.join(".jail-ids/1000"),
            gone.as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        assert_eq!(lease_id(&state, 1000, 2, &a).unwrap(), 1000);
        // The last release removes the leases dir; a lease makes it again.
        release_id(&state, 1000, &a);
        release_id(&state, 1001, &b);
        assert!(!state.join(IDS_DIR).exists());
        assert_eq!(lease_id(&state, 1000, 2, &a).unwrap(), 1000);
        release_id(&state, 1000, &a);
        // The range never wraps past u32::MAX.
        assert!(lease_id(&state, u32::MAX, 5, &a).is_ok());
        assert!(lease_id(&state, u32::MAX, 5, &b).is_err());
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn the_state_round_trips_and_a_foreign_one_is_refused() {
        let d = temp("state");
        assert_eq!(JailState::read(&d).unwrap(), None);
        let s = JailState::new(Some(7), vec!["/sys/fs/cgroup/default/p".into()]);
        s.write(&d).unwrap();
        assert_eq!(JailState::read(&d).unwrap(), Some(s));
        std::fs::write(
            d.join(JailState::FILE),
            r#"{"version": 9, "id": null, "cgroups": []}"#,
        )
        .unwrap();
        let e = JailState::read(&d).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        std::fs::write(d.join(JailState::FILE), "{").unwrap();
        assert!(JailState::read(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_plan_gives_the_jailer_the_pods_files_and_nothing_else() {
        let cg = vec![PathBuf::from("/sys/fs/cgroup/default/p")];
        let plan = JailPlan {
            jailer: Path::new("/usr/local/bin/husk-jailer"),
            vmm: Path::new("/usr/local/bin/husk-vmm"),
            ro: boot_binds(
                Path::new("/usr/share/husk/vmlinux"),
                Path::new("/usr/share/husk/initramfs.cpio"),
            ),
            rw: Vec::new(),
            pod_dir: Path::new("/run/husk/default/p"),
            vm_dir: "/run/husk/default/p/vm".into(),
            id: 1_500_000_003,
            cgroups: &cg,
            keep_fds: vec![3],
            vmm_args: vec!["--kernel".into(), KERNEL_IN_JAIL.into()],
        };
        let j = plan.jail();
        assert_eq!(j.root, PathBuf::from("/run/husk/default/p/jail"));
        assert_eq!((j.uid, j.gid), (1_500_000_003, 1_500_000_003));
        assert_eq!(
            j.cgroup_procs,
            vec![PathBuf::from("/sys/fs/cgroup/default/p/cgroup.procs")]
        );
        let names: Vec<&str> = j.ro.iter().chain(&j.rw).map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["kernel", "initramfs", "run"]);
        // What the shim builds, the jailer accepts.
        let argv: Vec<OsString> = std::iter::once("husk-jailer".into())
            .chain(j.to_args())
            .collect();
        assert_eq!(Jail::from_args(argv).unwrap(), j);
        let cmd = plan.command();
        assert_eq!(cmd.get_program(), "/usr/local/bin/husk-jailer");
    }

    #[test]
    fn no_cgroups_path_means_no_cgroup() {
        assert!(create_pod_cgroups(None).unwrap().is_empty());
        assert!(create_pod_cgroups(Some("")).unwrap().is_empty());
        let e = create_pod_cgroups(Some("/a/../b")).unwrap_err().to_string();
        assert!(e.contains("no `..`"), "{e}");
    }
}
