//! The pod's cgroup on the host, holding husk-vmm and virtiofsd, so that what the VM uses
//! is accounted to the pod (Kata's `sandbox_cgroup_only`): the directory the pod's OCI
//! spec names in `linux.cgroupsPath`, as runc would create it for the pod's first
//! container. cgroup v2 (one directory) and v1 (one per hierarchy we join).

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the cgroup hierarchies are mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup v1 hierarchies a pod joins: those that account and bound what a VM uses.
/// (cpuset needs its cpus and mems written before any task may join; not joined.)
pub const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "blkio"];
/// The v2 controllers enabled on the way down to a pod's cgroup, where available.
pub const V2_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroupsPath {path:?}: {why}")]
    Path { path: String, why: &'static str },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cgroup path, relative to a hierarchy's root, that an OCI `cgroupsPath` names:
/// `/a/b` (cgroupfs) or `slice:prefix:name` (systemd's driver: `a-b.slice:cri:x` is
/// `a.slice/a-b.slice/cri-x.scope`, as runc expands it).
pub fn relative_path(cgroups_path: &str) -> Result<PathBuf, CgroupError> {
    let bad = |why| CgroupError::Path {
        path: cgroups_path.to_owned(),
        why,
    };
    let rel = if !cgroups_path.starts_with('/') && cgroups_path.split(':').count() == 3 {
        let mut parts = cgroups_path.split(':');
        let (slice, prefix, name) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        if name.is_empty() {
            return Err(bad("a systemd cgroupsPath needs a name"));
        }
        let mut p = PathBuf::new();
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        if slice != "-.slice" {
            let stem = slice
                .strip_suffix(".slice")
                .ok_or_else(|| bad("a systemd slice ends in .slice"))?;
            let mut acc = String::new();
            for part in stem.split('-') {
                if part.is_empty() {
                    return Err(bad("a slice name has an empty part"));
                }
                if !acc.is_empty() {
                    acc.push('-');
                }
                acc.push_str(part);
                p.push(format!("{acc}.slice"));
            }
        }
        let unit = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}-{name}")
        };
        p.push(if unit.ends_with(".slice") || unit.ends_with(".scope") {
            unit
        } else {
            format!("{unit}.scope")
        });
        p
    } else {
        PathBuf::from(cgroups_path.trim_start_matches('/'))
    };
    if rel.as_os_str().is_empty() {
        return Err(bad("the root cgroup is not a pod's"));
    }
    let plain = rel
        .to_str()
        .is_some_and(|s| s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
    if !plain || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad("only plain components (no `..`)"));
    }
    Ok(rel)
}

/// Whether `root` (normally /sys/fs/cgroup) is a cgroup v2 (unified) mount.
pub fn is_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").is_file()
}

/// The pod's cgroup directories under `root`: one on v2, one per mounted v1 hierarchy of
/// [`V1_CONTROLLERS`] (co-mounted ones, such as `cpu,cpuacct`, once).
pub fn directories(root: &Path, rel: &Path) -> Vec<PathBuf> {
    if is_v2(root) {
        return vec![root.join(rel)];
    }
    let mut hierarchies: Vec<PathBuf> = Vec::new();
    for c in V1_CONTROLLERS {
        let h = root.join(c);
        if !h.join("cgroup.procs").is_file() {
            continue;
        }
        let real = std::fs::canonicalize(&h).unwrap_or(h);
        if !hierarchies.contains(&real) {
            hierarchies.push(real);
        }
    }
    hierarchies.into_iter().map(|h| h.join(rel)).collect()
}

/// Creates the pod's cgroup directories, each level below `root` in turn. On v2, each
/// level first enables [`V2_CONTROLLERS`] (those it offers) in its
/// `cgroup.subtree_control`, as runc does, so that the pod's cgroup accounts memory, CPU,
/// pids and I/O.
pub fn create(root: &Path, dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let v2 = is_v2(root);
    for dir in dirs {
        let mut level = root.to_owned();
        for c in dir.strip_prefix(root).unwrap_or(dir).components() {
            if v2 {
                enable_controllers(&level);
            }
            level.push(c);
            mkdir(&level)?;
        }
    }
    Ok(())
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Io {
            what: "create the cgroup",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Best effort: a level with processes of its own cannot enable controllers for its
/// children (v2's no-internal-processes rule); the pod's cgroup then still groups the VM.
fn enable_controllers(level: &Path) {
    let offered = std::fs::read_to_string(level.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(level.join("cgroup.subtree_control")).unwrap_or_default();
    for c in V2_CONTROLLERS {
        let has = |list: &str| list.split_whitespace().any(|x| x == c);
        if has(&offered) && !has(&enabled) {
            let _ = std::fs::write(level.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
}

/// The `cgroup.procs` file of each directory.
pub fn procs_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter().map(|d| d.join("cgroup.procs")).collect()
}

/// Moves the calling process into each cgroup.procs file (its children are born there).
pub fn join_self(procs: &[PathBuf]) -> Result<(), CgroupError> {
    for p in procs {
        std::fs::write(p, "0").map_err(|source| CgroupError::Io {
            what: "join the cgroup through",
            path: p.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Removes the pod's cgroup directories once their processes are gone (a cgroup whose
/// last process was just reaped may stay busy for a moment). A missing one is fine.
pub fn remove(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    for dir in dirs {
        let start = Instant::now();
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && start.elapsed() < Duration::from_secs(2) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(CgroupError::Io {
                        what: "remove the cgroup",
                        path: dir.clone(),
                        source,
                    })
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths() {
        assert_eq!(
            relative_path("/default/p").unwrap(),
            PathBuf::from("default/p")
        );
        assert_eq!(
            relative_path("/kubepods/besteffort/pod12/abc").unwrap(),
            PathBuf::from("kubepods/besteffort/pod12/abc")
        );
        assert_eq!(
            relative_path("k8s.io/x").unwrap(),
            PathBuf::from("k8s.io/x")
        );
        for bad in ["/", "", "/a/../b", "/a/./b"] {
            let e = relative_path(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn systemd_paths_expand_as_runc_expands_them() {
        assert_eq!(
            relative_path("kubepods-besteffort-pod12.slice:cri-containerd:abc").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            relative_path("system.slice:docker:x").unwrap(),
            PathBuf::from("system.slice/docker-x.scope")
        );
        assert_eq!(
            relative_path(":cri:x").unwrap(),
            PathBuf::from("system.slice/cri-x.scope")
        );
        assert_eq!(
            relative_path("-.slice::x.scope").unwrap(),
            PathBuf::from("x.scope")
        );
        assert!(relative_path("a--b.slice:p:x").is_err());
        assert!(relative_path("nota-slice:p:x").is_err());
        assert!(relative_path("a.slice:p:").is_err());
    }

    /// A fake hierarchy root in a temp dir (no real cgroupfs needed).
    fn fake_root(name: &str, v2: bool) -> PathBuf {
        let root = std::env::temp_dir().join(format!("husk-cg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        if v2 {
            std::fs::write(root.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
            std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        } else {
            for c in ["memory", "cpu,cpuacct", "pids", "devices"] {
                std::fs::create_dir_all(root.join(c)).unwrap();
                std::fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
            }
            std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
            std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpuacct")).unwrap();
        }
        root
    }

    #[test]
    fn v1_joins_each_accounting_hierarchy_once() {
        let root = fake_root("v1", false);
        let rel = relative_path("/default/p").unwrap();
        let dirs = directories(&root, &rel);
        let real = std::fs::canonicalize(&root).unwrap();
        assert_eq!(
            dirs,
            vec![
                real.join("memory/default/p"),
                real.join("cpu,cpuacct/default/p"),
                real.join("pids/default/p"),
            ]
        );
        // Missing parents (`default`) are made too, as on a host where no pod ran yet.
        create(&root, &dirs).unwrap();
        assert!(dirs.iter().all(|d| d.is_dir()));
        remove(&dirs).unwrap();
        assert!(dirs.iter().all(|d| !d.exists()));
        remove(&dirs).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v2_enables_the_controllers_on_the_way_down() {
        let root = fake_root("v2", true);
        let rel = relative_path("/default/p").unwrap();
        let dirs = directories(&root, &rel);
        assert_eq!(dirs, vec![root.join("default/p")]);
        create(&root, &dirs).unwrap();
        assert!(root.join("default/p").is_dir());
        // A plain file stands in for cgroup.subtree_control: the last write is kept.
        let control = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap();
        assert_eq!(control, "+io");
        assert_eq!(
            procs_files(&dirs),
            vec![root.join("default/p/cgroup.procs")]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_hierarchy_is_a_clear_error() {
        let e = create(
            Path::new("/nonexistent-cg"),
            &[PathBuf::from("/nonexistent-cg/memory/x")],
        )
        .unwrap_err();
        // The first level that cannot be made is named, with its errno.
        let text = husk_errors::chain(&e);
        assert!(
            text.contains("cannot create the cgroup /nonexistent-cg/memory: No such file"),
            "{text}"
        );
    }
}
