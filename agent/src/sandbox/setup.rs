//! CreateSandbox's guest set-up: hostname, resolv.conf, /etc/hosts,
//! sysctls, shared mounts; and their undoing on DestroySandbox.
//!
//! In the guest (PID 1) these act on the guest itself. On the host
//! (`husk-agent serve`) the agent must not rename the machine or change
//! its kernel parameters: the hostname, resolv.conf and hosts are written under
//! `<root>/sandbox/etc/`, sysctls are checked but not applied, and shared
//! mounts are mounted under `<root>/sandbox/` (their destination re-rooted
//! there), so a test can see them and DestroySandbox removes them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use husk_protocol::agent::{DNSConfig, Mount};

use crate::sys;
use tracing::{info, warn};

/// Errors of this module; all but `Apply` are the caller's bad input.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("Invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("Cannot {what}")]
    Apply {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Where the set-up lands.
#[derive(Debug, Clone)]
pub enum Target {
    /// The guest itself.
    Guest,
    /// Re-rooted under this directory (host mode).
    Host(PathBuf),
}

fn invalid(what: &'static str, value: &str, why: &'static str) -> SetupError {
    SetupError::Invalid {
        what,
        value: value.to_string(),
        why,
    }
}

fn apply(what: String) -> impl FnOnce(io::Error) -> SetupError {
    move |source| SetupError::Apply { what, source }
}

/// Checks a hostname: 1..=64 bytes of letters, digits, '-' and '.'.
pub fn check_hostname(name: &str) -> Result<(), SetupError> {
    if name.is_empty() || name.len() > 64 {
        return Err(invalid("hostname", name, "must be 1 to 64 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid(
            "hostname",
            name,
            "only letters, digits, '-' and '.'",
        ));
    }
    Ok(())
}

/// The /proc/sys path of a sysctl name ("net.ipv4.ip_forward").
pub fn sysctl_path(name: &str) -> Result<PathBuf, SetupError> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains("..")
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(invalid("sysctl name", name, "expected words joined by '.'"));
    }
    Ok(Path::new("/proc/sys").join(name.replace('.', "/")))
}

fn check_sysctl_value(name: &str, value: &str) -> Result<(), SetupError> {
    if value.contains(['\n', '\0']) || value.len() > 4096 {
        return Err(invalid(
            "sysctl value",
            name,
            "no newline, at most 4096 bytes",
        ));
    }
    Ok(())
}

/// The resolv.conf text for `dns`.
pub fn resolv_conf(dns: &DNSConfig) -> Result<String, SetupError> {
    let clean = |what, s: &String| {
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '\0') {
            Err(invalid(what, s, "must be one word"))
        } else {
            Ok(())
        }
    };
    let mut out = String::new();
    for server in &dns.servers {
        server
            .parse::<std::net::IpAddr>()
            .map_err(|_| invalid("name server", server, "not an IP address"))?;
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.searches.is_empty() {
        for s in &dns.searches {
            clean("search domain", s)?;
        }
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        for o in &dns.options {
            clean("resolv.conf option", o)?;
        }
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out)
}

/// An absolute path without `..`.
pub fn check_destination(dest: &str) -> Result<PathBuf, SetupError> {
    let path = Path::new(dest);
    if !path.is_absolute() {
        return Err(invalid("mount destination", dest, "not absolute"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid("mount destination", dest, "contains '..'"));
    }
    Ok(path.to_owned())
}

/// mount(2) flags and the data string from OCI-style options.
pub fn mount_flags(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "relatime" => flags |= libc::MS_RELATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// Re-roots an absolute guest path under the target.
fn place(target: &Target, path: &Path) -> PathBuf {
    match target {
        Target::Guest => path.to_owned(),
        Target::Host(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
    }
}

/// Sets the hostname.
pub fn set_hostname(target: &Target, name: &str) -> Result<(), SetupError> {
    check_hostname(name)?;
    match target {
        Target::Guest => sys::set_hostname(name).map_err(apply("set the hostname".into())),
        Target::Host(_) => write_file(
            &place(target, Path::new("/etc/hostname")),
            &format!("{name}\n"),
        ),
    }
}

/// Writes /etc/resolv.conf.
pub fn set_dns(target: &Target, dns: &DNSConfig) -> Result<(), SetupError> {
    let text = resolv_conf(dns)?;
    write_file(&place(target, Path::new("/etc/resolv.conf")), &text)
}

/// The /etc/hosts text: the localhost lines, and the pod's hostname on
/// its address once UpdateNetwork gave one.
pub fn hosts(hostname: Option<&str>, address: Option<std::net::IpAddr>) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    if let (Some(name), Some(addr)) = (hostname, address) {
        out.push_str(&format!("{addr}\t{name}\n"));
    }
    out
}

/// Writes /etc/hosts (see [`hosts`]).
pub fn set_hosts(
    target: &Target,
    hostname: Option<&str>,
    address: Option<std::net::IpAddr>,
) -> Result<(), SetupError> {
    write_file(
        &place(target, Path::new("/etc/hosts")),
        &hosts(hostname, address),
    )
}

fn write_file(path: &Path, text: &str) -> Result<(), SetupError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(apply(format!("create {}", dir.display())))?;
    }
    fs::write(path, text).map_err(apply(format!("write {}", path.display())))
}

/// Takes a container's `net.*` sysctls out of its spec, for [`set_sysctls`] to write.
///
/// Every container of a husk pod runs in the guest's network namespace, which is the
/// pod's (the shim drops the spec's network namespace entry). libcontainer, like runc,
/// refuses `net.*` sysctls for a container without a network namespace of its own (they
/// would change the host's); here that namespace is the pod's, which is where the CRI
/// means them to go (a pod's sysctls are the sandbox container's, and runc writes them
/// in the pod's network namespace). The rest stay for libcontainer: the IPC ones go to
/// the pod's IPC namespace, which the pod's containers join.
pub fn take_net_sysctls(spec: &mut oci_spec::runtime::Spec) -> BTreeMap<String, String> {
    let Some(mut linux) = spec.linux().clone() else {
        return BTreeMap::new();
    };
    let Some(mut sysctls) = linux.sysctl().clone() else {
        return BTreeMap::new();
    };
    let net: BTreeMap<String, String> = sysctls
        .iter()
        .filter(|(k, _)| k.starts_with("net."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if net.is_empty() {
        return net;
    }
    sysctls.retain(|k, _| !net.contains_key(k));
    linux.set_sysctl(Some(sysctls));
    spec.set_linux(Some(linux));
    net
}

/// Checks every sysctl first, then applies them (guest only).
pub fn set_sysctls<'a>(
    target: &Target,
    sysctls: impl Iterator<Item = (&'a String, &'a String)> + Clone,
) -> Result<(), SetupError> {
    for (name, value) in sysctls.clone() {
        sysctl_path(name)?;
        check_sysctl_value(name, value)?;
    }
    for (name, value) in sysctls {
        let path = sysctl_path(name)?;
        match target {
            Target::Guest => {
                fs::write(&path, value).map_err(apply(format!("set sysctl {name}")))?
            }
            Target::Host(_) => info!("Not setting sysctl {name}={value} on the host"),
        }
    }
    Ok(())
}

/// Mounts the shared mounts; returns where they landed, for unmounting.
/// On an error the ones already mounted are unmounted again.
pub fn mount_shared(target: &Target, mounts: &[Mount]) -> Result<Vec<PathBuf>, SetupError> {
    let mut planned = Vec::new();
    for m in mounts {
        let dest = check_destination(&m.destination)?;
        if m.source.contains('\0') || m.type_.contains('\0') {
            return Err(invalid(
                "mount",
                &m.destination,
                "NUL byte in source or type",
            ));
        }
        planned.push((place(target, &dest), m));
    }
    let mut done = Vec::new();
    for (dest, m) in planned {
        let result = fs::create_dir_all(&dest)
            .map_err(apply(format!("create {}", dest.display())))
            .and_then(|()| {
                let (flags, data) = mount_flags(&m.options);
                let fstype = if m.type_ == "bind" {
                    "none"
                } else {
                    m.type_.as_str()
                };
                let data = (!data.is_empty()).then_some(data.as_str());
                sys::mount(&m.source, &dest, fstype, flags, data).map_err(apply(format!(
                    "mount {} on {}",
                    m.source,
                    dest.display()
                )))
            });
        if let Err(e) = result {
            unmount_all(&done);
            return Err(e);
        }
        if m.type_ == "virtiofs" {
            raise_readahead(&dest);
        }
        done.push(dest);
    }
    Ok(done)
}

/// Read-ahead of a virtio-fs mount, in KiB: a sequential read then asks virtiofsd for
/// 1 MiB at a time (FUSE's most per request) instead of the kernel's default 128 KiB, each
/// request a round trip to the host.
pub const VIRTIOFS_READ_AHEAD_KB: u32 = 1024;

/// Sets [`VIRTIOFS_READ_AHEAD_KB`] on the backing device of the mount at `dest`
/// (`/sys/class/bdi/<major>:<minor>/read_ahead_kb`). Best effort: a failure costs only
/// speed, and is logged.
fn raise_readahead(dest: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match fs::metadata(dest) {
        Ok(m) => m.dev(),
        Err(e) => {
            warn!(
                "Cannot stat {}: {e}; its read-ahead stays as it is",
                dest.display()
            );
            return;
        }
    };
    let bdi = bdi_read_ahead_path(dev);
    if let Err(e) = fs::write(&bdi, VIRTIOFS_READ_AHEAD_KB.to_string()) {
        warn!("Cannot set {}: {e}", bdi.display());
    }
}

/// The sysfs file of the read-ahead of device number `dev`.
pub fn bdi_read_ahead_path(dev: u64) -> PathBuf {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
}

/// Unmounts, last mounted first (lazily, so a busy mount does not stay).
pub fn unmount_all(mounted: &[PathBuf]) {
    for dest in mounted.iter().rev() {
        if let Err(e) = sys::umount_detach(dest) {
            tracing::warn!("Cannot unmount {}: {e}", dest.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_ahead_file_is_the_devices_bdi() {
        assert_eq!(
            bdi_read_ahead_path(libc::makedev(0, 42)),
            PathBuf::from("/sys/class/bdi/0:42/read_ahead_kb")
        );
        assert_eq!(
            bdi_read_ahead_path(libc::makedev(259, 1048577)),
            PathBuf::from("/sys/class/bdi/259:1048577/read_ahead_kb")
        );
    }

    #[test]
    fn hostnames() {
        assert!(check_hostname("pod-1.example").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn net_sysctls_leave_the_spec_and_the_rest_stay() {
        let mut spec = oci_spec::runtime::Spec::default();
        assert!(take_net_sysctls(&mut spec).is_empty());
        let mut linux = spec.linux().clone().unwrap();
        linux.set_sysctl(Some(
            [
                ("net.ipv4.ip_local_port_range", "33000 34000"),
                ("kernel.shm_rmid_forced", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ));
        spec.set_linux(Some(linux));
        let net = take_net_sysctls(&mut spec);
        assert_eq!(
            net.into_iter().collect::<Vec<_>>(),
            [(
                "net.ipv4.ip_local_port_range".to_owned(),
                "33000 34000".to_owned()
            )]
        );
        let left = spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["kernel.shm_rmid_forced"]);
    }

    #[test]
    fn sysctl_names() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        for bad in ["", "..", "net..x", "net/ipv4", ".net", "a b"] {
            assert!(sysctl_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_sysctl_value("a", "1\n2").is_err());
    }

    #[test]
    fn resolv_conf_text() {
        let mut dns = DNSConfig::new();
        dns.servers = vec!["10.0.0.10".into(), "::1".into()];
        dns.searches = vec!["svc.local".into(), "local".into()];
        dns.options = vec!["ndots:5".into()];
        assert_eq!(
            resolv_conf(&dns).unwrap(),
            "nameserver 10.0.0.10\nnameserver ::1\nsearch svc.local local\noptions ndots:5\n"
        );
        dns.servers = vec!["not-an-ip".into()];
        assert!(resolv_conf(&dns).is_err());
        dns.servers = vec![];
        dns.searches = vec!["a b".into()];
        assert!(resolv_conf(&dns).is_err());
    }

    #[test]
    fn hosts_text() {
        let base = hosts(None, None);
        assert!(base.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost"));
        assert_eq!(base.lines().count(), 6);
        // Without an address the hostname has no line, and vice versa.
        assert_eq!(hosts(Some("pod-one"), None), base);
        assert_eq!(hosts(None, Some("10.88.0.5".parse().unwrap())), base);
        let with = hosts(Some("pod-one"), Some("10.88.0.5".parse().unwrap()));
        assert_eq!(with, format!("{base}10.88.0.5\tpod-one\n"));
        let v6 = hosts(Some("pod-one"), Some("fd00::5".parse().unwrap()));
        assert!(v6.ends_with("\nfd00::5\tpod-one\n"), "{v6}");
    }

    #[test]
    fn destinations_and_flags() {
        assert!(check_destination("/run/share").is_ok());
        assert!(check_destination("run").is_err());
        assert!(check_destination("/run/../etc").is_err());
        let (flags, data) = mount_flags(&["ro".into(), "nosuid".into(), "size=64m".into()]);
        assert_eq!(flags, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(data, "size=64m");
    }

    #[test]
    fn host_target_reroots() {
        let t = Target::Host("/tmp/x".into());
        assert_eq!(
            place(&t, Path::new("/etc/hostname")),
            Path::new("/tmp/x/etc/hostname")
        );
        assert_eq!(place(&Target::Guest, Path::new("/etc")), Path::new("/etc"));
    }
}
