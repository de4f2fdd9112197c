//! husk-fs-attack: run in a privileged container of a husk pod (root with every capability
//! in the guest), it mounts the pod's virtio-fs share itself and tries to reach the host
//! through virtiofsd: symlinks to `/` and out with `..`, `..` traversal, hard links out,
//! forged file handles, device nodes, a setuid-root file, xattrs, then a FUSE request
//! flood. It prints one line per attempt (`<attack> <what happened>`) and decides nothing:
//! the host test checks what it printed (never the host's secret) and what the host sees.
//!
//! Usage: husk-fs-attack TAG MOUNTPOINT HOST_CANARY_PATH CANARY_INODE FLOOD_SECONDS

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in paths")
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The first bytes of `path` as the guest reads them, or why not.
fn peek(path: &Path) -> String {
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let mut buf = [0u8; 64];
            match f.read(&mut buf) {
                Ok(n) => format!("read {:?}", String::from_utf8_lossy(&buf[..n])),
                Err(e) => format!("refused read: {e}"),
            }
        }
        Err(e) => format!("refused open: {e}"),
    }
}

fn rc(what: &str, r: i32) {
    if r == 0 {
        say(&format!("{what} did"));
    } else {
        say(&format!("{what} refused: {}", errno()));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!(
            "usage: husk-fs-attack TAG MOUNTPOINT HOST_CANARY_PATH CANARY_INODE FLOOD_SECONDS"
        );
        std::process::exit(2);
    }
    let tag = &args[1];
    let m = PathBuf::from(&args[2]);
    let canary = PathBuf::from(&args[3]);
    let canary_ino: u64 = args[4].parse().expect("inode");
    let flood_secs: u64 = args[5].parse().expect("seconds");
    let canary_rel = canary.strip_prefix("/").unwrap_or(&canary).to_owned();

    std::fs::create_dir_all(&m).expect("mountpoint");
    let (src, fstype) = (
        CString::new(tag.as_str()).unwrap(),
        CString::new("virtiofs").unwrap(),
    );
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            c(&m).as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        say(&format!("mount refused: {}", errno()));
        std::process::exit(3);
    }
    say("mount did");

    // Symlinks out of the share, read through by the guest; `..` past the share's root.
    for (name, target) in [
        ("esc-root", PathBuf::from("/")),
        ("esc-up", PathBuf::from("../../../../../../../../..")),
        ("esc-abs", canary.clone()),
    ] {
        let link = m.join(name);
        // SAFETY: NUL-terminated paths that outlive the call.
        rc(&format!("symlink {name}"), unsafe {
            libc::symlink(c(&target).as_ptr(), c(&link).as_ptr())
        });
    }
    for p in [
        m.join("esc-root").join(&canary_rel),
        m.join("esc-up").join(&canary_rel),
        m.join("esc-abs"),
        m.join("../../../../../../..").join(&canary_rel),
    ] {
        say(&format!("follow {} {}", p.display(), peek(&p)));
    }

    // Hard links: of the planted symlink (stays a symlink in the share), following it,
    // and of a file on another host mount (a container's rootfs, under the share).
    for (what, from, to, flags) in [
        ("link-symlink", m.join("esc-abs"), m.join("hl-sym"), 0),
        (
            "link-follow",
            m.join("esc-abs"),
            m.join("hl-follow"),
            libc::AT_SYMLINK_FOLLOW,
        ),
        (
            "link-rootfs",
            PathBuf::from("/bin/busybox"),
            m.join("hl-bb"),
            0,
        ),
    ] {
        // SAFETY: NUL-terminated paths that outlive the call.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                c(&from).as_ptr(),
                libc::AT_FDCWD,
                c(&to).as_ptr(),
                flags,
            )
        };
        rc(what, r);
    }
    if let Ok(entries) = std::fs::read_dir(&m) {
        for e in entries.flatten() {
            let p = e.path().join("rootfs/bin/busybox");
            if p.exists() {
                // SAFETY: NUL-terminated paths that outlive the call.
                let r = unsafe { libc::link(c(&p).as_ptr(), c(&m.join("hl-share-bb")).as_ptr()) };
                rc("link-in-share", r);
            }
        }
    }

    handles(&m, canary_ino);

    // Device nodes: /dev/mem, a host disk, /dev/null.
    for (name, kind, major, minor) in [
        ("dev-mem", libc::S_IFCHR, 1, 1),
        ("dev-sda", libc::S_IFBLK, 8, 0),
        ("dev-null", libc::S_IFCHR, 1, 3),
    ] {
        let p = m.join(name);
        // SAFETY: a NUL-terminated path that outlives the call.
        let r = unsafe { libc::mknod(c(&p).as_ptr(), kind | 0o666, libc::makedev(major, minor)) };
        rc(&format!("mknod {name}"), r);
    }

    // A setuid-root copy of busybox and a setgid directory, left for the host to find.
    let suid = m.join("suid");
    match std::fs::copy("/bin/busybox", &suid) {
        Ok(_) => {
            // SAFETY: a NUL-terminated path that outlives the calls.
            rc("chown-suid", unsafe {
                libc::chown(c(&suid).as_ptr(), 0, 0)
            });
            // SAFETY: as above.
            rc("chmod-suid", unsafe {
                libc::chmod(c(&suid).as_ptr(), 0o6755)
            });
        }
        Err(e) => say(&format!("copy-suid refused: {e}")),
    }
    let sgid = m.join("sgid-dir");
    let _ = std::fs::create_dir(&sgid);
    // SAFETY: a NUL-terminated path that outlives the call.
    rc("chmod-sgid-dir", unsafe {
        libc::chmod(c(&sgid).as_ptr(), 0o2777)
    });

    // xattrs: a file capability (CAP_SYS_ADMIN), trusted and user names, on a file and on
    // the share's root.
    let mut fcap = [0u8; 20];
    fcap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes()); // VFS_CAP_REVISION_2, effective
    fcap[4..8].copy_from_slice(&(1u32 << 21).to_le_bytes()); // permitted: CAP_SYS_ADMIN
    for target in [&suid, &m] {
        for (name, value) in [
            ("security.capability", &fcap[..]),
            ("trusted.husk", b"x".as_slice()),
            ("user.husk", b"x".as_slice()),
        ] {
            let n = CString::new(name).unwrap();
            // SAFETY: NUL-terminated path and name, a value buffer of the given length.
            let r = unsafe {
                libc::setxattr(
                    c(target).as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            rc(&format!("setxattr {name} on {}", target.display()), r);
        }
    }

    flood(&m, Duration::from_secs(flood_secs));
    say("done");
}

/// name_to_handle_at on the share, then open_by_handle_at with forged handles: FUSE's
/// node ids (type 0x81: 64-bit node id and generation) and the host canary's inode number.
fn handles(m: &Path, canary_ino: u64) {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 64],
    }
    let mut h = Handle {
        bytes: 64,
        kind: 0,
        data: [0; 64],
    };
    let mut mount_id = 0;
    // SAFETY: a NUL-terminated path; `h` is a file_handle with room for 64 bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c(m).as_ptr(),
            (&mut h as *mut Handle).cast::<libc::c_void>(),
            &mut mount_id as *mut i32,
            0,
        )
    };
    if r == 0 {
        say(&format!(
            "name_to_handle_at did: type {:#x}, {} bytes",
            h.kind, h.bytes
        ));
    } else {
        say(&format!("name_to_handle_at refused: {}", errno()));
    }
    let Ok(dir) = std::fs::File::open(m) else {
        say("open share refused");
        return;
    };
    let mut opened = Vec::new();
    let mut tried = 0;
    for (kind, id) in
        (1..64u64)
            .map(|n| (0x81, n))
            .chain([(0x81, canary_ino), (1, canary_ino), (2, canary_ino)])
    {
        tried += 1;
        let mut f = Handle {
            bytes: 16,
            kind,
            data: [0; 64],
        };
        f.data[..8].copy_from_slice(&id.to_le_bytes());
        if kind != 0x81 {
            // FILEID_INO32_GEN(_PARENT): a 32-bit inode and generation.
            f.data[..4].copy_from_slice(&(id as u32).to_le_bytes());
            f.data[4..8].fill(0);
            f.bytes = 8;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: `f` is a file_handle of the length it says; `dir` is an open fd.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                dir.as_raw_fd(),
                (&mut f as *mut Handle).cast::<libc::c_void>(),
                libc::O_RDONLY,
            )
        };
        if fd >= 0 {
            let fd = fd as i32;
            let at = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            let what = peek(Path::new(&format!("/proc/self/fd/{fd}")));
            opened.push(format!("{kind:#x}/{id} -> {} {what}", at.display()));
            // SAFETY: `fd` was just opened by this function.
            unsafe { libc::close(fd) };
        } else if tried == 1 {
            say(&format!("open_by_handle_at first refusal: {}", errno()));
        }
    }
    say(&format!(
        "open_by_handle_at opened {} of {tried}: {opened:?}",
        opened.len()
    ));
}

/// Four threads creating, writing, stat-ing and unlinking files as fast as they can, and
/// one holding up to 4096 open files at once, for `d`.
fn flood(m: &Path, d: Duration) {
    let dir = m.join("flood");
    let _ = std::fs::create_dir_all(&dir);
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + d;
    let mut threads = Vec::new();
    for t in 0..4 {
        let (dir, ops, errors) = (dir.clone(), Arc::clone(&ops), Arc::clone(&errors));
        threads.push(std::thread::spawn(move || {
            let data = [0x5au8; 4096];
            let mut n = 0u64;
            while Instant::now() < end {
                let p = dir.join(format!("t{t}-{n}"));
                let ok = std::fs::write(&p, data).is_ok()
                    && std::fs::metadata(&p).is_ok()
                    && std::fs::remove_file(&p).is_ok();
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                ops.fetch_add(3, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let (odir, oops, oerr) = (dir.clone(), Arc::clone(&ops), Arc::clone(&errors));
    threads.push(std::thread::spawn(move || {
        while Instant::now() < end {
            let mut held = Vec::new();
            for i in 0..4096 {
                match std::fs::File::create(odir.join(format!("open-{i}"))) {
                    Ok(f) => held.push(f),
                    Err(_) => {
                        oerr.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                oops.fetch_add(1, Ordering::Relaxed);
            }
            drop(held);
        }
        for i in 0..4096 {
            let _ = std::fs::remove_file(odir.join(format!("open-{i}")));
        }
    }));
    for t in threads {
        let _ = t.join();
    }
    say(&format!(
        "flood did {} file operations in {}s, {} failed",
        ops.load(Ordering::Relaxed),
        d.as_secs(),
        errors.load(Ordering::Relaxed)
    ));
}
