//! Host mounts of a pod's share: the container rootfs containerd hands over, bind-mount
//! sources, and unmounting everything under a directory at teardown. The syscalls sit
//! behind [`HostOps`], so the logic is unit-tested with a recording double, without root.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub mod beneath;

use beneath::{Anchored, Kind};

/// One mount as containerd's Create request gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("Cannot mount {fs_type} {source_path} on {target}: {message}")]
    Mount {
        fs_type: String,
        source_path: String,
        target: PathBuf,
        message: String,
    },
    #[error("Cannot bind {source_path} on {target}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The host operations the shim's mount logic needs.
pub trait HostOps: Send + Sync {
    /// Mounts `source` of type `fs_type` with containerd-style `options` on `target`.
    fn mount(
        &self,
        fs_type: &str,
        source: &str,
        options: &[String],
        target: &Path,
    ) -> Result<(), MountError>;
    /// Bind-mounts `source` (recursively) on `target`; `readonly` remounts the bind
    /// read-only (its own mount; submounts keep their flags, as runc's `ro` bind).
    fn bind(&self, source: &Path, target: &Anchored, readonly: bool) -> Result<(), MountError>;
    /// Detaches the mount on `target`.
    fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// The text of /proc/self/mountinfo.
    fn mountinfo(&self) -> Result<String, MountError>;
}

/// A shared handle works as the host it points at (a test keeps one to inspect a fake).
impl<T: HostOps + ?Sized> HostOps for std::sync::Arc<T> {
    fn mount(
        &self,
        fs_type: &str,
        source: &str,
        options: &[String],
        target: &Path,
    ) -> Result<(), MountError> {
        (**self).mount(fs_type, source, options, target)
    }
    fn bind(&self, source: &Path, target: &Anchored, readonly: bool) -> Result<(), MountError> {
        (**self).bind(source, target, readonly)
    }
    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        (**self).unmount(target)
    }
    fn mountinfo(&self) -> Result<String, MountError> {
        (**self).mountinfo()
    }
}

/// The real thing.
pub struct RealHost;

impl HostOps for RealHost {
    fn mount(
        &self,
        fs_type: &str,
        source: &str,
        options: &[String],
        target: &Path,
    ) -> Result<(), MountError> {
        containerd_shim::mount::mount_rootfs(Some(fs_type), Some(source), options, target).map_err(
            |e| MountError::Mount {
                fs_type: fs_type.to_owned(),
                source_path: source.to_owned(),
                target: target.to_owned(),
                message: format!("{e}{}", overlay_hint(fs_type, options)),
            },
        )
    }

    fn bind(&self, source: &Path, target: &Anchored, readonly: bool) -> Result<(), MountError> {
        let err = |source_err| MountError::Bind {
            source_path: source.to_owned(),
            target: target.path.clone(),
            source: source_err,
        };
        let src = cstring(source).map_err(err)?;
        let dst = cstring(&target.proc_path()).map_err(err)?;
        // SAFETY: both paths are NUL-terminated C strings that outlive the call; a bind
        // mount reads no fs type or data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // Remount the bind just made nosuid and nodev on the host (a setuid file or a
        // device node the guest leaves in the share gives no host process anything),
        // keeping the flags it has (noexec, atime) and adding ro if asked.
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
        if readonly {
            flags |= libc::MS_RDONLY;
        }
        // Should the guest have swapped the name so that the mount's root cannot be
        // opened, the bind stays where it is (in the share) until the pod's teardown
        // unmounts everything under the pod dir.
        let root = target.mounted().map_err(err)?;
        let at = cstring(Path::new(&format!("/proc/self/fd/{}", root.as_raw_fd()))).map_err(err)?;
        let rc = match kept_flags(&at) {
            // A remount: no source, fs type or data.
            // SAFETY: `at` is a NUL-terminated path that outlives the call.
            Ok(kept) => unsafe {
                libc::mount(
                    std::ptr::null(),
                    at.as_ptr(),
                    std::ptr::null(),
                    flags | kept,
                    std::ptr::null(),
                )
            },
            Err(_) => -1,
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: `at` is a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(at.as_ptr(), libc::MNT_DETACH) };
            return Err(err(e));
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        let err = |source| MountError::Unmount {
            target: target.to_owned(),
            source,
        };
        let t = cstring(target).map_err(err)?;
        // UMOUNT_NOFOLLOW: a last component the guest swapped for a symlink is not
        // followed out of the share.
        // SAFETY: `t` is a NUL-terminated path that outlives the call.
        let rc = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
        if rc != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn mountinfo(&self) -> Result<String, MountError> {
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| MountError::Io {
            path: "/proc/self/mountinfo".into(),
            source,
        })
    }
}

/// Why an overlay mount fails with EINVAL on a machine where containerd's state is on
/// overlayfs itself (a container's root, a live-CD, the test host's overlay root): an
/// overlay's upper dir cannot be on overlayfs. Said with what to do, or nothing.
fn overlay_hint(fs_type: &str, options: &[String]) -> String {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    if fs_type != "overlay" {
        return String::new();
    }
    let Some(upper) = options.iter().find_map(|o| o.strip_prefix("upperdir=")) else {
        return String::new();
    };
    let on_overlay = std::ffi::CString::new(upper).ok().is_some_and(|c| {
        // SAFETY: statfs is plain data; all-zero is a valid value to be overwritten.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer, both live
        // across the call.
        unsafe {
            libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == OVERLAYFS_SUPER_MAGIC
        }
    });
    if on_overlay {
        format!(
            " (containerd's snapshots in {upper} are on overlayfs, which cannot hold an \
             overlay's upper dir: put containerd's root on tmpfs or a disk file system)"
        )
    } else {
        String::new()
    }
}

/// `ST_RELATIME` from linux/statfs.h: the libc crate defines it for glibc only, not musl
/// (the shim ships as a musl binary).
const ST_RELATIME: libc::c_ulong = 0x1000;

/// The per-mount flags of the mount at `path` a bind remount must repeat to keep them.
fn kept_flags(path: &std::ffi::CStr) -> std::io::Result<libc::c_ulong> {
    // SAFETY: statvfs is plain data; all-zero is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call; `st` is a valid out pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut kept = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            kept |= ms_flag;
        }
    }
    Ok(kept)
}

fn cstring(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Mounts a container's rootfs on `share_root/rel`: containerd's mounts in order (with
/// `nosuid` and `nodev` added: on the host, nothing in a guest-written rootfs gives
/// privileges), or, when it gave none (`ctr run --rootfs`, or a bundle that holds its
/// rootfs), a bind of the spec's `root.path` (relative to the bundle). The target is made
/// and mounted on without following a symlink below `share_root` ([`beneath`]).
pub fn mount_rootfs(
    ops: &dyn HostOps,
    mounts: &[RootfsMount],
    root_path: &Path,
    share_root: &Path,
    rel: &Path,
) -> Result<(), MountError> {
    let target = beneath::anchor(share_root, rel, Kind::Dir)?;
    let on = target.proc_path();
    if mounts.is_empty() {
        return ops.bind(root_path, &target, false);
    }
    for (i, m) in mounts.iter().enumerate() {
        let mut options = m.options.clone();
        for extra in ["nosuid", "nodev"] {
            if !options.iter().any(|o| o == extra) {
                options.push(extra.into());
            }
        }
        if let Err(e) = ops.mount(&m.fs_type, &m.source, &options, &on) {
            // Undo what this call mounted, so a failed Create leaves nothing behind.
            for _ in 0..i {
                let _ = ops.unmount(&target.path);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Makes `source` appear at `share_root/rel`: a file bind for a file, a directory bind
/// otherwise; read-only on the host when the container mounts it so. A symlinked `source`
/// is followed on the host (as runc does, and the CRI asks); a symlink below `share_root`
/// is not ([`beneath`]).
pub fn share_path(
    ops: &dyn HostOps,
    source: &Path,
    share_root: &Path,
    rel: &Path,
    readonly: bool,
) -> Result<(), MountError> {
    let meta = std::fs::metadata(source).map_err(|e| MountError::Io {
        path: source.to_owned(),
        source: e,
    })?;
    let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
    let target = beneath::anchor(share_root, rel, kind)?;
    ops.bind(source, &target, readonly)
}

/// Decodes the octal escapes (`\040`) mountinfo uses in paths.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` in a mountinfo text, deepest (and latest) first: the
/// order they must be unmounted in.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(unescape(f)))
        .filter(|p| p.starts_with(dir))
        .collect();
    // Latest mounts come last in mountinfo; reversing keeps stacked mounts in order,
    // and a stable sort by depth puts children before parents.
    found.reverse();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Unmounts everything at or below `dir`. Returns the first error after trying all.
pub fn unmount_under(ops: &dyn HostOps, dir: &Path) -> Result<(), MountError> {
    let mut first_err = None;
    // Stacked mounts on one point need one unmount each; a few rounds settle them.
    for _ in 0..8 {
        let info = ops.mountinfo()?;
        let points = mounts_under(&info, dir);
        if points.is_empty() {
            return first_err.map_or(Ok(()), Err);
        }
        for p in points {
            if let Err(e) = ops.unmount(&p) {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => {
            let left = mounts_under(&ops.mountinfo()?, dir);
            match left.first() {
                None => Ok(()),
                Some(p) => Err(MountError::Unmount {
                    target: p.clone(),
                    source: std::io::Error::other("still mounted after 8 rounds"),
                }),
            }
        }
    }
}

#[cfg(test)]
pub mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The overlay hint appears only for an overlay whose upper dir is on overlayfs
    /// (root: an overlay is mounted here to have one).
    #[test]
    fn an_upper_dir_on_overlayfs_is_named_with_what_to_do() {
        assert_eq!(overlay_hint("ext4", &["upperdir=/x".into()]), "");
        assert_eq!(overlay_hint("overlay", &["lowerdir=/x".into()]), "");
        let tmp = std::env::temp_dir();
        assert_eq!(
            overlay_hint("overlay", &[format!("upperdir={}", tmp.display())]),
            "",
            "{} is no overlayfs",
            tmp.display()
        );
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: the overlayfs half needs root");
            return;
        }
        let d = tmp.join(format!("husk-ovl-{}", std::process::id()));
        for sub in ["l", "u", "w", "m"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            d.join("l").display(),
            d.join("u").display(),
            d.join("w").display()
        );
        let st = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(d.join("m"))
            .status()
            .unwrap();
        if !st.success() {
            // The temp dir may itself be on overlayfs (a container's root): skip.
            eprintln!("SKIP: cannot mount an overlay under {}", tmp.display());
            let _ = std::fs::remove_dir_all(&d);
            return;
        }
        let inner = d.join("m/upper");
        std::fs::create_dir_all(&inner).unwrap();
        let hint = overlay_hint("overlay", &[format!("upperdir={}", inner.display())]);
        let _ = std::process::Command::new("umount")
            .arg(d.join("m"))
            .status();
        let _ = std::fs::remove_dir_all(&d);
        assert!(
            hint.contains("on overlayfs") && hint.contains("tmpfs"),
            "{hint}"
        );
    }

    /// Records calls and keeps a fake mount table.
    #[derive(Default)]
    pub struct FakeHost {
        pub calls: Mutex<Vec<String>>,
        pub table: Mutex<Vec<PathBuf>>,
        pub fail_mount: Option<String>,
    }

    /// What a `/proc/self/fd/N` target ([`beneath::Anchored`]) stands for.
    fn resolved(target: &Path) -> PathBuf {
        if target.starts_with("/proc/self/fd") {
            std::fs::read_link(target).unwrap()
        } else {
            target.to_owned()
        }
    }

    impl HostOps for FakeHost {
        fn mount(
            &self,
            fs_type: &str,
            source: &str,
            options: &[String],
            target: &Path,
        ) -> Result<(), MountError> {
            let target = &resolved(target);
            self.calls.lock().unwrap().push(format!(
                "mount {fs_type} {source} {} {}",
                options.join(","),
                target.display()
            ));
            if self.fail_mount.as_deref() == Some(source) {
                return Err(MountError::Mount {
                    fs_type: fs_type.into(),
                    source_path: source.into(),
                    target: target.into(),
                    message: "refused".into(),
                });
            }
            self.table.lock().unwrap().push(target.to_owned());
            Ok(())
        }
        fn bind(&self, source: &Path, target: &Anchored, readonly: bool) -> Result<(), MountError> {
            let target = &resolved(&target.proc_path());
            self.calls.lock().unwrap().push(format!(
                "bind {} {}{}",
                source.display(),
                target.display(),
                if readonly { " ro" } else { "" }
            ));
            self.table.lock().unwrap().push(target.to_owned());
            Ok(())
        }
        fn unmount(&self, target: &Path) -> Result<(), MountError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("umount {}", target.display()));
            let mut t = self.table.lock().unwrap();
            match t.iter().rposition(|p| p == target) {
                Some(i) => {
                    t.remove(i);
                    Ok(())
                }
                None => Err(MountError::Unmount {
                    target: target.into(),
                    source: std::io::Error::from_raw_os_error(libc::EINVAL),
                }),
            }
        }
        fn mountinfo(&self) -> Result<String, MountError> {
            Ok(self
                .table
                .lock()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    format!(
                        "{i} 1 0:1 / {} rw - x x rw\n",
                        p.display().to_string().replace(' ', "\\040")
                    )
                })
                .collect())
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-mounts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mountinfo_paths_are_found_deepest_first() {
        let info = "22 1 0:1 / / rw - x x rw\n\
                    30 22 0:2 / /run/husk/p rw - x x rw\n\
                    31 30 0:3 / /run/husk/p/shared/c1/rootfs rw - overlay overlay rw\n\
                    32 30 0:4 / /run/husk/p/shared/c1/mounts/1-my\\040dir rw - x x rw\n\
                    33 22 0:5 / /run/husk/pod2 rw - x x rw\n";
        let got = mounts_under(info, Path::new("/run/husk/p"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/run/husk/p/shared/c1/mounts/1-my dir"),
                PathBuf::from("/run/husk/p/shared/c1/rootfs"),
                PathBuf::from("/run/husk/p"),
            ]
        );
        assert!(mounts_under(info, Path::new("/nothing")).is_empty());
        // A garbled line is skipped, not a panic.
        assert!(mounts_under("x\n\\\n", Path::new("/")).is_empty());
    }

    #[test]
    fn rootfs_from_containerd_mounts_or_bundle() {
        let d = tmp("rootfs");
        let host = FakeHost::default();
        let overlay = RootfsMount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options: vec!["lowerdir=/a:/b".into(), "upperdir=/u".into()],
        };
        let b = Path::new("/bundle/rootfs");
        mount_rootfs(&host, &[overlay], b, &d, Path::new("r1")).unwrap();
        mount_rootfs(&host, &[], b, &d, Path::new("r2")).unwrap();
        let calls = host.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                format!(
                    "mount overlay overlay lowerdir=/a:/b,upperdir=/u,nosuid,nodev {}",
                    d.join("r1").display()
                ),
                format!("bind /bundle/rootfs {}", d.join("r2").display()),
            ]
        );
        assert!(d.join("r1").is_dir());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_rootfs_mount_undoes_earlier_ones() {
        let d = tmp("undo");
        let host = FakeHost {
            fail_mount: Some("second".into()),
            ..Default::default()
        };
        let m = |s: &str| RootfsMount {
            fs_type: "bind".into(),
            source: s.into(),
            options: vec![],
        };
        let e = mount_rootfs(
            &host,
            &[m("first"), m("second")],
            Path::new("/b"),
            &d,
            Path::new("r"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("second"), "{e}");
        assert!(host.table.lock().unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn shared_files_and_dirs_get_matching_targets() {
        let d = tmp("share");
        std::fs::write(d.join("hosts"), "127.0.0.1 x\n").unwrap();
        std::fs::create_dir(d.join("vol")).unwrap();
        let host = FakeHost::default();
        let s = d.join("s");
        std::fs::create_dir(&s).unwrap();
        share_path(
            &host,
            &d.join("hosts"),
            &s,
            Path::new("c1/mounts/1-hosts"),
            true,
        )
        .unwrap();
        share_path(
            &host,
            &d.join("vol"),
            &s,
            Path::new("c1/mounts/2-vol"),
            false,
        )
        .unwrap();
        assert!(d.join("s/c1/mounts/1-hosts").is_file());
        assert!(d.join("s/c1/mounts/2-vol").is_dir());
        let calls = host.calls.lock().unwrap().clone();
        assert!(calls[0].ends_with("1-hosts ro"), "{calls:?}");
        assert!(calls[1].ends_with("2-vol"), "{calls:?}");
        assert!(share_path(&host, &d.join("missing"), &s, Path::new("x"), false).is_err());
        // A symlink the guest planted in the share is not followed out of it.
        std::os::unix::fs::symlink(&d, s.join("c2")).unwrap();
        assert!(share_path(
            &host,
            &d.join("vol"),
            &s,
            Path::new("c2/mounts/1-vol"),
            false
        )
        .is_err());
        assert!(!d.join("mounts").exists());
        assert_eq!(host.calls.lock().unwrap().len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unmount_under_clears_stacked_and_nested_mounts() {
        let host = FakeHost::default();
        {
            let mut t = host.table.lock().unwrap();
            t.push("/other".into());
            t.push("/run/husk/p/shared".into());
            t.push("/run/husk/p/shared/c1/rootfs".into());
            t.push("/run/husk/p/shared/c1/rootfs".into());
            t.push("/run/husk/p/shared/c1/mounts/0-x".into());
        }
        unmount_under(&host, Path::new("/run/husk/p")).unwrap();
        assert_eq!(*host.table.lock().unwrap(), vec![PathBuf::from("/other")]);
    }
    fn mount_flags(path: &Path) -> u64 {
        let c = cstring(path).unwrap();
        // SAFETY: statvfs is plain data; all-zero is a valid value to be overwritten.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is NUL-terminated and outlives the call; `st` is a valid out pointer.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_flag
    }

    /// Real binds (root only: `make test` runs the unit tests as root).
    #[test]
    fn real_binds_land_nosuid_nodev_and_read_only_when_asked() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let d = tmp("real");
        let share = d.join("share");
        std::fs::create_dir_all(d.join("vol")).unwrap();
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(d.join("vol/data"), "x").unwrap();
        std::fs::write(d.join("hosts"), "h").unwrap();
        let host = RealHost;
        share_path(
            &host,
            &d.join("vol"),
            &share,
            Path::new("c1/mounts/1-vol"),
            true,
        )
        .unwrap();
        share_path(
            &host,
            &d.join("hosts"),
            &share,
            Path::new("c1/mounts/2-hosts"),
            false,
        )
        .unwrap();
        let vol = share.join("c1/mounts/1-vol");
        let hosts = share.join("c1/mounts/2-hosts");
        assert_eq!(std::fs::read_to_string(vol.join("data")).unwrap(), "x");
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "h");
        let want = libc::ST_NOSUID | libc::ST_NODEV;
        assert_eq!(
            mount_flags(&vol) & (want | libc::ST_RDONLY),
            want | libc::ST_RDONLY
        );
        assert_eq!(mount_flags(&hosts) & (want | libc::ST_RDONLY), want);
        let mounted = mounts_under(&host.mountinfo().unwrap(), &share);
        assert_eq!(mounted.len(), 2, "{mounted:?}");
        unmount_under(&host, &share).unwrap();
        assert!(!vol.join("data").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
