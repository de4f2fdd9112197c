//! Checks on an OCI runtime spec that the agent makes before handing it to
//! libcontainer, so a hostile or malformed spec fails early with an error
//! that names the field.

use std::path::{Component, Path};

use oci_spec::runtime::{PosixRlimitType, Process, Spec};

/// Where the kernel's ceiling for RLIMIT_NOFILE is.
const NR_OPEN: &str = "/proc/sys/fs/nr_open";
/// The kernel's default ceiling, when /proc does not say.
const DEFAULT_NR_OPEN: u64 = 1 << 20;

/// Why a spec was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("Spec has no root (root.path is required)")]
    MissingRoot,
    #[error("Spec has no process")]
    MissingProcess,
    #[error("Spec process has no args")]
    MissingArgs,
    #[error("Mount destination {0:?} is not absolute")]
    RelativeMountDestination(String),
    #[error("Mount destination {0:?} contains '..'")]
    MountDestinationEscapes(String),
    #[error("Spec version {0:?} is not 1.x")]
    UnsupportedVersion(String),
    #[error("Spec root is invalid: {0}")]
    InvalidRoot(String),
    #[error("Rlimit {kind}: soft limit {soft} is above the hard limit {hard}")]
    RlimitSoftAboveHard { kind: String, soft: u64, hard: u64 },
    #[error("Rlimit {kind} appears twice")]
    RlimitTwice { kind: String },
    #[error("Rlimit RLIMIT_NOFILE: {value} is above the kernel's ceiling {max} (fs.nr_open)")]
    NofileAboveCeiling { value: u64, max: u64 },
    #[error("Process cwd {0:?} is not absolute")]
    RelativeCwd(String),
}

/// Refuses specs libcontainer would reject late, or accept unsafely.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    if !spec.version().starts_with("1.") {
        return Err(SpecError::UnsupportedVersion(spec.version().clone()));
    }
    if spec.root().is_none() {
        return Err(SpecError::MissingRoot);
    }
    let process = spec.process().as_ref().ok_or(SpecError::MissingProcess)?;
    validate_process(process)?;
    for mount in spec.mounts().iter().flatten() {
        check_destination(mount.destination())?;
    }
    Ok(())
}

/// Refuses a process (a container's init, or an exec) whose args, cwd or
/// rlimits could only fail inside the container, with a vaguer error.
pub fn validate_process(process: &Process) -> Result<(), SpecError> {
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::MissingArgs);
    }
    if !process.cwd().is_absolute() {
        return Err(SpecError::RelativeCwd(process.cwd().display().to_string()));
    }
    let mut seen = Vec::new();
    for rlimit in process.rlimits().iter().flatten() {
        let kind = format!("{:?}", rlimit.typ());
        if seen.contains(&rlimit.typ()) {
            return Err(SpecError::RlimitTwice { kind });
        }
        seen.push(rlimit.typ());
        let (soft, hard) = (rlimit.soft(), rlimit.hard());
        if soft > hard {
            return Err(SpecError::RlimitSoftAboveHard { kind, soft, hard });
        }
        if rlimit.typ() == PosixRlimitType::RlimitNofile {
            let max = nr_open();
            if hard > max {
                return Err(SpecError::NofileAboveCeiling { value: hard, max });
            }
        }
    }
    Ok(())
}

fn nr_open() -> u64 {
    std::fs::read_to_string(NR_OPEN)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_NR_OPEN)
}

fn check_destination(dest: &Path) -> Result<(), SpecError> {
    let shown = || dest.display().to_string();
    if !dest.is_absolute() {
        return Err(SpecError::RelativeMountDestination(shown()));
    }
    if dest.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::MountDestinationEscapes(shown()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{MountBuilder, RootBuilder};

    use super::*;

    fn base() -> Spec {
        let mut spec = Spec::default();
        spec.set_root(Some(RootBuilder::default().path("rootfs").build().unwrap()));
        spec
    }

    #[test]
    fn default_spec_with_root_passes() {
        assert_eq!(validate(&base()), Ok(()));
    }

    #[test]
    fn missing_root_is_refused() {
        let mut spec = base();
        spec.set_root(None);
        assert_eq!(validate(&spec), Err(SpecError::MissingRoot));
    }

    #[test]
    fn dotdot_destination_is_refused() {
        let mut spec = base();
        let mount = MountBuilder::default()
            .destination("/proc/../../etc")
            .typ("tmpfs")
            .source("tmpfs")
            .build()
            .unwrap();
        spec.set_mounts(Some(vec![mount]));
        assert!(matches!(
            validate(&spec),
            Err(SpecError::MountDestinationEscapes(_))
        ));
    }

    fn with_rlimit(typ: PosixRlimitType, soft: u64, hard: u64) -> Spec {
        let mut spec = base();
        let mut process = spec.process().clone().unwrap();
        let rlimit = oci_spec::runtime::PosixRlimitBuilder::default()
            .typ(typ)
            .soft(soft)
            .hard(hard)
            .build()
            .unwrap();
        process.set_rlimits(Some(vec![rlimit]));
        spec.set_process(Some(process));
        spec
    }

    #[test]
    fn absurd_rlimits_are_refused() {
        assert!(matches!(
            validate(&with_rlimit(PosixRlimitType::RlimitNproc, 10, 5)),
            Err(SpecError::RlimitSoftAboveHard {
                soft: 10,
                hard: 5,
                ..
            })
        ));
        assert!(matches!(
            validate(&with_rlimit(
                PosixRlimitType::RlimitNofile,
                1 << 40,
                1 << 40
            )),
            Err(SpecError::NofileAboveCeiling { .. })
        ));
        assert_eq!(
            validate(&with_rlimit(PosixRlimitType::RlimitNofile, 1024, 4096)),
            Ok(())
        );
    }

    #[test]
    fn relative_cwd_is_refused() {
        let mut spec = base();
        let mut process = spec.process().clone().unwrap();
        process.set_cwd("tmp".into());
        spec.set_process(Some(process));
        assert!(matches!(validate(&spec), Err(SpecError::RelativeCwd(_))));
    }

    #[test]
    fn relative_destination_is_refused() {
        assert!(matches!(
            check_destination(Path::new("tmp")),
            Err(SpecError::RelativeMountDestination(_))
        ));
    }
}
