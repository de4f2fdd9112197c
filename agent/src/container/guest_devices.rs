//! A privileged container gets the guest's devices.
//!
//! containerd makes a container privileged (CRI `privileged: true`, `ctr run
//! --privileged`) by allowing every device in its device cgroup and listing the host's
//! device nodes in `linux.devices`. Under husk the host's nodes never reach the guest
//! (the shim drops `linux.devices`: they name host devices), so the agent lists the
//! guest's own instead: the guest's devices a privileged workload uses (tun, fuse, loop
//! devices and their control node, kmsg, the VM's disks, the hardware RNG), found under
//! the guest's /dev. Terminals are left out (the guest has hundreds: virtual consoles,
//! serial ports and legacy BSD ptys; making 600 nodes took the build past the shim's
//! timeout), as are the nodes of the VM's own plumbing (its vsock, memory, ports). A
//! privileged container of a husk pod can so use what the VM has, never a host device.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType, Spec};

/// Whether the spec's device cgroup allows every device (containerd's privileged mark):
/// an allow rule with access `rwm` and no type, major or minor, and no deny after it.
pub fn allows_all_devices(spec: &Spec) -> bool {
    let rules = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().as_ref());
    let Some(rules) = rules else { return false };
    let mut all = false;
    for r in rules {
        let whole = r.typ().is_none_or(|t| t == LinuxDeviceType::A)
            && r.major().is_none()
            && r.minor().is_none();
        if whole {
            all = r.allow() && r.access().as_deref().is_some_and(|a| a.contains("rwm"));
        } else if !r.allow() && all {
            all = false;
        }
    }
    all
}

/// Whether a guest device (its path relative to /dev) is one a privileged container
/// gets: see the module's comment.
pub fn wanted(rel: &Path) -> bool {
    let name = rel.to_string_lossy();
    if matches!(
        name.as_ref(),
        "net/tun"
            | "fuse"
            | "loop-control"
            | "kmsg"
            | "hwrng"
            | "full"
            | "zero"
            | "null"
            | "random"
            | "urandom"
    ) {
        return true;
    }
    // Loop devices and disks: loop0, vda, vdb1, sda, nvme0n1.
    !name.contains('/')
        && ["loop", "vd", "sd", "nvme"].iter().any(|p| {
            name.strip_prefix(p)
                .and_then(|r| r.chars().next())
                .is_some_and(|c| c.is_ascii_digit() || (c.is_ascii_lowercase() && *p != "loop"))
        })
}

/// The character and block device nodes under `dev` that [`wanted`] takes (not
/// following symlinks), sorted by path.
pub fn device_nodes(dev: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    let mut dirs = vec![dev.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                if !matches!(
                    path.file_name().and_then(|n| n.to_str()),
                    Some("pts" | "shm" | "mqueue")
                ) {
                    dirs.push(path);
                }
                continue;
            }
            let typ = if ft.is_char_device() {
                LinuxDeviceType::C
            } else if ft.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            let rel = path.strip_prefix(dev).unwrap_or(&path);
            if !wanted(rel) {
                continue;
            }
            let rdev = meta.rdev();
            // The container sees it at the same path.
            let at = PathBuf::from("/dev").join(rel);
            if let Ok(d) = LinuxDeviceBuilder::default()
                .path(at)
                .typ(typ)
                .major(libc::major(rdev) as i64)
                .minor(libc::minor(rdev) as i64)
                .file_mode(meta.mode() & 0o7777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
            {
                out.push(d);
            }
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

/// For a privileged spec (see [`allows_all_devices`]), adds the guest's device nodes
/// under `dev` to `linux.devices` (keeping any the spec lists at the same paths).
/// Returns how many were added.
pub fn add_guest_devices(spec: &mut Spec, dev: &Path) -> usize {
    if !allows_all_devices(spec) {
        return 0;
    }
    let Some(mut linux) = spec.linux().clone() else {
        return 0;
    };
    let mut devices = linux.devices().clone().unwrap_or_default();
    let before = devices.len();
    for d in device_nodes(dev) {
        // The console is the container's own (terminal or pipes), as under runc.
        if d.path() == Path::new("/dev/console") || d.path() == Path::new("/dev/tty") {
            continue;
        }
        if !devices.iter().any(|x| x.path() == d.path()) {
            devices.push(d);
        }
    }
    let added = devices.len() - before;
    linux.set_devices(Some(devices));
    spec.set_linux(Some(linux));
    added
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxResourcesBuilder};

    use super::*;

    fn with_rules(rules: Vec<(bool, Option<LinuxDeviceType>, Option<i64>)>) -> Spec {
        let mut spec = Spec::default();
        let rules = rules
            .into_iter()
            .map(|(allow, typ, major)| {
                let mut b = LinuxDeviceCgroupBuilder::default()
                    .allow(allow)
                    .access("rwm");
                if let Some(t) = typ {
                    b = b.typ(t);
                }
                if let Some(m) = major {
                    b = b.major(m);
                }
                b.build().unwrap()
            })
            .collect::<Vec<_>>();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_resources(Some(
            LinuxResourcesBuilder::default()
                .devices(rules)
                .build()
                .unwrap(),
        ));
        spec.set_linux(Some(linux));
        spec
    }

    #[test]
    fn only_an_allow_all_rule_makes_a_spec_privileged() {
        assert!(!allows_all_devices(&Spec::default()));
        // containerd's default: deny all, then allow some.
        assert!(!allows_all_devices(&with_rules(vec![
            (false, None, None),
            (true, Some(LinuxDeviceType::C), Some(1)),
        ])));
        // Privileged: deny all, then allow all.
        assert!(allows_all_devices(&with_rules(vec![
            (false, None, None),
            (true, None, None),
        ])));
        assert!(allows_all_devices(&with_rules(vec![(
            true,
            Some(LinuxDeviceType::A),
            None
        )])));
        // An allow-all followed by a deny is not everything.
        assert!(!allows_all_devices(&with_rules(vec![
            (true, None, None),
            (false, Some(LinuxDeviceType::C), Some(10)),
        ])));
    }

    #[test]
    fn terminals_and_the_vms_plumbing_are_not_given() {
        for yes in [
            "net/tun",
            "fuse",
            "loop0",
            "loop-control",
            "vda",
            "vdb1",
            "kmsg",
            "hwrng",
        ] {
            assert!(wanted(Path::new(yes)), "{yes}");
        }
        for no in [
            "tty0", "ttyS0", "ptyp0", "ttyp0", "console", "vsock", "mem", "port", "vcs1", "ptmx",
            "loopx", "net/x",
        ] {
            assert!(!wanted(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn the_guests_nodes_are_added_to_a_privileged_spec_only() {
        // The machine's /dev has /dev/null at least.
        let nodes = device_nodes(Path::new("/dev"));
        let null = nodes
            .iter()
            .find(|d| d.path() == Path::new("/dev/null"))
            .expect("/dev/null");
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert!(nodes.iter().all(|d| !d.path().starts_with("/dev/pts")));
        assert!(nodes
            .iter()
            .all(|d| !d.path().to_string_lossy().contains("tty")));

        let mut plain = with_rules(vec![(false, None, None)]);
        assert_eq!(add_guest_devices(&mut plain, Path::new("/dev")), 0);
        assert!(plain.linux().as_ref().unwrap().devices().is_none());

        let mut privileged = with_rules(vec![(false, None, None), (true, None, None)]);
        let added = add_guest_devices(&mut privileged, Path::new("/dev"));
        assert!(added > 0);
        let devices = privileged
            .linux()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(devices.iter().any(|d| d.path() == Path::new("/dev/null")));
        assert!(devices
            .iter()
            .all(|d| d.path() != Path::new("/dev/console")));
    }
}
