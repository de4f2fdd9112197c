//! husk-bench-probe: the workloads of the isolation-overhead report (`make report`), run
//! inside a container under each runtime (a static binary in the test image). Each
//! command times only its own work and prints one line of `key=value` fields.
//!
//! ```text
//! husk-bench-probe cpu MIB                      hash MIB MiB (a 1 MiB buffer, MIB times)
//! husk-bench-probe syscalls ITERS               getpid, 4 KiB pread of a tmpfs file,
//!                                               open+close, fork+exit (ITERS/100 forks)
//! husk-bench-probe fileio DIR MIB FILES         sequential write+fsync and read of a MIB
//!                                               MiB file in DIR; create, stat and unlink
//!                                               of FILES empty files
//! ```
//! Output: `cpu mib=<n> secs=<s> mib_s=<rate> hash=<h>`;
//! `syscalls getpid_ns=.. read4k_ns=.. openclose_ns=.. forkexit_ns=.. tmpfs=<path>`;
//! `fileio dir=<d> fs=<magic> write_mib_s=.. read_mib_s=.. create_us=.. stat_us=.. unlink_us=..`.
//! The read follows `POSIX_FADV_DONTNEED` on the written file, so it comes from the page
//! cache only where the kernel kept it (a FUSE/virtio-fs host side keeps its own).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Instant;

use husk_guest_probe::{Hasher, Stream};

const MIB: usize = 1 << 20;
const TMPFS_MAGIC: i64 = 0x0102_1994;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["cpu", mib] => num(mib).and_then(cpu),
        ["syscalls", iters] => num(iters).and_then(syscalls),
        ["fileio", dir, mib, files] => {
            num(mib).and_then(|m| num(files).and_then(|f| fileio(Path::new(dir), m, f)))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: husk-bench-probe cpu MIB | syscalls ITERS | fileio DIR MIB FILES",
        )),
    };
    match r {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("husk-bench-probe: {e}");
            std::process::exit(1);
        }
    }
}

fn num(s: &str) -> io::Result<u64> {
    s.parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("not a number: {s}")))
}

fn cpu(mib: u64) -> io::Result<String> {
    let mut buf = vec![0u8; MIB];
    Stream::new(3).fill(&mut buf);
    let t = Instant::now();
    let mut h = Hasher::default();
    for _ in 0..mib {
        h.update(&buf);
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(format!(
        "cpu mib={mib} secs={secs:.6} mib_s={:.3} hash={:016x}",
        mib as f64 / secs,
        h.value()
    ))
}

fn statfs_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs that outlive the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type is i64 on glibc and u64 on musl; the magics fit either.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

/// Nanoseconds per call of `f` over `n` calls.
fn per_call(n: u64, mut f: impl FnMut() -> io::Result<()>) -> io::Result<f64> {
    let t = Instant::now();
    for _ in 0..n {
        f()?;
    }
    Ok(t.elapsed().as_nanos() as f64 / n.max(1) as f64)
}

fn syscalls(iters: u64) -> io::Result<String> {
    // A tmpfs file: /dev/shm in every runtime's default spec.
    let dir = ["/dev/shm", "/tmp"]
        .into_iter()
        .map(Path::new)
        .find(|d| statfs_type(d).ok() == Some(TMPFS_MAGIC))
        .ok_or_else(|| io::Error::other("no tmpfs at /dev/shm or /tmp"))?;
    let path = dir.join(format!("husk-bench-{}", std::process::id()));
    File::create(&path)?.write_all(&[7u8; 4096])?;
    let getpid = per_call(iters, || {
        // SAFETY: getpid has no preconditions; the raw syscall skips any libc caching.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getpid) });
        Ok(())
    })?;
    let f = File::open(&path)?;
    let mut page = [0u8; 4096];
    let read = per_call(iters, || {
        let n = f.read_at(&mut page, 0)?;
        if n != 4096 {
            return Err(io::Error::other(format!("short read: {n}")));
        }
        Ok(())
    })?;
    let c = CString::new(path.as_os_str().as_bytes())?;
    let open = per_call(iters / 4, || {
        // SAFETY: a NUL-terminated path; the fd is closed right away.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd this loop opened.
        unsafe { libc::close(fd) };
        Ok(())
    })?;
    let forks = (iters / 100).max(1);
    let fork = per_call(forks, || {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            // SAFETY: _exit ends the child without running the parent's destructors.
            0 => unsafe { libc::_exit(0) },
            pid => {
                let mut status = 0;
                // SAFETY: waits for the child this loop forked.
                if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        }
    })?;
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(format!(
        "syscalls iters={iters} forks={forks} getpid_ns={getpid:.1} read4k_ns={read:.1} \
         openclose_ns={open:.1} forkexit_ns={fork:.1} tmpfs={}",
        dir.display()
    ))
}

fn fileio(dir: &Path, mib: u64, files: u64) -> io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let fs = statfs_type(dir)?;
    let big = dir.join("husk-bench.bin");
    let mut buf = vec![0u8; MIB];
    Stream::new(9).fill(&mut buf);
    let t = Instant::now();
    let mut f = File::create(&big)?;
    for _ in 0..mib {
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    let write = t.elapsed().as_secs_f64();
    // Progress on stderr: a watchdog's report of a stuck run shows how far it got.
    eprintln!("fileio: wrote and synced {mib} MiB in {write:.2} s");
    // SAFETY: advice on an open fd; no memory is passed.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    drop(f);
    let t = Instant::now();
    let mut f = File::open(&big)?;
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let read = t.elapsed().as_secs_f64();
    eprintln!("fileio: read {total} bytes in {read:.2} s");
    if total != mib * MIB as u64 {
        return Err(io::Error::other(format!("read {total} bytes back")));
    }
    drop(f);
    std::fs::remove_file(&big)?;
    let tree = dir.join("husk-bench-files");
    std::fs::create_dir_all(&tree)?;
    let name = |i: u64| tree.join(format!("f{i}"));
    let per_file = |f: &mut dyn FnMut(u64) -> io::Result<()>| -> io::Result<f64> {
        let t = Instant::now();
        for i in 0..files {
            f(i)?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / files.max(1) as f64)
    };
    let create = per_file(&mut |i| File::create(name(i)).map(drop))?;
    eprintln!("fileio: create {create:.1} us/file");
    let stat = per_file(&mut |i| std::fs::metadata(name(i)).map(drop))?;
    eprintln!("fileio: stat {stat:.1} us/file");
    let unlink = per_file(&mut |i| std::fs::remove_file(name(i)))?;
    std::fs::remove_dir(&tree)?;
    Ok(format!(
        "fileio dir={} fs={fs:#x} mib={mib} files={files} write_mib_s={:.3} read_mib_s={:.3} \
         create_us={create:.2} stat_us={stat:.2} unlink_us={unlink:.2}",
        dir.display(),
        mib as f64 / write,
        mib as f64 / read
    ))
}
