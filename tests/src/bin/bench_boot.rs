//! Boot benchmark: husk-vmm against QEMU's microvm (KVM) booting the same guest kernel and
//! initramfs to husk-agent's ready line, interleaved, in the same place; husk-vmm both with
//! its seccomp filters (the default) and without (`--no-seccomp`), to show what the filters
//! cost. Prints figures side by side; asserts nothing about time.
//!
//! Usage: husk-bench-boot [--runs N] [--qemu PATH]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk_tests::{boot_timeout, guest_initramfs, guest_kernel, require_file, vmm_bin};

const GUEST_CMDLINE: &str = "quiet husk.test=poweroff";

struct Sample {
    ready: Duration,
    exit: Duration,
    stderr: String,
}

/// Spawns `cmd`, returns when it exits: the time the ready line appeared and the time of exit.
fn measure(cmd: &mut Command) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = None;
        let mut tail = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if seen.is_none() && line.contains("husk-agent: ready") {
                seen = Some(start.elapsed());
                let _ = tx.send(());
            }
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
        (seen, tail)
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = boot_timeout();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("watchdog: boot did not finish in {deadline:?}");
        }
        let _ = rx.recv_timeout(Duration::from_millis(10));
    };
    let exit = start.elapsed();
    let (ready, tail) = reader.join().map_err(|_| anyhow::anyhow!("reader"))?;
    let stderr = err_reader.join().unwrap_or_default();
    match ready {
        Some(ready) => Ok(Sample {
            ready,
            exit,
            stderr,
        }),
        None => bail!(
            "no ready line (exit {status}); console tail:\n{}\nstderr:\n{stderr}",
            tail.join("\n")
        ),
    }
}

fn husk_cmd(seccomp: bool) -> Command {
    let mut c = Command::new(vmm_bin());
    if !seccomp {
        c.arg("--no-seccomp");
    }
    c.arg("--kernel")
        .arg(guest_kernel())
        .arg("--initramfs")
        .arg(guest_initramfs())
        .args(["--memory", "256", "--vcpus", "1", "--exit-stats"])
        .args(["--cmdline", GUEST_CMDLINE]);
    c
}

fn qemu_cmd(qemu: &str) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off",
        "-accel",
        "kvm",
        "-cpu",
        "host",
    ])
    .args(["-smp", "1", "-m", "256", "-nodefaults", "-no-user-config"])
    .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
    .arg("-kernel")
    .arg(guest_kernel())
    .arg("-initrd")
    .arg(guest_initramfs())
    // The command line husk-vmm gives, but reboot=t: microvm has no i8042, and after the
    // keyboard reset fails the kernel falls back to a BIOS restart that hangs there. A
    // triple fault with -no-reboot makes QEMU exit.
    .args([
        "-append",
        &format!("console=ttyS0 reboot=t panic=-1 {GUEST_CMDLINE}"),
    ]);
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let mut runs = 10usize;
    let mut qemu = "qemu-system-x86_64".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--qemu" => qemu = args.next().context("--qemu PATH")?,
            other => bail!("unknown argument {other}"),
        }
    }
    for f in [vmm_bin(), guest_kernel(), guest_initramfs()] {
        require_file(&f);
    }
    // KVM's own exit counters live in debugfs.
    if !std::path::Path::new("/sys/kernel/debug/kvm").exists() {
        let _ = Command::new("mount")
            .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
            .status();
    }
    let (mut husk, mut open, mut q) = (Vec::new(), Vec::new(), Vec::new());
    let mut exits = Vec::new();
    for i in 0..runs {
        let h = measure(&mut husk_cmd(true)).context("husk-vmm boot")?;
        let n = measure(&mut husk_cmd(false)).context("husk-vmm --no-seccomp boot")?;
        let m = measure(&mut qemu_cmd(&qemu)).context("qemu microvm boot")?;
        let stats = h
            .stderr
            .lines()
            .find(|l| l.starts_with("{\"vmm_exits\""))
            .unwrap_or("{}")
            .to_owned();
        println!(
            "run {:2}: husk-vmm ready {:8.1} ms exit {:8.1} ms {stats} | --no-seccomp ready {:8.1} ms exit {:8.1} ms | qemu-microvm ready {:8.1} ms exit {:8.1} ms",
            i + 1,
            ms(h.ready),
            ms(h.exit),
            ms(n.ready),
            ms(n.exit),
            ms(m.ready),
            ms(m.exit)
        );
        exits.push(stats);
        husk.push(h);
        open.push(n);
        q.push(m);
    }
    let hr = median(husk.iter().map(|s| s.ready).collect());
    let he = median(husk.iter().map(|s| s.exit).collect());
    let nr = median(open.iter().map(|s| s.ready).collect());
    let ne = median(open.iter().map(|s| s.exit).collect());
    let qr = median(q.iter().map(|s| s.ready).collect());
    let qe = median(q.iter().map(|s| s.exit).collect());
    println!("\nboot to husk-agent ready line, {runs} runs each, interleaved (medians):");
    println!("  {:<14} {:>12} {:>12}", "", "ready (ms)", "exit (ms)");
    println!("  {:<14} {:>12.1} {:>12.1}", "husk-vmm", ms(hr), ms(he));
    println!("  {:<14} {:>12.1} {:>12.1}", "--no-seccomp", ms(nr), ms(ne));
    println!("  {:<14} {:>12.1} {:>12.1}", "qemu microvm", ms(qr), ms(qe));
    println!(
        "  ratio filtered/unfiltered husk-vmm: ready {:.3}, exit {:.3}",
        hr.as_secs_f64() / nr.as_secs_f64(),
        he.as_secs_f64() / ne.as_secs_f64()
    );
    println!(
        "  ratio husk/qemu: ready {:.2}, exit {:.2}",
        hr.as_secs_f64() / qr.as_secs_f64(),
        he.as_secs_f64() / qe.as_secs_f64()
    );
    let vmm_exits: Vec<u64> = exits.iter().filter_map(|s| field(s, "vmm_exits")).collect();
    let kvm_exits: Vec<u64> = exits.iter().filter_map(|s| field(s, "kvm_exits")).collect();
    if !vmm_exits.is_empty() {
        println!(
            "  husk-vmm exits per boot (median): to the VMM {}, all KVM exits {}",
            median_u64(vmm_exits),
            if kvm_exits.is_empty() {
                "n/a (no debugfs)".to_owned()
            } else {
                median_u64(kvm_exits).to_string()
            }
        );
    }
    Ok(())
}

fn field(json: &str, key: &str) -> Option<u64> {
    let rest = json.split(&format!("\"{key}\":")).nth(1)?;
    rest.split([',', '}']).next()?.trim().parse().ok()
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}
