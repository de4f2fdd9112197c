//! The jailer's steps: checks and the cgroup in the calling process, new namespaces, then
//! in the forked PID 1 of the new PID namespace the jail's root, the pivot, the drop of
//! every privilege, and the exec. The jailer is single-threaded, so the forked child may
//! allocate and use std like any process (no lock can be held by a thread that is gone).

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cgroup::{self, CgroupError};
use crate::elf::{self, ElfError};
use crate::spec::Jail;

/// The namespaces the VMM gets of its own. Network too: it reaches the pod's network only
/// through the tap fds it inherits, and unix sockets by path work across namespaces.
pub const NAMESPACES: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET;

/// The host's KVM device, whose numbers the jail's own node copies.
pub const KVM_DEVICE: &str = "/dev/kvm";

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("husk-jailer must run as root (it mounts, and drops to the VMM's uid)")]
    NotRoot,
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{step} {path}")]
    Step {
        step: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the jailed VMM's set-up failed: {0}")]
    Child(String),
}

fn step(
    step: &'static str,
    path: impl AsRef<OsStr>,
) -> impl FnOnce(std::io::Error) -> ConfineError {
    let path = Path::new(path.as_ref()).display().to_string();
    move |source| ConfineError::Step { step, path, source }
}

fn cstr(p: impl AsRef<OsStr>) -> Result<CString, ConfineError> {
    CString::new(p.as_ref().as_bytes()).map_err(|_| ConfineError::Step {
        step: "a path with a NUL byte:",
        path: Path::new(p.as_ref()).display().to_string(),
        source: std::io::ErrorKind::InvalidInput.into(),
    })
}

/// -1 → the errno as an io::Error.
fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Confines and starts the VMM; returns its pid (in the caller's PID namespace). The VMM
/// is left running as this process's child: once this process exits, it belongs to the
/// nearest subreaper (the shim).
pub fn run(jail: &Jail) -> Result<i32, ConfineError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ConfineError::NotRoot);
    }
    elf::check_static(&jail.exec)?;
    let kvm_rdev = std::fs::metadata(KVM_DEVICE)
        .map_err(step("cannot stat", KVM_DEVICE))?
        .rdev();
    for b in &jail.ro {
        std::fs::metadata(&b.src).map_err(step("cannot stat", &b.src))?;
    }
    for b in &jail.rw {
        if !std::fs::metadata(&b.src)
            .map_err(step("cannot stat", &b.src))?
            .is_dir()
        {
            return Err(step("not a directory:", &b.src)(
                std::io::ErrorKind::InvalidInput.into(),
            ));
        }
    }
    std::fs::create_dir_all(&jail.root).map_err(step("cannot create", &jail.root))?;
    let cap_last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    cgroup::join_self(&jail.cgroup_procs)?;

    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })
        .map_err(step("cannot create a pipe", ""))?;
    // SAFETY: pipe2 just returned this fd; it is owned once, here.
    let read_end = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above, the pipe's other end.
    let write_end = unsafe { OwnedFd::from_raw_fd(fds[1]) };

    // SAFETY: unshare with constant flags; it affects only this process and its children.
    check(unsafe { libc::unshare(NAMESPACES) })
        .map_err(step("cannot unshare the namespaces for", &jail.root))?;
    // The jailer starts no thread, so the forked child may do anything the parent could.
    // SAFETY: fork(2) in a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(step("cannot fork for", &jail.root)(
            std::io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        drop(read_end);
        let e = child(jail, kvm_rdev, cap_last, fds[1]);
        let msg = husk_errors::chain(&e);
        // SAFETY: write(2) of a live buffer to the pipe's write end; _exit never returns.
        unsafe {
            libc::write(fds[1], msg.as_ptr().cast(), msg.len());
            libc::_exit(1);
        }
    }
    drop(write_end);
    let mut report = String::new();
    let _ = std::fs::File::from(read_end).read_to_string(&mut report);
    if report.is_empty() {
        return Ok(pid);
    }
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Err(ConfineError::Child(report))
}

fn mount(
    src: Option<&CString>,
    dst: &CString,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
    data: Option<&CString>,
) -> std::io::Result<()> {
    let p = |c: Option<&CString>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    check(unsafe { libc::mount(p(src), dst.as_ptr(), p(fstype), flags, p(data).cast()) })
}

/// A read-only (`writable` false) or read-write bind of `src` at `dst` (created as an
/// empty file or directory like `src`), never suid or device-capable; `exec` keeps it
/// executable.
fn bind(src: &Path, dst: &Path, writable: bool, exec: bool) -> Result<(), ConfineError> {
    let meta = std::fs::metadata(src).map_err(step("cannot stat", src))?;
    if meta.is_dir() {
        std::fs::create_dir(dst).map_err(step("cannot create", dst))?;
    } else {
        std::fs::File::create(dst).map_err(step("cannot create", dst))?;
    }
    let (s, d) = (cstr(src)?, cstr(dst)?);
    mount(Some(&s), &d, None, libc::MS_BIND, None).map_err(step("cannot bind-mount", src))?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if !writable {
        flags |= libc::MS_RDONLY;
    }
    if !exec {
        flags |= libc::MS_NOEXEC;
    }
    mount(None, &d, None, flags, None).map_err(step("cannot remount", dst))
}

/// Closes every fd from 3 up except `keep` (sorted in place; no allocation).
fn close_all_but(keep: &mut [i32]) -> Result<(), ConfineError> {
    keep.sort_unstable();
    let mut first = 3u32;
    let kept = keep.iter().filter_map(|f| u32::try_from(*f).ok());
    for k in kept.chain(std::iter::once(u32::MAX)) {
        if k > first {
            let last = if k == u32::MAX { u32::MAX } else { k - 1 };
            // SAFETY: close_range(2) on a range of descriptor numbers, no pointers.
            let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
            if rc == -1 {
                return Err(step("cannot close the inherited fds", "")(
                    std::io::Error::last_os_error(),
                ));
            }
        }
        first = first.max(k.saturating_add(1));
    }
    Ok(())
}

// The resource numbers are u32 with glibc, c_int with musl.
#[allow(clippy::unnecessary_cast)]
fn set_rlimits(j: &Jail) -> Result<(), ConfineError> {
    setrlimit(libc::RLIMIT_NOFILE as u32, j.nofile, "RLIMIT_NOFILE")?;
    setrlimit(libc::RLIMIT_NPROC as u32, j.nproc, "RLIMIT_NPROC")?;
    setrlimit(libc::RLIMIT_CORE as u32, 0, "RLIMIT_CORE")
}

#[allow(clippy::unnecessary_cast)]
fn setrlimit(what: u32, n: u64, name: &'static str) -> Result<(), ConfineError> {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: `lim` is a valid rlimit for the call to read.
    check(unsafe { libc::setrlimit(what as _, &lim) }).map_err(step("cannot set", name))
}

/// In the forked PID 1: builds the jail and execs the VMM. Returns only on failure.
fn child(j: &Jail, kvm_rdev: u64, cap_last: u32, err_fd: i32) -> ConfineError {
    match child_steps(j, kvm_rdev, cap_last, err_fd) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

fn child_steps(
    j: &Jail,
    kvm_rdev: u64,
    cap_last: u32,
    err_fd: i32,
) -> Result<std::convert::Infallible, ConfineError> {
    let root = &j.root;
    let slash = cstr("/")?;
    // Nothing we mount reaches the host's namespace, and nothing of the host's later
    // mounts reaches ours.
    mount(None, &slash, None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(step("cannot make the mounts private:", "/"))?;
    let r = cstr(root)?;
    mount(
        Some(&cstr("husk-jail")?),
        &r,
        Some(&cstr("tmpfs")?),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(&cstr("mode=0755,size=64k,nr_inodes=64")?),
    )
    .map_err(step("cannot mount the jail's tmpfs on", root))?;

    let dev = root.join("dev");
    std::fs::create_dir(&dev).map_err(step("cannot create", &dev))?;
    let kvm = cstr(root.join("dev/kvm"))?;
    // SAFETY: mknod(2) of a NUL-terminated path with a device number from stat.
    check(unsafe { libc::mknod(kvm.as_ptr(), libc::S_IFCHR | 0o600, kvm_rdev) })
        .map_err(step("cannot create", root.join("dev/kvm")))?;
    // SAFETY: chown(2) of a NUL-terminated path.
    check(unsafe { libc::chown(kvm.as_ptr(), j.uid, j.gid) })
        .map_err(step("cannot chown", root.join("dev/kvm")))?;
    for b in &j.ro {
        bind(&b.src, &root.join(&b.name), false, false)?;
    }
    for b in &j.rw {
        bind(&b.src, &root.join(&b.name), true, false)?;
    }
    let exec_in_jail = j.exec_in_jail();
    bind(
        &j.exec,
        &root.join(exec_in_jail.strip_prefix("/").unwrap_or(&exec_in_jail)),
        false,
        true,
    )?;
    // The root itself read-only from here on; device nodes stay usable on it (no nodev).
    mount(
        None,
        &r,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )
    .map_err(step("cannot remount read-only", root))?;

    std::env::set_current_dir(root).map_err(step("cannot enter", root))?;
    let dot = cstr(".")?;
    // The jail becomes `/` and the old root is stacked on it, to be detached next.
    // SAFETY: pivot_root(2) with two NUL-terminated paths that outlive the call.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as i32)
        .map_err(step("cannot pivot_root into", root))?;
    // SAFETY: umount2(2) of a NUL-terminated path.
    check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
        .map_err(step("cannot detach the host's root from", root))?;
    std::env::set_current_dir("/").map_err(step("cannot enter", "/"))?;

    let mut keep = j.keep_fds.clone();
    keep.push(err_fd);
    close_all_but(&mut keep)?;
    set_rlimits(j)?;
    // The VMM's stdout joins its stderr (the VMM log); the jailer's stdout is the pid report.
    // SAFETY: dup2(2) of two plain descriptor numbers.
    check(unsafe { libc::dup2(2, 1) }).map_err(step("cannot redirect stdout", ""))?;

    // SAFETY: prctl(2) with integer arguments only, here and below.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })
    .map_err(step("cannot clear the ambient capabilities", ""))?;
    for cap in 0..=cap_last {
        // SAFETY: as above.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) }).map_err(step(
            "cannot drop a capability from the bounding set",
            cap.to_string(),
        ))?;
    }
    // SAFETY: setgroups(2) with an empty list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })
        .map_err(step("cannot clear the supplementary groups", ""))?;
    // SAFETY: set*id(2) with plain ids; a root caller loses every capability with uid 0.
    check(unsafe { libc::setresgid(j.gid, j.gid, j.gid) })
        .map_err(step("cannot take gid", j.gid.to_string()))?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(j.uid, j.uid, j.uid) })
        .map_err(step("cannot take uid", j.uid.to_string()))?;
    // SAFETY: as above.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(step("cannot set no_new_privs", ""))?;

    let prog = cstr(&exec_in_jail)?;
    let mut argv: Vec<CString> = vec![prog.clone()];
    for a in &j.args {
        argv.push(cstr(a)?);
    }
    let envp: Vec<CString> = j.env.iter().map(cstr).collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // execve returns only on failure.
    // SAFETY: a NUL-terminated path and null-terminated arrays of live C strings.
    unsafe { libc::execve(prog.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    Err(step("cannot exec", PathBuf::from(&exec_in_jail))(
        std::io::Error::last_os_error(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_all_but_keeps_exactly_the_listed_fds() {
        // In a forked child, so the test harness's fds stay open.
        let f: Vec<i32> = (0..4)
            .map(|_| {
                let fd = std::fs::File::open("/dev/null").unwrap();
                std::os::fd::IntoRawFd::into_raw_fd(fd)
            })
            .collect();
        // SAFETY: the child only makes syscalls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut keep = [f[3], f[1]];
            let ok = close_all_but(&mut keep).is_ok();
            // SAFETY: fcntl(F_GETFD) on plain descriptor numbers.
            let open = |fd: i32| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
            let good = ok && !open(f[0]) && open(f[1]) && !open(f[2]) && open(f[3]) && open(2);
            // SAFETY: _exit never returns.
            unsafe { libc::_exit(if good { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status}"
        );
        for fd in f {
            // SAFETY: closing fds this test opened.
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn errors_name_the_step_the_path_and_the_errno() {
        let e = step("cannot bind-mount", "/k")(std::io::Error::from_raw_os_error(libc::ENOENT));
        let s = husk_errors::chain(&e);
        assert!(s.starts_with("cannot bind-mount /k: No such file"), "{s}");
    }
}
