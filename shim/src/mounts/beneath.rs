//! Paths inside a pod's share, made and opened without following a symlink.
//!
//! The guest writes the share (virtiofsd serves it read-write), so every name below the
//! share root may be a symlink the guest planted, swapped in between the shim's mkdir and
//! its mount (the TOCTOU of runc's CVE-2021-30465). Followed on the host, it would put a
//! container's rootfs or a hostPath bind over any host directory. So the shim walks a
//! share path one component at a time from an fd of the share root, each `openat` with
//! `O_NOFOLLOW`, and mounts onto `/proc/self/fd/N` of the last fd: the kernel resolves
//! that magic link to exactly the directory or file opened, wherever the guest moves
//! names meanwhile (and virtiofsd cannot move anything outside the share).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::MountError;

/// What the last component of a share path is to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file (a file bind's target), created empty if missing.
    File,
}

/// An open share path: mount onto [`Anchored::proc_path`] while this lives.
#[derive(Debug)]
pub struct Anchored {
    fd: OwnedFd,
    /// The directory holding it, and its name there: to open what got mounted on it.
    parent: OwnedFd,
    name: CString,
    kind: Kind,
    /// The path it was opened as, for messages.
    pub path: PathBuf,
}

impl Anchored {
    /// `/proc/self/fd/N`: the opened directory or file itself, for mount(2).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The root of the mount now on it, for a remount: `/proc/self/fd/N` names the
    /// directory under the mount, so the name is looked up again in its parent (crossing
    /// into the mount), still without following a symlink. Should the guest have swapped
    /// the name meanwhile, this opens its planted entry instead, which is no mount root:
    /// the remount then fails, nothing outside the share is touched.
    pub fn mounted(&self) -> std::io::Result<OwnedFd> {
        let dir = if self.kind == Kind::Dir {
            libc::O_DIRECTORY
        } else {
            0
        };
        openat(
            &self.parent,
            &self.name,
            libc::O_PATH | libc::O_NOFOLLOW | dir,
            0,
        )
    }
}

fn io_err(path: &Path, source: std::io::Error) -> MountError {
    MountError::Io {
        path: path.to_owned(),
        source,
    }
}

fn openat(
    dir: &OwnedFd,
    name: &CString,
    flags: i32,
    mode: libc::mode_t,
) -> std::io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is an open fd.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Why an open with `O_NOFOLLOW` failed, in words that name the likely cause.
fn refused(path: &Path, e: std::io::Error) -> MountError {
    let hint = match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            " (a symlink or non-directory there, possibly planted by the guest: not followed)"
        }
        _ => "",
    };
    io_err(path, std::io::Error::new(e.kind(), format!("{e}{hint}")))
}

/// Creates (if missing) and opens `root/rel` without following any symlink below `root`:
/// every directory on the way is made with mode 0755, the last one as `kind`. `rel` must be
/// relative and plain (no `..`, no `.`), which the shim's own share paths always are.
pub fn anchor(root: &Path, rel: &Path, kind: Kind) -> Result<Anchored, MountError> {
    let full = root.join(rel);
    let names: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io_err(
                &full,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a share path must be relative, without . or ..",
                ),
            )),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, dirs)) = names.split_last() else {
        return Err(io_err(
            &full,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty share path"),
        ));
    };
    let croot = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io_err(root, std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: `croot` is NUL-terminated and outlives the call.
    let fd = unsafe {
        libc::open(
            croot.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io_err(root, std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut at = root.to_owned();
    let dir_flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    for (i, name) in dirs.iter().chain(std::iter::once(last)).enumerate() {
        at.push(name);
        let cname = CString::new(name.as_bytes())
            .map_err(|_| io_err(&at, std::io::ErrorKind::InvalidInput.into()))?;
        let is_last = i == dirs.len();
        if is_last && kind == Kind::File {
            // O_NONBLOCK: a FIFO planted there must not hang the shim; fstat then
            // refuses anything but a regular file.
            let f = openat(
                &dir,
                &cname,
                libc::O_RDONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                0o644,
            )
            .map_err(|e| refused(&at, e))?;
            let file = std::fs::File::from(f);
            let meta = file.metadata().map_err(|e| io_err(&at, e))?;
            if !meta.is_file() {
                return Err(io_err(
                    &at,
                    std::io::Error::other("not a regular file (possibly planted by the guest)"),
                ));
            }
            return Ok(Anchored {
                fd: file.into(),
                parent: dir,
                name: cname,
                kind,
                path: at,
            });
        }
        // SAFETY: `cname` is NUL-terminated and outlives the call; `dir` is an open fd.
        let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), 0o755) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io_err(&at, e));
            }
        }
        let next = openat(&dir, &cname, dir_flags, 0).map_err(|e| refused(&at, e))?;
        if is_last {
            return Ok(Anchored {
                fd: next,
                parent: dir,
                name: cname,
                kind,
                path: at,
            });
        }
        dir = next;
    }
    unreachable!("the loop returns at its last component")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-beneath-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn makes_dirs_and_files_and_opens_them_as_themselves() {
        let d = tmp("make");
        let a = anchor(&d, Path::new("c1/rootfs"), Kind::Dir).unwrap();
        assert!(d.join("c1/rootfs").is_dir());
        assert_eq!(
            std::fs::read_link(a.proc_path()).unwrap(),
            d.join("c1/rootfs")
        );
        let f = anchor(&d, Path::new("c1/mounts/1-hosts"), Kind::File).unwrap();
        assert!(d.join("c1/mounts/1-hosts").is_file());
        assert_eq!(
            std::fs::read_link(f.proc_path()).unwrap(),
            d.join("c1/mounts/1-hosts")
        );
        // Existing ones are opened again, not refused.
        anchor(&d, Path::new("c1/rootfs"), Kind::Dir).unwrap();
        anchor(&d, Path::new("c1/mounts/1-hosts"), Kind::File).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_never_followed() {
        let d = tmp("planted");
        let outside = d.join("outside");
        let share = d.join("share");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(share.join("c1")).unwrap();
        // A symlinked directory on the way, a symlinked last directory, a symlinked file.
        std::os::unix::fs::symlink(&outside, share.join("c2")).unwrap();
        std::os::unix::fs::symlink(&outside, share.join("c1/rootfs")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), share.join("c1/file")).unwrap();
        for (rel, kind) in [
            ("c2/rootfs", Kind::Dir),
            ("c1/rootfs", Kind::Dir),
            ("c1/file", Kind::File),
            ("c2/mounts/1-x", Kind::File),
        ] {
            let e = anchor(&share, Path::new(rel), kind).unwrap_err();
            let msg = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            assert!(msg.contains("not followed"), "{rel}: {msg}");
        }
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing made outside"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn odd_paths_and_planted_fifos_are_refused() {
        let d = tmp("odd");
        for rel in ["", "../x", "/abs", "a/./b"] {
            // `a/./b` normalises to a/b in Path::components: fine, it stays beneath.
            let r = anchor(&d, Path::new(rel), Kind::Dir);
            if rel == "a/./b" {
                assert!(r.is_ok(), "{rel}");
            } else {
                assert!(r.is_err(), "{rel}");
            }
        }
        let fifo = CString::new(d.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let e = anchor(&d, Path::new("fifo"), Kind::File).unwrap_err();
        assert!(
            std::error::Error::source(&e)
                .unwrap()
                .to_string()
                .contains("regular file"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
