//! An OCI bundle for the agent's containers in tests and benchmarks: a root file system of
//! Debian's static busybox (`apt-get install -y busybox-static`) and a minimal runtime
//! spec, the same for husk-agent and for runc.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Makes `<dir>/rootfs` a busybox root with a link per applet in `applets`, and returns
/// its path.
pub fn rootfs(dir: &Path, applets: &[&str]) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(sub)).with_context(|| format!("mkdir {sub}"))?;
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox"))
        .with_context(|| format!("{BUSYBOX} (apt-get install -y busybox-static)"))?;
    for applet in applets {
        symlink("busybox", rootfs.join("bin").join(applet))
            .with_context(|| format!("link {applet}"))?;
    }
    Ok(rootfs)
}

/// What differs between the specs [`spec`] makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecOptions<'a> {
    /// The container's hostname (it has its own UTS namespace).
    pub hostname: &'a str,
    /// A devpts at /dev/pts, for processes with a terminal.
    pub devpts: bool,
    /// A network namespace of its own, besides the pid, ipc, uts and mount ones.
    pub network_namespace: bool,
}

/// A minimal OCI runtime spec running `args` as root in `rootfs` (the bundle's `rootfs`
/// dir, which runc reads; the agent is given the rootfs path instead), with /proc and a
/// tmpfs /dev mounted.
pub fn spec(args: &[&str], options: &SpecOptions) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({
            "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        }),
    ];
    if options.devpts {
        mounts.push(json!({
            "destination": "/dev/pts", "type": "devpts", "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        }));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if options.network_namespace {
        namespaces.push(json!({"type": "network"}));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
        },
        "root": {"path": "rootfs"},
        "hostname": options.hostname,
        "mounts": mounts,
        "linux": {"namespaces": namespaces},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_options_add_devpts_and_a_network_namespace() {
        let plain = spec(&["true"], &SpecOptions::default());
        assert_eq!(plain["process"]["args"], json!(["true"]));
        assert_eq!(plain["mounts"].as_array().unwrap().len(), 2);
        assert_eq!(plain["linux"]["namespaces"].as_array().unwrap().len(), 4);

        let full = spec(
            &["sh", "-c", "true"],
            &SpecOptions {
                hostname: "h",
                devpts: true,
                network_namespace: true,
            },
        );
        assert_eq!(full["hostname"], "h");
        assert_eq!(full["mounts"][2]["destination"], "/dev/pts");
        assert_eq!(full["linux"]["namespaces"][4]["type"], "network");
    }
}
