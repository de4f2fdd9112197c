//! Boot: husk-vmm against QEMU's microvm (KVM) booting the same guest kernel and
//! initramfs to husk-agent's ready line, and husk-vmm without its seccomp filters
//! (`--no-seccomp`) for the filters' cost; interleaved. Reference: QEMU.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::report::stats::median_f64;
use crate::report::{Better, Metric, Plot, SectionResult};
use crate::{boot_timeout, guest_initramfs, guest_kernel, vmm_bin};

const GUEST_CMDLINE: &str = "quiet husk.test=poweroff";
const READY: &str = "boot to the agent's ready line";
const EXIT: &str = "boot and power-off";
/// The boot's phases, from the ready line's guest clocks (`uptime_ms`: CLOCK_BOOTTIME at
/// the ready line, `init_ms`: at PID 1's start) against the host's wall time to the line.
/// kvm-clock keeps the guest's clock on the host's, so the difference of the two is the
/// time before the guest kernel started its clock: the VMM's start, loading the kernel
/// and initramfs, and the kernel's first steps.
const PHASE_VMM: &str = "phase: spawn to the guest's clock start";
const PHASE_KERNEL: &str = "phase: guest clock start to /init";
const PHASE_INIT: &str = "phase: /init to the agent's ready line";
/// The keys of husk-vmm's `--exit-stats` `by_kind` (port classes, then MMIO and the rest).
const EXIT_KINDS: [&str; 9] = [
    "serial",
    "i8042",
    "rtc",
    "pci_config",
    "post",
    "other_uarts",
    "other_ports",
    "mmio",
    "other",
];

struct Sample {
    ready: Duration,
    exit: Duration,
    stderr: String,
    ready_line: String,
    /// KVM's counters for the VM (debugfs), last read before it went away.
    kvm: BTreeMap<String, u64>,
}

/// KVM's per-VM counters compared side by side (debugfs `/sys/kernel/debug/kvm/<pid>-<fd>/`,
/// the sums over the VM's vCPUs): every exit, then by reason; then the nested page faults
/// KVM fixed, and how many 4 KiB and 2 MiB pages map guest RAM at the end (the VM's
/// gauges: huge host pages let one fault map 512 small ones).
const KVM_STATS: [&str; 10] = [
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "irq_window_exits",
    "insn_emulation",
    "pf_fixed",
    "pages_4k",
    "pages_2m",
];

/// The debugfs directory of the VM process `pid` made (`<pid>-<vm fd>`), if any.
fn kvm_stats_dir(pid: u32) -> Option<PathBuf> {
    let prefix = format!("{pid}-");
    std::fs::read_dir("/sys/kernel/debug/kvm")
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
}

/// The [`KVM_STATS`] counters under `dir` that could be read.
fn read_kvm_stats(dir: &Path) -> BTreeMap<String, u64> {
    KVM_STATS
        .iter()
        .filter_map(|name| {
            let v = std::fs::read_to_string(dir.join(name)).ok()?;
            Some(((*name).to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Reads the VM's KVM counters of process `pid` every 100 ms until `stop`; the last read
/// (the power-off after the ready line is quick: what it adds after the last read is small,
/// and a slower poll takes less of the test host's one CPU from the guest being timed).
fn watch_kvm_stats(
    pid: u32,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeMap<String, u64>> {
    std::thread::spawn(move || {
        let mut last = BTreeMap::new();
        let mut dir = None;
        while !stop.load(Ordering::Relaxed) {
            if dir.is_none() {
                dir = kvm_stats_dir(pid);
            }
            if let Some(d) = &dir {
                let now = read_kvm_stats(d);
                if now.is_empty() {
                    // The VM is gone: keep what was read before.
                    break;
                }
                last = now;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        last
    })
}

/// The three phases of a boot in ms (VMM, kernel, init), from the wall time to the ready
/// line and the line's `uptime_ms` and `init_ms`; `None` if a field is missing or the
/// clocks disagree (a phase below zero).
fn phases(ready_wall_ms: f64, ready_line: &str) -> Option<(f64, f64, f64)> {
    let uptime: f64 = crate::ready_field(ready_line, "uptime_ms")?.parse().ok()?;
    let init: f64 = crate::ready_field(ready_line, "init_ms")?.parse().ok()?;
    let vmm = ready_wall_ms - uptime;
    let agent = uptime - init;
    (vmm >= 0.0 && agent >= 0.0).then_some((vmm, init, agent))
}

/// Spawns `cmd`, returns when it exits: when the ready line appeared and when it exited.
fn measure(cmd: &mut Command) -> Result<Sample> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let kvm_watch = watch_kvm_stats(child.id(), Arc::clone(&stop));
    let stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = None;
        let mut tail = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if seen.is_none() && line.contains("husk-agent: ready") {
                seen = Some((start.elapsed(), line.clone()));
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
            stop.store(true, Ordering::Relaxed);
            let _ = child.kill();
            let _ = child.wait();
            bail!("watchdog: boot did not finish in {deadline:?}");
        }
        let _ = rx.recv_timeout(Duration::from_millis(10));
    };
    let exit = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let kvm = kvm_watch.join().unwrap_or_default();
    let (ready, tail) = reader.join().map_err(|_| anyhow::anyhow!("reader"))?;
    let stderr = err_reader.join().unwrap_or_default();
    match ready {
        Some((ready, ready_line)) => Ok(Sample {
            ready,
            exit,
            stderr,
            ready_line,
            kvm,
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

fn qemu_cmd() -> Command {
    let mut c = Command::new("qemu-system-x86_64");
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

/// A number field of husk-vmm's `--exit-stats` JSON line.
pub fn field(json: &str, key: &str) -> Option<u64> {
    let rest = json.split(&format!("\"{key}\":")).nth(1)?;
    rest.split([',', '}']).next()?.trim().parse().ok()
}

pub fn section(ctx: &mut Ctx) -> SectionResult {
    let runs = ctx.sizes.boot_runs;
    let mut s = SectionResult::new(
        "boot",
        "Boot: husk-vmm against QEMU microvm",
        "qemu-microvm",
        Plot::Cdf,
        &format!(
            "The same guest kernel and initramfs (husk-agent as /init, `{GUEST_CMDLINE}`) booted \
             {runs} times each, interleaved, with 1 vCPU and 256 MiB: husk-vmm (with its seccomp \
             filters, the default), husk-vmm `--no-seccomp`, and QEMU `-M microvm` with KVM. \
             Wall time from spawn to the agent's ready line, and to the VMM's exit after the \
             guest powers off. The phases split the time to the ready line by the guest's own \
             clock (CLOCK_BOOTTIME, kept on the host's by kvm-clock), which the ready line \
             reports at /init's start (`init_ms`) and at the line (`uptime_ms`): spawn to the \
             guest clock's start (the VMM's start, loading kernel and initramfs, the kernel's \
             first steps), clock start to /init (the kernel's boot, the initramfs unpacked), \
             /init to the ready line (the agent's mounts and start). KVM's counters per boot \
             (exits in all and by reason) are read from debugfs for each VMM's VM until it \
             goes away."
        ),
    );
    s.runtimes = vec![
        "qemu-microvm".into(),
        "husk-vmm".into(),
        "husk-vmm-noseccomp".into(),
    ];
    if let Some(why) = crate::kvm_unusable_reason() {
        for r in s.runtimes.clone() {
            s.skipped
                .insert(r, format!("KVM cannot boot a guest here: {why}"));
        }
        return s;
    }
    for f in [vmm_bin(), guest_kernel(), guest_initramfs()] {
        if !f.is_file() {
            for r in s.runtimes.clone() {
                s.skipped.insert(
                    r,
                    format!("{} is missing: run `make image vmm`", f.display()),
                );
            }
            return s;
        }
    }
    // KVM's own exit counters live in debugfs.
    if !std::path::Path::new("/sys/kernel/debug/kvm").exists() {
        let _ = Command::new("mount")
            .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
            .status();
    }
    let mut vmm_exits = Vec::new();
    let mut kvm_exits = Vec::new();
    // husk-vmm's exits by port class and MMIO, per boot (`--exit-stats`' by_kind).
    let mut by_kind: Vec<(&str, Vec<f64>)> = EXIT_KINDS.iter().map(|k| (*k, Vec::new())).collect();
    for i in 1..=runs {
        let cases: [(&str, Command); 3] = [
            ("husk-vmm", husk_cmd(true)),
            ("husk-vmm-noseccomp", husk_cmd(false)),
            ("qemu-microvm", qemu_cmd()),
        ];
        for (name, mut cmd) in cases {
            match measure(&mut cmd) {
                Ok(m) => {
                    eprintln!(
                        "report: boot {i}/{runs} {name}: ready {:.0} ms, exit {:.0} ms",
                        m.ready.as_secs_f64() * 1e3,
                        m.exit.as_secs_f64() * 1e3
                    );
                    s.metric(READY, None, || {
                        Metric::new(READY, "ms", Better::Lower).headline()
                    })
                    .push(name, m.ready.as_secs_f64() * 1e3);
                    s.metric(EXIT, None, || Metric::new(EXIT, "ms", Better::Lower))
                        .push(name, m.exit.as_secs_f64() * 1e3);
                    for (stat, v) in &m.kvm {
                        let metric = format!("KVM {stat} per boot");
                        s.metric(&metric, None, || {
                            Metric::new(&metric, "count", Better::Lower)
                        })
                        .push(name, *v as f64);
                    }
                    match phases(m.ready.as_secs_f64() * 1e3, &m.ready_line) {
                        Some((vmm, kernel, init)) => {
                            for (metric, v) in
                                [(PHASE_VMM, vmm), (PHASE_KERNEL, kernel), (PHASE_INIT, init)]
                            {
                                s.metric(metric, None, || Metric::new(metric, "ms", Better::Lower))
                                    .push(name, v);
                            }
                        }
                        None => s.notes.push(format!(
                            "{name} boot {i}: no phases from the ready line `{}`",
                            m.ready_line
                        )),
                    }
                    if name == "husk-vmm" {
                        if let Some(stats) =
                            m.stderr.lines().find(|l| l.starts_with("{\"vmm_exits\""))
                        {
                            vmm_exits.extend(field(stats, "vmm_exits").map(|v| v as f64));
                            kvm_exits.extend(field(stats, "kvm_exits").map(|v| v as f64));
                            if let Some(kinds) = stats.split("\"by_kind\":").nth(1) {
                                for (k, v) in &mut by_kind {
                                    v.extend(field(kinds, k).map(|n| n as f64));
                                }
                            }
                        }
                    }
                }
                Err(e) => s.fail(format!("{name} boot {i}: {e:#}")),
            }
        }
    }
    if let Some(v) = median_f64(&vmm_exits) {
        s.notes.push(format!(
            "husk-vmm exits per boot (median): to the VMM {v:.0}, all KVM exits {}.",
            median_f64(&kvm_exits).map_or("n/a (no debugfs)".into(), |k| format!("{k:.0}"))
        ));
        let kinds: Vec<String> = by_kind
            .iter()
            .filter_map(|(k, v)| median_f64(v).map(|m| format!("{k} {m:.0}")))
            .collect();
        if !kinds.is_empty() {
            s.notes.push(format!(
                "husk-vmm exits to the VMM per boot by kind (median; port I/O by the device \
                 behind the port): {}.",
                kinds.join(", ")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn phases_from_the_ready_line() {
        let line = "husk-agent: ready uptime_ms=900 cpus_online=0 kernel=6.1 init_ms=700";
        assert_eq!(super::phases(1000.0, line), Some((100.0, 700.0, 200.0)));
        // An older agent's line has no init_ms; clocks that disagree give nothing.
        let old = "husk-agent: ready uptime_ms=900 cpus_online=0 kernel=6.1";
        assert_eq!(super::phases(1000.0, old), None);
        assert_eq!(super::phases(800.0, line), None);
    }

    #[test]
    fn exit_stats_fields() {
        let j = "{\"vmm_exits\":1234,\"kvm_exits\":56789}";
        assert_eq!(super::field(j, "vmm_exits"), Some(1234));
        assert_eq!(super::field(j, "kvm_exits"), Some(56789));
        assert_eq!(super::field(j, "nope"), None);
    }
}
