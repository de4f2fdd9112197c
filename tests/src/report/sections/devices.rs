//! Devices: husk's hybrid vsock against a TCP loopback copy of the same size, and
//! virtio-fs (a real virtiofsd, `--cache=never`) against the same reads done directly on
//! the host, with one guest booted on husk-vmm (the probe initramfs, driven over vsock).
//! Reference: the host.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_guest_probe::{hash_reader, stream_hash, write_stream, PROBE_PORT};

use super::Ctx;
use crate::guest::{Guest, GuestOptions, TempDir};
use crate::kill_group;
use crate::report::{Better, Metric, Plot, SectionResult};

const MIB: u64 = 1 << 20;

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

/// TCP loopback: one thread sends the stream, this one hashes it (the work the guest and
/// host do over vsock).
fn tcp_copy(n: u64) -> Result<Duration> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let t = Instant::now();
    let sender = std::thread::spawn(move || -> Result<()> {
        let mut s = TcpStream::connect(addr)?;
        write_stream(&mut s, n, 5)?;
        s.shutdown(Shutdown::Write)?;
        Ok(())
    });
    let (mut c, _) = l.accept()?;
    let h = hash_reader(&mut c)?;
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
    write_stream(&mut s, n, 1)?;
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
    let h = hash_reader(&mut s)?;
    let d = t.elapsed();
    if h.bytes() != n || h.value() != stream_hash(n, 2) {
        bail!("host checksum mismatch");
    }
    Ok(d)
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

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let t = Instant::now();
    let r = f()?;
    Ok((t.elapsed(), r))
}

/// Runs one guest step, saying on stderr when it starts and how long it took, so a
/// stalled step is named while it stalls. Every 10 s it runs, husk-vmm is asked for a
/// state dump (SIGUSR1); the dumps are printed after the step.
fn step<T>(what: &str, g: &Guest, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("report: devices: {what} ...");
    let t = Instant::now();
    let (done, wait) = mpsc::channel::<()>();
    let pid = g.pid();
    let watcher = std::thread::spawn(move || {
        let mut dumps = 0;
        while let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(Duration::from_secs(10)) {
            if let Some(pid) = pid {
                // SAFETY: kill(2) on our own husk-vmm child, alive until the guest is
                // dropped (after this step).
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
        "report: devices: {what} done in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if dumps > 0 {
        eprintln!("report: devices: {what} was slow; husk-vmm's {dumps} state dump(s):");
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

pub fn section(ctx: &mut Ctx) -> SectionResult {
    let (mib, files, rounds) = (ctx.sizes.dev_mib, ctx.sizes.dev_files, ctx.sizes.dev_rounds);
    let mut s = SectionResult::new(
        "devices",
        "Devices: vsock and virtio-fs against the host",
        "host",
        Plot::Bars,
        &format!(
            "One guest on husk-vmm (2 vCPUs, 512 MiB, the probe initramfs). vsock: {mib} MiB \
             host -> guest and guest -> host through husk's hybrid vsock, each side hashing the \
             stream; host peer: the same over TCP loopback. virtio-fs (virtiofsd \
             `--cache=never`): a sequential read of a {mib} MiB file and a recursive walk of \
             {files} files in 100 dirs, page caches dropped before each; host peer: the same \
             file and tree read directly. {rounds} round(s)."
        ),
    );
    s.runtimes = vec!["host".into(), "husk".into()];
    if let Some(why) = crate::kvm_unusable_reason() {
        s.skipped.insert(
            "husk".into(),
            format!("KVM cannot boot a guest here: {why}"),
        );
    }
    if let Err(e) = measure(&mut s, mib * MIB, files, rounds) {
        s.fail(format!("{e:#}"));
    }
    let _ = ctx;
    s
}

fn push(s: &mut SectionResult, name: &str, unit: &str, better: Better, rt: &str, v: f64) {
    s.metric(name, None, || Metric::new(name, unit, better).headline())
        .push(rt, v);
}

fn measure(s: &mut SectionResult, n: u64, files: u64, rounds: usize) -> Result<()> {
    let shared = TempDir::new("report-fs")?;
    let sock = TempDir::new("report-fs-sock")?;
    let big = shared.path().join("big.bin");
    write_stream(&mut std::fs::File::create(&big)?, n, 7)?;
    for i in 0..files {
        let d = shared.path().join(format!("tree/d{:03}", i % 100));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("f{i}")), b"x")?;
    }
    let (up_name, down_name) = (
        "stream host -> guest (vsock | TCP lo)",
        "stream guest -> host (vsock | TCP lo)",
    );
    let read_name = "sequential read (virtio-fs | host)";
    let find_name = "walk the tree (virtio-fs | host)";
    let husk = !s.skipped.contains_key("husk");
    // The host's figures first (they need no guest).
    for _ in 0..rounds {
        // One TCP copy as the peer of each direction (loopback has no direction).
        for name in [up_name, down_name] {
            let tcp = tcp_copy(n)?;
            push(s, name, "MiB/s", Better::Higher, "host", rate(n, tcp));
        }
        drop_caches();
        let (d, h) = timed(|| Ok(hash_reader(&mut std::fs::File::open(&big)?)?))?;
        if h.value() != stream_hash(n, 7) {
            bail!("host read mismatch");
        }
        push(s, read_name, "MiB/s", Better::Higher, "host", rate(n, d));
        drop_caches();
        let (d, _) = timed(|| count_entries(&shared.path().join("tree")))?;
        push(
            s,
            find_name,
            "ms",
            Better::Lower,
            "host",
            d.as_secs_f64() * 1e3,
        );
    }
    if !husk {
        return Ok(());
    }
    let socket = sock.path().join("vfs.sock");
    let virtiofsd = crate::containerd::virtiofsd_bin().context("virtiofsd is not installed")?;
    let mut vfs = Command::new(&virtiofsd)
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", shared.path().display()))
        .args(["--sandbox=none", "--cache=never"])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", virtiofsd.display()))?;
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = (|| -> Result<()> {
        let g = Guest::start(GuestOptions {
            vcpus: 2,
            memory_mib: 512,
            args: vec![
                "--fs".into(),
                format!("tag=shared,socket={}", socket.display()),
            ],
            ..Default::default()
        })?;
        let host_count = count_entries(&shared.path().join("tree"))?;
        let r = (|| -> Result<()> {
            g.command("MOUNT virtiofs shared /mnt/shared")?;
            for _ in 0..rounds {
                let up = step("vsock host -> guest", &g, || vsock_up(&g, n))?;
                push(s, up_name, "MiB/s", Better::Higher, "husk", rate(n, up));
                let down = step("vsock guest -> host", &g, || vsock_down(&g, n))?;
                push(s, down_name, "MiB/s", Better::Higher, "husk", rate(n, down));
                drop_caches();
                let (d, reply) = step("virtio-fs sequential read", &g, || {
                    timed(|| g.command("HASHFILE /mnt/shared/big.bin"))
                })?;
                if reply != format!("OK {n} {}", stream_hash(n, 7)) {
                    bail!("virtio-fs read mismatch: {reply}");
                }
                push(s, read_name, "MiB/s", Better::Higher, "husk", rate(n, d));
                drop_caches();
                let (d, reply) = step("virtio-fs walk", &g, || {
                    timed(|| g.command("FIND /mnt/shared/tree"))
                })?;
                if reply != format!("OK {host_count}") {
                    bail!("guest saw {reply}, host {host_count} entries");
                }
                push(
                    s,
                    find_name,
                    "ms",
                    Better::Lower,
                    "husk",
                    d.as_secs_f64() * 1e3,
                );
            }
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("{}", g.explain());
            return Err(e);
        }
        let code = g.power_off()?;
        if code != 0 {
            bail!("husk-vmm exited {code}");
        }
        Ok(())
    })();
    kill_group(vfs.id());
    let _ = vfs.kill();
    let _ = vfs.wait();
    r
}
