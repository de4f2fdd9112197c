//! The file systems PID 1 mounts, as data, and the logic that mounts them.

use std::io;
use std::path::Path;

use crate::sys;

/// One file system to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: Option<&'static str>,
    /// Whether the guest is unusable without it: failing to mount a required
    /// file system is an error, failing to mount another one a warning.
    pub required: bool,
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// What PID 1 mounts, in order (parents before children).
pub const GUEST_MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID | NODEV | NOEXEC,
        data: None,
        required: true,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID | NODEV | NOEXEC,
        data: None,
        required: true,
    },
    // The kernel may already have mounted it (CONFIG_DEVTMPFS_MOUNT): EBUSY.
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: NOSUID,
        data: None,
        required: true,
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID | NOEXEC,
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
        required: false,
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: Some("mode=1777"),
        required: false,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: Some("mode=0755"),
        required: false,
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: Some("mode=1777"),
        required: false,
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID | NODEV | NOEXEC,
        data: None,
        required: false,
    },
];

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("Failed to create mount point {target}")]
    CreateMountPoint {
        target: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("Failed to mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: io::Error,
    },
}

impl MountError {
    pub fn target(&self) -> &'static str {
        match self {
            MountError::CreateMountPoint { target, .. } | MountError::Mount { target, .. } => {
                target
            }
        }
    }
}

/// What happened to one [`MountSpec`].
#[derive(Debug)]
pub enum MountOutcome {
    Mounted,
    /// The same file system was already mounted there (EBUSY).
    AlreadyMounted,
    /// A non-required mount failed; the boot goes on.
    Failed(MountError),
}

/// The system calls mounting needs, so the logic is testable without root.
pub trait MountOps {
    /// Creates `path` and its parents unless it exists.
    fn ensure_dir(&mut self, path: &Path) -> io::Result<()>;
    fn mount(&mut self, spec: &MountSpec) -> io::Result<()>;
}

/// The real system calls.
#[derive(Debug, Default)]
pub struct SysMountOps;

impl MountOps for SysMountOps {
    fn ensure_dir(&mut self, path: &Path) -> io::Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(path)
    }

    fn mount(&mut self, spec: &MountSpec) -> io::Result<()> {
        sys::mount(
            spec.source,
            Path::new(spec.target),
            spec.fstype,
            spec.flags,
            spec.data,
        )
    }
}

fn mount_one(ops: &mut impl MountOps, spec: &MountSpec) -> Result<MountOutcome, MountError> {
    ops.ensure_dir(Path::new(spec.target))
        .map_err(|source| MountError::CreateMountPoint {
            target: spec.target,
            source,
        })?;
    match ops.mount(spec) {
        Ok(()) => Ok(MountOutcome::Mounted),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(MountOutcome::AlreadyMounted),
        Err(source) => Err(MountError::Mount {
            fstype: spec.fstype,
            target: spec.target,
            source,
        }),
    }
}

/// Mounts `specs` in order, creating missing mount points.
///
/// Stops at the first failure of a required mount; failures of the others
/// are reported in the returned outcomes (one per spec, in order).
pub fn mount_all<'a>(
    ops: &mut impl MountOps,
    specs: &'a [MountSpec],
) -> Result<Vec<(&'a MountSpec, MountOutcome)>, MountError> {
    let mut outcomes = Vec::with_capacity(specs.len());
    for spec in specs {
        let outcome = match mount_one(ops, spec) {
            Ok(outcome) => outcome,
            Err(e) if spec.required => return Err(e),
            Err(e) => MountOutcome::Failed(e),
        };
        outcomes.push((spec, outcome));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    /// Records calls; fails the ones it is told to fail.
    #[derive(Default)]
    struct FakeOps {
        dirs: HashSet<String>,
        mkdir_errors: HashMap<&'static str, i32>,
        mount_errors: HashMap<&'static str, i32>,
        calls: Vec<String>,
    }

    impl MountOps for FakeOps {
        fn ensure_dir(&mut self, path: &Path) -> io::Result<()> {
            let p = path.to_str().unwrap();
            if let Some(&errno) = self.mkdir_errors.get(p) {
                return Err(io::Error::from_raw_os_error(errno));
            }
            if self.dirs.insert(p.to_owned()) {
                self.calls.push(format!("mkdir {p}"));
            }
            Ok(())
        }

        fn mount(&mut self, spec: &MountSpec) -> io::Result<()> {
            self.calls
                .push(format!("mount {} {}", spec.fstype, spec.target));
            match self.mount_errors.get(spec.target) {
                Some(&errno) => Err(io::Error::from_raw_os_error(errno)),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn the_guest_table_has_what_the_guest_needs() {
        let targets: Vec<_> = GUEST_MOUNTS.iter().map(|m| m.target).collect();
        assert_eq!(
            targets,
            [
                "/proc",
                "/sys",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/run",
                "/tmp",
                "/sys/fs/cgroup"
            ]
        );
        let devpts = GUEST_MOUNTS.iter().find(|m| m.fstype == "devpts").unwrap();
        let data = devpts.data.unwrap();
        assert!(data.contains("newinstance") && data.contains("ptmxmode=0666"));
        let cgroup = GUEST_MOUNTS
            .iter()
            .find(|m| m.target == "/sys/fs/cgroup")
            .unwrap();
        assert_eq!(cgroup.fstype, "cgroup2");
    }

    #[test]
    fn parents_are_mounted_before_children() {
        for (i, m) in GUEST_MOUNTS.iter().enumerate() {
            for later in &GUEST_MOUNTS[i + 1..] {
                assert!(
                    !m.target.starts_with(&format!("{}/", later.target)),
                    "{} is mounted before its parent {}",
                    m.target,
                    later.target
                );
            }
        }
    }

    #[test]
    fn creates_mount_points_then_mounts_in_order() {
        let mut ops = FakeOps::default();
        let outcomes = mount_all(&mut ops, GUEST_MOUNTS).unwrap();
        assert_eq!(outcomes.len(), GUEST_MOUNTS.len());
        assert!(outcomes
            .iter()
            .all(|(_, o)| matches!(o, MountOutcome::Mounted)));
        assert_eq!(ops.calls[0], "mkdir /proc");
        assert_eq!(ops.calls[1], "mount proc /proc");
        assert_eq!(ops.calls.last().unwrap(), "mount cgroup2 /sys/fs/cgroup");
    }

    #[test]
    fn ebusy_means_already_mounted() {
        let mut ops = FakeOps::default();
        ops.mount_errors.insert("/dev", libc::EBUSY);
        let outcomes = mount_all(&mut ops, GUEST_MOUNTS).unwrap();
        let (spec, outcome) = &outcomes[2];
        assert_eq!(spec.target, "/dev");
        assert!(matches!(outcome, MountOutcome::AlreadyMounted));
        // The ones after it are still mounted.
        assert!(ops.calls.contains(&"mount devpts /dev/pts".to_owned()));
    }

    #[test]
    fn a_failed_required_mount_stops_the_boot() {
        let mut ops = FakeOps::default();
        ops.mount_errors.insert("/sys", libc::ENODEV);
        let err = mount_all(&mut ops, GUEST_MOUNTS).unwrap_err();
        assert_eq!(err.target(), "/sys");
        assert_eq!(err.to_string(), "Failed to mount sysfs on /sys");
        assert!(!ops.calls.iter().any(|c| c.contains("/dev")));
    }

    #[test]
    fn a_failed_optional_mount_is_reported_and_the_rest_go_on() {
        let mut ops = FakeOps::default();
        ops.mount_errors.insert("/sys/fs/cgroup", libc::ENODEV);
        ops.mkdir_errors.insert("/dev/pts", libc::EROFS);
        let outcomes = mount_all(&mut ops, GUEST_MOUNTS).unwrap();
        let failed: Vec<_> = outcomes
            .iter()
            .filter_map(|(s, o)| match o {
                MountOutcome::Failed(e) => Some((s.target, e.to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(
            failed,
            [
                (
                    "/dev/pts",
                    "Failed to create mount point /dev/pts".to_owned()
                ),
                (
                    "/sys/fs/cgroup",
                    "Failed to mount cgroup2 on /sys/fs/cgroup".to_owned()
                ),
            ]
        );
        assert!(ops.calls.contains(&"mount tmpfs /tmp".to_owned()));
    }
}
