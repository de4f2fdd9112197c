//! A guest attacking the host through virtiofsd, the way a guest kernel exploit would
//! start: a privileged container (root with every capability in the guest) mounts the
//! pod's virtio-fs share itself and runs `husk-fs-attack` (tests/guest-probe): symlinks to
//! `/` and out with `..`, `..` traversal, hard links out, forged file handles, device
//! nodes, a setuid-root file, xattrs, then a FUSE request flood. The host then checks that
//! the guest never read the host's secret, that nothing outside the share changed (a
//! canary dir and the pod dir's own files, down to inode link counts and xattrs), that
//! what the guest left in the share gives no host process anything (no device nodes, no
//! file capabilities, the share nosuid and nodev on the host), and that virtiofsd's memory
//! stayed bounded through the flood and it still serves. Like the boot tests these need a
//! KVM that can boot a standard guest: `#[ignore]`d for a plain `cargo test`, run by
//! `make test`.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_tests::containerd::{Containerd, HuskToml, BUSYBOX_IMAGE, RUNTIME};
use husk_tests::guest::TempDir;
use husk_tests::host::child_pids;
use husk_tests::{fs_attack_bin, kvm_available, require_file};

const ATTACK: &str = "/bin/husk-fs-attack";
/// The tag the shim gives the pod's share (shim/src/spec.rs SHARED_FS_TAG).
const TAG: &str = "husk-shared";
const FLOOD_SECONDS: &str = "20";

/// Names of the xattrs on `p` (not following a symlink).
fn xattrs(p: &Path) -> Vec<String> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: a NUL-terminated path and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Every entry below `dir` (lstat: type and mode, owner, size, links, mtime, xattrs),
/// except those `skip` names.
fn census(dir: &Path, skip: &dyn Fn(&Path) -> bool) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if skip(&p) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            out.insert(
                p.clone(),
                format!(
                    "mode {:o} owner {}:{} size {} links {} mtime {}.{} xattrs {:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                    m.nlink(),
                    m.mtime(),
                    m.mtime_nsec(),
                    xattrs(&p)
                ),
            );
            if m.is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

fn status_kib(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn statvfs_flags(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs is plain data; all-zero is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "{}", p.display());
    st.f_flag
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn a_root_guest_cannot_reach_the_host_through_virtiofsd() {
    if !kvm_available("a_root_guest_cannot_reach_the_host_through_virtiofsd") {
        return;
    }
    let attack = fs_attack_bin();
    require_file(&attack);
    let c = Containerd::start(&HuskToml::default()).unwrap();
    c.import_busybox_with(&[(attack.as_path(), ATTACK)])
        .unwrap();

    // The host's secret, outside the share, with a hard link count and xattr to watch.
    let canary_dir = TempDir::new("fs-canary").unwrap();
    let secret = format!(
        "husk-secret-{:016x}",
        std::process::id() as u64 * 0x9e37_79b9
    );
    let canary = canary_dir.0.join("secret");
    std::fs::write(&canary, &secret).unwrap();
    let canary_ino = std::fs::metadata(&canary).unwrap().ino();

    let id = "fs-attack";
    let o = c
        .ctr(&[
            "run",
            "-d",
            "--privileged",
            "--runtime",
            RUNTIME,
            BUSYBOX_IMAGE,
            id,
            "sleep",
            "900",
        ])
        .unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}\n{}", c.log());
    wait_for("RUNNING", Duration::from_secs(120), || {
        c.task_status(id).as_deref() == Some("RUNNING")
    });
    let pod = c.pod_dir(id);
    let shared = pod.join("shared");
    // What is outside the share: the canary, and the pod dir's own files (its logs grow).
    let outside = |p: &Path| {
        p.starts_with(&shared)
            || p.extension().is_some_and(|e| e == "log")
            || p.file_name().is_some_and(|n| n == "jail")
    };
    let pod_before = census(&pod, &outside);
    let canary_before = census(&canary_dir.0, &|_| false);
    assert!(!pod_before.is_empty() && !canary_before.is_empty());

    let vfs = c.pod_pid(id, "virtiofsd").expect("virtiofsd pid");
    let served = child_pids(vfs);
    assert_eq!(served.len(), 1, "virtiofsd's sandboxed child: {served:?}");
    let (rss0, fds0) = (status_kib(served[0], "VmRSS:"), fd_count(served[0]));

    // Sample virtiofsd while the guest attacks.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, pids) = (Arc::clone(&stop), vec![vfs, served[0]]);
        std::thread::spawn(move || {
            let (mut rss, mut fds) = (0u64, 0usize);
            while !stop.load(Ordering::Relaxed) {
                rss = rss.max(pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum());
                fds = fds.max(fd_count(pids[1]));
                std::thread::sleep(Duration::from_millis(200));
            }
            (rss, fds)
        })
    };
    let canary_arg = canary.display().to_string();
    let ino = canary_ino.to_string();
    let o = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "attack",
            id,
            ATTACK,
            TAG,
            "/mnt/share",
            &canary_arg,
            &ino,
            FLOOD_SECONDS,
        ])
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (peak_rss, peak_fds) = sampler.join().unwrap();
    let out = o.stdout.clone();
    eprintln!("--- husk-fs-attack ---\n{out}{}", o.stderr);
    eprintln!(
        "virtiofsd: VmRSS {rss0} KiB before, peak {peak_rss} KiB (both processes) during the \
         attack; fds {fds0} before, peak {peak_fds}"
    );
    assert_eq!(o.code(), Some(0), "{o:?}\n{}", c.pod_logs(id));
    assert!(out.contains("mount did") && out.contains("\ndone"), "{out}");

    // The guest never read the host's secret, by any path or handle.
    assert!(
        !out.contains(&secret),
        "the guest read the host's secret:\n{out}"
    );
    // The planted symlinks exist, in the share, as symlinks: the guest resolves them.
    for name in ["esc-root", "esc-up", "esc-abs"] {
        assert!(out.contains(&format!("symlink {name} did")), "{out}");
        let m = std::fs::symlink_metadata(shared.join(name)).unwrap();
        assert!(m.file_type().is_symlink(), "{name}");
    }
    // Device nodes, file capabilities: refused by virtiofsd (no CAP_MKNOD; xattrs off).
    for line in [
        "mknod dev-mem refused",
        "mknod dev-sda refused",
        "setxattr security.capability on /mnt/share/suid refused",
        "setxattr security.capability on /mnt/share refused",
        "link-follow refused",
        "link-in-share refused",
    ] {
        assert!(out.contains(line), "expected `{line}`:\n{out}");
    }
    let flood = out.lines().find(|l| l.starts_with("flood did")).unwrap();
    let ops: u64 = flood.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(ops > 100, "{flood}");

    // In the share as the host sees it: no device node, no xattr that gives anything, and
    // the setuid file the guest made sits on a nosuid, nodev mount.
    let in_share = census(&shared, &|p| p.starts_with(shared.join(id)));
    for (p, what) in &in_share {
        let m = std::fs::symlink_metadata(p).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(
            !m.file_type().is_char_device() && !m.file_type().is_block_device(),
            "a device node in the share: {} {what}",
            p.display()
        );
        assert!(
            !what.contains("security.capability") && !what.contains("trusted."),
            "{} {what}",
            p.display()
        );
    }
    let suid = shared.join("suid");
    if suid.exists() {
        let flags = statvfs_flags(&suid);
        assert_eq!(
            flags & (libc::ST_NOSUID | libc::ST_NODEV),
            libc::ST_NOSUID | libc::ST_NODEV,
            "the share is not nosuid,nodev on the host"
        );
        eprintln!(
            "guest-made setuid file on the host: {:?}",
            in_share.get(&suid)
        );
    }
    // The container's rootfs too (a separate host mount under the share).
    let rootfs_flags = statvfs_flags(&shared.join(id).join("rootfs/bin"));
    assert_eq!(
        rootfs_flags & (libc::ST_NOSUID | libc::ST_NODEV),
        libc::ST_NOSUID | libc::ST_NODEV
    );

    // Nothing outside the share changed.
    assert_eq!(census(&canary_dir.0, &|_| false), canary_before);
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), secret);
    assert_eq!(census(&pod, &outside), pod_before);

    // virtiofsd lived through the flood, within bounds, and still serves.
    assert!(Path::new(&format!("/proc/{}", served[0])).exists());
    assert!(
        peak_rss < 256 * 1024,
        "virtiofsd grew to {peak_rss} KiB under the flood"
    );
    let o = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "after",
            id,
            "cat",
            "/etc/passwd",
        ])
        .unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}\n{}", c.pod_logs(id));

    let o = c.ctr(&["task", "kill", "-s", "SIGKILL", id]).unwrap();
    assert_eq!(o.code(), Some(0), "{o:?}");
    wait_for("STOPPED", Duration::from_secs(60), || {
        c.task_status(id).as_deref() == Some("STOPPED")
    });
    assert_eq!(c.ctr(&["task", "rm", id]).unwrap().code(), Some(0));
    assert_eq!(c.ctr(&["container", "rm", id]).unwrap().code(), Some(0));
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "left behind:\n{left}");
    assert_eq!(census(&canary_dir.0, &|_| false), canary_before);
}
