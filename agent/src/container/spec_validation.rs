//! Checks on an OCI runtime spec that the agent makes before handing it to
//! libcontainer, so a hostile or malformed spec fails early with an error
//! that names the field.

use std::path::{Component, Path};

use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};

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
    #[error(
        "The {kind} namespace path {path:?} names no container of this pod: a container \
         joins only the pid, ipc or uts namespace of a running container of its pod, \
         as /proc/<its init pid>/ns/{kind}"
    )]
    ForeignNamespace { kind: String, path: String },
    #[error(
        "linux.rootfsPropagation {0:?} is not one of shared, slave, private, unbindable \
         (or their recursive r-forms)"
    )]
    UnknownRootfsPropagation(String),
}

/// Writes `linux.rootfsPropagation` the way libcontainer reads it. containerd's CRI sets
/// the recursive forms runc accepts (`rslave` for a HostToContainer volume, `rshared`
/// for a Bidirectional one), which libcontainer refuses as unknown ("failed to prepare
/// rootfs"); it applies the root's propagation recursively anyway, so `rslave` means
/// `slave` there.
pub fn normalize_rootfs_propagation(spec: &mut Spec) -> Result<(), SpecError> {
    let Some(linux) = spec.linux_mut().as_mut() else {
        return Ok(());
    };
    let Some(p) = linux.rootfs_propagation().clone() else {
        return Ok(());
    };
    let plain = match p.strip_prefix('r').unwrap_or(&p) {
        k @ ("shared" | "slave" | "private" | "unbindable") => k.to_owned(),
        _ => return Err(SpecError::UnknownRootfsPropagation(p)),
    };
    linux.set_rootfs_propagation(Some(plain));
    Ok(())
}

/// The file name of a namespace kind under /proc/<pid>/ns.
fn ns_file(kind: LinuxNamespaceType) -> Option<&'static str> {
    match kind {
        LinuxNamespaceType::Pid => Some("pid"),
        LinuxNamespaceType::Ipc => Some("ipc"),
        LinuxNamespaceType::Uts => Some("uts"),
        _ => None,
    }
}

/// Refuses a namespace joined by path unless it is the pid, ipc or uts namespace of one
/// of `pod_pids` (the init pids of the pod's running containers), named
/// `/proc/<pid>/ns/<kind>`. That is how containerd's CRI joins a container to its pod
/// (the shim reports guest pids, so the paths are the guest's); anything else would
/// name a namespace of the guest's own, or of a process outside the pod.
pub fn check_joined_namespaces(spec: &Spec, pod_pids: &[i32]) -> Result<(), SpecError> {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    for ns in namespaces.into_iter().flatten() {
        let Some(path) = ns.path() else { continue };
        let kind = ns.typ();
        let shown = path.display().to_string();
        let refuse = || SpecError::ForeignNamespace {
            kind: ns_file(kind).map_or_else(|| format!("{kind:?}").to_lowercase(), str::to_owned),
            path: shown.clone(),
        };
        let file = ns_file(kind).ok_or_else(refuse)?;
        let pid = shown
            .strip_prefix("/proc/")
            .and_then(|rest| rest.strip_suffix(&format!("/ns/{file}")))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<i32>().ok())
            .ok_or_else(refuse)?;
        if !pod_pids.contains(&pid) {
            return Err(refuse());
        }
    }
    Ok(())
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

    fn joining(kind: LinuxNamespaceType, path: &str) -> Spec {
        let mut spec = base();
        let ns = oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(kind)
            .path(path)
            .build()
            .unwrap();
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_namespaces(Some(vec![ns]));
        spec.set_linux(Some(linux));
        spec
    }

    #[test]
    fn only_the_pods_pid_ipc_and_uts_namespaces_can_be_joined() {
        use LinuxNamespaceType::*;
        let pods = [7, 42];
        for (kind, path) in [
            (Pid, "/proc/42/ns/pid"),
            (Ipc, "/proc/7/ns/ipc"),
            (Uts, "/proc/42/ns/uts"),
        ] {
            assert_eq!(
                check_joined_namespaces(&joining(kind, path), &pods),
                Ok(()),
                "{path}"
            );
        }
        for (kind, path) in [
            (Pid, "/proc/1/ns/pid"),  // the agent's own
            (Pid, "/proc/43/ns/pid"), // not a container of the pod
            (Pid, "/proc/42/ns/ipc"), // the wrong kind
            (Ipc, "/proc/42/../1/ns/ipc"),
            (Ipc, "/proc/+42/ns/ipc"),
            (Uts, "/var/run/netns/x"),
            (Network, "/proc/42/ns/net"), // the guest's network is the pod's already
            (Mount, "/proc/42/ns/mnt"),
            (User, "/proc/42/ns/user"),
        ] {
            let e = check_joined_namespaces(&joining(kind, path), &pods).unwrap_err();
            assert!(
                matches!(e, SpecError::ForeignNamespace { .. }),
                "{path}: {e:?}"
            );
            assert!(e.to_string().contains(path), "{e}");
        }
        // The default spec's new namespaces need no pod.
        assert_eq!(check_joined_namespaces(&base(), &[]), Ok(()));
    }

    #[test]
    fn containerds_recursive_rootfs_propagation_is_written_as_libcontainer_reads_it() {
        let with = |p: Option<&str>| {
            let mut spec = base();
            if let Some(l) = spec.linux_mut().as_mut() {
                l.set_rootfs_propagation(p.map(String::from));
            }
            spec
        };
        for (given, want) in [
            ("rslave", "slave"),
            ("rshared", "shared"),
            ("rprivate", "private"),
            ("slave", "slave"),
            ("unbindable", "unbindable"),
        ] {
            let mut spec = with(Some(given));
            normalize_rootfs_propagation(&mut spec).unwrap();
            let got = spec.linux().as_ref().unwrap().rootfs_propagation().clone();
            assert_eq!(got.as_deref(), Some(want), "{given}");
        }
        let mut none = with(None);
        normalize_rootfs_propagation(&mut none).unwrap();
        assert_eq!(none.linux().as_ref().unwrap().rootfs_propagation(), &None);
        let mut bad = with(Some("rbogus"));
        assert_eq!(
            normalize_rootfs_propagation(&mut bad),
            Err(SpecError::UnknownRootfsPropagation("rbogus".into()))
        );
    }

    #[test]
    fn relative_destination_is_refused() {
        assert!(matches!(
            check_destination(Path::new("tmp")),
            Err(SpecError::RelativeMountDestination(_))
        ));
    }
}
