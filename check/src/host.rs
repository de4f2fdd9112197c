//! Reading this host: files, device nodes, the KVM API version, and programs' output.
//! Each function returns what it saw; [`crate::checks`] decides.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::checks::{Dev, Ran};

/// `KVM_GET_API_VERSION` = `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::Ioctl = 0xAE00;

/// Opens a device node read-write; with `Some(file)` when it opened.
fn open_dev(path: &Path) -> (Dev, Option<std::fs::File>) {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Dev::Missing, None),
        Err(e) => return (Dev::OpenFailed(e.to_string()), None),
        Ok(m) if !m.file_type().is_char_device() => return (Dev::NotCharDevice, None),
        Ok(_) => {}
    }
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => (Dev::Opened, Some(f)),
        Err(e) => (Dev::OpenFailed(e.to_string()), None),
    }
}

/// /dev/kvm and, when it opened, its KVM API version.
pub fn kvm() -> (Dev, Option<i32>) {
    let (dev, file) = open_dev(Path::new("/dev/kvm"));
    let api = file.and_then(|f| {
        // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int; the fd
        // is open for the duration of the call.
        let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
        (v >= 0).then_some(v)
    });
    (dev, api)
}

/// /dev/net/tun.
pub fn tun() -> Dev {
    open_dev(Path::new("/dev/net/tun")).0
}

/// A text file, `None` when it can't be read (e.g. /proc/modules on a kernel without
/// module support).
pub fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The first `n` bytes of a file, or why it can't be read.
pub fn head(path: &Path, n: usize) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(n);
    f.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.is_empty() {
        return Err("the file is empty".into());
    }
    Ok(buf)
}

/// `path` with symlinks resolved as far as it exists (a state dir may not exist yet:
/// then its nearest existing parent decides the filesystem).
pub fn resolve(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut p = path.to_path_buf();
    loop {
        if let Ok(c) = p.canonicalize() {
            let mut c = c;
            for r in rest.iter().rev() {
                c.push(r);
            }
            return c;
        }
        match (p.file_name().map(ToOwned::to_owned), p.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                p = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Runs a program with a deadline; its stdout on exit 0, else what went wrong (with its
/// stderr).
pub fn run(program: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("{} ({})", out.status, err.trim()))
    }
}

/// `<program> --version`: its first non-empty output line.
pub fn version(program: &Path) -> Ran {
    match run(program, &["--version"], Duration::from_secs(10)) {
        Ok(o) => Ran::Ok(
            o.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_owned(),
        ),
        Err(e) => Ran::Failed(e),
    }
}

/// Where a program would be found: this process's PATH, then the usual system dirs
/// (containerd looks up `containerd-shim-<name>-v2` in its own PATH).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_keeps_the_missing_tail() {
        let r = resolve(Path::new("/proc/self/../nonexistent-husk/a/b"));
        assert!(r.ends_with("nonexistent-husk/a/b"), "{}", r.display());
        assert!(r.starts_with("/proc"), "{}", r.display());
    }

    #[test]
    fn run_reports_status_and_stderr() {
        assert_eq!(
            run(
                Path::new("/bin/sh"),
                &["-c", "echo hi"],
                Duration::from_secs(5)
            )
            .unwrap(),
            "hi\n"
        );
        let e = run(
            Path::new("/bin/sh"),
            &["-c", "echo bad >&2; exit 3"],
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.contains("3") && e.contains("bad"), "{e}");
        assert!(
            run(Path::new("/nonexistent/x"), &[], Duration::from_secs(5))
                .unwrap_err()
                .contains("cannot run")
        );
    }
}
