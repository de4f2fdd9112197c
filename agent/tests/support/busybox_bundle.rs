//! Builds an OCI bundle whose rootfs is Debian's static busybox
//! (`apt-get install -y busybox-static`), for the container engine tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxNamespaceType, ProcessBuilder, Spec};

/// The busybox root file system builder every test uses (the integration tests' own,
/// `tests/src/busybox_bundle.rs`): one builder, so the engine tests and the guest tests
/// run containers on the same root.
#[path = "../../../tests/src/busybox_bundle.rs"]
mod shared;

pub use shared::BUSYBOX;

const APPLETS: &[&str] = &[
    "sh", "echo", "printf", "sleep", "seq", "head", "yes", "cat", "true", "false", "ls", "stty",
    "tty", "id",
];

/// Makes `<dir>/rootfs` a minimal busybox root, if not there yet.
pub fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    if rootfs.join("bin/busybox").exists() {
        return Ok(rootfs);
    }
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} is missing: apt-get install -y busybox-static");
    }
    shared::rootfs(dir, APPLETS)
}

/// oci-spec's default spec (runc's: pid, net, ipc, uts and mount namespaces,
/// default capabilities, masked paths) running `args`. The cgroup mount is
/// dropped where /sys/fs/cgroup is not cgroup v2: the host's v1/hybrid
/// layout is not what the guest has.
pub fn spec(args: &[&str]) -> Result<Spec> {
    let mut spec = Spec::default();
    let process = ProcessBuilder::default()
        .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .terminal(false)
        .build()?;
    spec.set_process(Some(process));
    if !cgroup2_mounted() {
        let mounts = spec.mounts().clone().unwrap_or_default();
        spec.set_mounts(Some(
            mounts
                .into_iter()
                .filter(|m| m.typ().as_deref() != Some("cgroup"))
                .collect(),
        ));
    }
    // Keep the namespaces the guest uses; sanity-check runc's default set.
    let linux = spec.linux().as_ref().context("default spec has linux")?;
    let has_pid = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Pid);
    if !has_pid {
        bail!("default spec without a pid namespace");
    }
    Ok(spec)
}

/// Writes `spec` as `<dir>/config.json` next to a busybox rootfs.
pub fn write_bundle(dir: &Path, spec: &Spec) -> Result<PathBuf> {
    busybox_rootfs(dir)?;
    spec.save(dir.join("config.json"))?;
    Ok(dir.to_owned())
}

pub fn cgroup2_mounted() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}
