//! Device benchmark: husk's hybrid vsock against a TCP loopback copy of the same size, and
//! virtio-fs (real virtiofsd) against the same reads done directly on the host, all in the
//! same place and run. Prints figures side by side; asserts nothing about time.
//!
//! Usage: husk-bench-devices [--mib N] [--files N]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_guest_probe::{hash_reader, stream_hash, write_stream, Hasher, PROBE_PORT};
use husk_tests::guest::{Guest, GuestOptions, TempDir};
use husk_tests::kill_group;

const MIB: u64 = 1 << 20;

fn send_stream(w: &mut impl Write, n: u64, seed: u64) -> Result<()> {
    Ok(write_stream(w, n, seed)?)
}

fn hash_all(r: &mut impl Read) -> Result<Hasher> {
    Ok(hash_reader(r)?)
}

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

/// TCP loopback: one thread sends the stream, this one hashes it (the same work the guest
/// and host do over vsock).
fn tcp_copy(n: u64) -> Result<Duration> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let t = Instant::now();
    let sender = std::thread::spawn(move || -> Result<()> {
        let mut s = TcpStream::connect(addr)?;
        send_stream(&mut s, n, 5)?;
        s.shutdown(Shutdown::Write)?;
        Ok(())
    });
    let (mut c, _) = l.accept()?;
    let h = hash_all(&mut c)?;
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    if h.bytes() != n || h.value() != stream_hash(n, 5) {
        bail!("TCP copy corrupted");
    }
    Ok(t.elapsed())
}

fn vsock_up(g: &Guest, n: u64) -> Result<Duration> {
    let mut s = g.connect(PROBE_PORT)?;
    s.write_all(b"SINK\n")?;
    let t = Instant::now();
    send_stream(&mut s, n, 1)?;
    s.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let d = t.elapsed();
    if reply.trim() != format!("OK {n} {}", stream_hash(n, 1)) {
        bail!("guest checksum mismatch: {reply:?}");
    }
    Ok(d)
}

fn vsock_down(g: &Guest, n: u64) -> Result<Duration> {
    let mut s = g.connect(PROBE_PORT)?;
    s.write_all(format!("SOURCE {n} 2\n").as_bytes())?;
    let t = Instant::now();
    let h = hash_all(&mut s)?;
    let d = t.elapsed();
    if h.bytes() != n || h.value() != stream_hash(n, 2) {
        bail!("host checksum mismatch");
    }
    Ok(d)
}

/// Runs one measured step, saying on stderr when it starts and how long it took, so a
/// stalled step is named while it stalls. Every 10 s a step runs, husk-vmm (`vmm`) is
/// asked for a state dump (SIGUSR1); the dumps are printed after the step.
fn step<T>(what: &str, vmm: Option<&Guest>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("bench-devices: {what} ...");
    let t = Instant::now();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let pid = vmm.and_then(Guest::pid);
    let watcher = std::thread::spawn(move || {
        let mut dumps = 0;
        while let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(Duration::from_secs(10)) {
            if let Some(pid) = pid {
                // SAFETY: kill(2) on the pid of our own husk-vmm child, which is alive
                // until the guest is dropped (after this step).
                unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
                dumps += 1;
            }
        }
        dumps
    });
    let r = f().with_context(|| format!("{what} failed"));
    let _ = done.send(());
    let dumps = watcher.join().unwrap_or(0);
    eprintln!(
        "bench-devices: {what} done in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if let (Some(g), true) = (vmm, dumps > 0) {
        eprintln!("bench-devices: {what} was slow; husk-vmm's {dumps} state dump(s):");
        for line in g
            .stderr_text()
            .lines()
            .filter(|l| l.contains(" state") || l.contains(" queue "))
        {
            eprintln!("  {line}");
        }
    }
    r
}

fn count_entries(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        n += 1;
        if e.file_type()?.is_dir() {
            n += count_entries(&e.path())?;
        }
    }
    Ok(n)
}

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let n = opt("--mib", 256) * MIB;
    let files = opt("--files", 10_000);

    // virtio-fs share: one big file and `files` small ones in 100 directories.
    let shared = TempDir::new("bench-fs")?;
    let sock = TempDir::new("bench-fs-sock")?;
    let big = shared.path().join("big.bin");
    send_stream(&mut std::fs::File::create(&big)?, n, 7)?;
    for i in 0..files {
        let d = shared.path().join(format!("tree/d{:03}", i % 100));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("f{i}")), b"x")?;
    }
    let socket = sock.path().join("vfs.sock");
    let virtiofsd = std::env::var("HUSK_VIRTIOFSD").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.cargo/bin/virtiofsd")
    });
    let mut vfs = Command::new(&virtiofsd)
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", shared.path().display()))
        .args(["--sandbox=none", "--cache=never"])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {virtiofsd}"))?;
    let start = Instant::now();
    while !socket.exists() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("virtiofsd did not create its socket");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let g = Guest::start(GuestOptions {
        vcpus: 2,
        memory_mib: 512,
        args: vec![
            "--fs".into(),
            format!("tag=shared,socket={}", socket.display()),
        ],
        ..Default::default()
    })?;
    if let Err(e) = measure(&g, n, files, &shared, &big) {
        eprintln!("{}", g.explain());
        kill_group(vfs.id());
        let _ = vfs.wait();
        return Err(e);
    }
    let code = g.power_off()?;
    kill_group(vfs.id());
    let _ = vfs.kill();
    let _ = vfs.wait();
    if code != 0 {
        bail!("husk-vmm exited {code}");
    }
    Ok(())
}

/// The measurements, against a booted guest with the share at `shared` (tag `shared`).
fn measure(g: &Guest, n: u64, files: u64, shared: &TempDir, big: &Path) -> Result<()> {
    g.command("MOUNT virtiofs shared /mnt/shared")?;

    println!(
        "husk device benchmark ({} MiB transfers, {files} files)",
        n / MIB
    );
    println!("{:<44} {:>12} {:>12}", "", "husk", "peer");
    let tcp = step("TCP loopback copy", None, || tcp_copy(n))?;
    let up = step("vsock host->guest", Some(g), || vsock_up(g, n))?;
    println!(
        "{:<44} {:>8.1} MiB/s {:>8.1} MiB/s (TCP loopback)",
        "vsock host->guest",
        rate(n, up),
        rate(n, tcp)
    );
    let down = step("vsock guest->host", Some(g), || vsock_down(g, n))?;
    println!(
        "{:<44} {:>8.1} MiB/s {:>8.1} MiB/s (TCP loopback)",
        "vsock guest->host",
        rate(n, down),
        rate(n, tcp)
    );

    drop_caches();
    let t = Instant::now();
    let reply = step("virtio-fs sequential read", Some(g), || {
        g.command("HASHFILE /mnt/shared/big.bin")
    })?;
    let guest_read = t.elapsed();
    if reply != format!("OK {n} {}", stream_hash(n, 7)) {
        bail!("virtio-fs read mismatch: {reply}");
    }
    drop_caches();
    let t = Instant::now();
    let h = hash_all(&mut std::fs::File::open(big)?)?;
    let host_read = t.elapsed();
    if h.value() != stream_hash(n, 7) {
        bail!("host read mismatch");
    }
    println!(
        "{:<44} {:>8.1} MiB/s {:>8.1} MiB/s (host, same file)",
        "virtio-fs sequential read (cache=never)",
        rate(n, guest_read),
        rate(n, host_read)
    );

    drop_caches();
    let t = Instant::now();
    let reply = step("virtio-fs find", Some(g), || {
        g.command("FIND /mnt/shared/tree")
    })?;
    let guest_find = t.elapsed();
    drop_caches();
    let t = Instant::now();
    let host_count = count_entries(&shared.path().join("tree"))?;
    let host_find = t.elapsed();
    if reply != format!("OK {host_count}") {
        bail!("guest saw {reply}, host {host_count} entries");
    }
    println!(
        "{:<44} {:>10.0} ms {:>10.0} ms (host, same tree) ratio {:.1}x",
        format!("virtio-fs find ({host_count} entries)"),
        guest_find.as_secs_f64() * 1e3,
        host_find.as_secs_f64() * 1e3,
        guest_find.as_secs_f64() / host_find.as_secs_f64()
    );
    Ok(())
}
