//! containerd benchmark: `ctr run --rm` of busybox `true` under runc and under husk,
//! interleaved, through a private containerd; then the host memory of one idle husk pod
//! (PSS and RSS of the shim, husk-vmm and virtiofsd, and the guest RAM pages actually
//! touched). Prints figures side by side; asserts nothing about time.
//!
//! Every `ctr` call runs under a watchdog: a run that fails or hangs is reported with its
//! error, cleaned up and left out of the figures, and the benchmark goes on; the exit
//! status is nonzero at the end if anything failed.
//!
//! Usage: husk-bench-shim [--runs N] [--timeout SECS]

use husk_tests::{median, ms};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_tests::containerd::{processes_mentioning, Containerd, HuskToml, BUSYBOX_IMAGE, RUNTIME};

const RUNC: &str = "io.containerd.runc.v2";
/// husk.toml's default `memory_mib` (config/husk.toml), when neither the test config nor
/// husk-vmm's command line says otherwise.
const DEFAULT_MEMORY_MIB: u64 = 256;
/// The name husk-vmm gives the memfd of guest RAM (vmm/src/vm.rs).
const GUEST_RAM_MEMFD: &str = "/memfd:husk-guest-ram";

/// Lines, indented, for failure reports.
fn indent(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("    | {l}\n")).collect()
}

/// The last `n` non-empty lines of `s`, indented (the shims' lines in containerd's log
/// come with an empty line after each).
fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    indent(&lines[lines.len().saturating_sub(n)..])
}

/// What a guest console shows about a failure: from the first kernel oops, warning or
/// panic (40 lines: the reason, RIP and call trace), else its last lines.
fn console_excerpt(console: &str) -> String {
    const MARKERS: [&str; 7] = [
        "BUG:",
        "Oops",
        "general protection fault",
        "Unable to handle",
        "WARNING:",
        "Kernel panic",
        "corruption",
    ];
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    match lines
        .iter()
        .position(|l| MARKERS.iter().any(|m| l.contains(m)))
    {
        Some(i) => indent(&lines[i..lines.len().min(i + 40)]),
        None => tail_lines(console, 15),
    }
}

/// A compact account of a failed `ctr`: the watchdog's message (with ctr's own output)
/// rather than the 20 KB of containerd log `ctr_timeout` attaches; the log's last lines
/// and the pod's console and VMM log tails are added by [`report_failure`].
fn brief(e: &anyhow::Error) -> String {
    let s = e.root_cause().to_string();
    let s = s.trim();
    if s.len() > 3000 {
        let mut end = 3000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s.to_owned()
    }
}

fn report_failure(c: &Containerd, id: &str, what: &str, err: &str) {
    let err: Vec<&str> = err.lines().collect();
    println!(
        "  FAILED {what}: {}\n{}",
        err.first().unwrap_or(&""),
        indent(err.get(1..).unwrap_or_default())
    );
    pod_context(c, id);
}

/// A pod's guest console (its oops, if any), VMM log and containerd's last lines.
fn pod_context(c: &Containerd, id: &str) {
    let d = c.pod_dir(id);
    if let Ok(text) = std::fs::read_to_string(d.join("console.log")) {
        println!("  --- {id} guest console ---\n{}", console_excerpt(&text));
    }
    if let Ok(text) = std::fs::read_to_string(d.join("vmm.log")) {
        println!(
            "  --- {id} vmm.log (last lines) ---\n{}",
            tail_lines(&text, 10)
        );
    }
    println!(
        "  --- containerd log (last lines) ---\n{}",
        tail_lines(&c.log(), 25)
    );
}

/// Sends SIGKILL to a pod's recorded processes (the last resort after a hung teardown).
fn kill_pod(c: &Containerd, id: &str) {
    for which in ["vmm", "virtiofsd", "shim"] {
        if let Some(pid) = c.pod_pid(id, which) {
            // SAFETY: kill(2) takes plain integers; a stale pid at worst fails with ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes whatever a failed or hung run left (task, container, a stuck pod), so the
/// next runs start from a clean containerd. Returns false if something stays behind.
fn clean_up(c: &Containerd, id: &str) -> bool {
    let t = Duration::from_secs(60);
    let _ = c.ctr_timeout(&["task", "kill", "-s", "SIGKILL", id], t);
    let _ = c.ctr_timeout(&["task", "rm", "-f", id], t);
    let _ = c.ctr_timeout(&["container", "rm", id], t);
    let mut left = c.wait_clean(Duration::from_secs(30));
    if !left.is_empty() {
        kill_pod(c, id);
        let _ = c.ctr_timeout(&["task", "rm", "-f", id], t);
        let _ = c.ctr_timeout(&["container", "rm", id], t);
        left = c.wait_clean(Duration::from_secs(30));
    }
    if !left.is_empty() {
        println!(
            "  left behind after cleaning up {id}:\n{}",
            tail_lines(&left, 20)
        );
    }
    left.is_empty()
}

/// One `ctr run --rm <runtime> <image> <id> /bin/true`: its wall time, or the reason it
/// failed (after cleaning up).
fn run_true(
    c: &Containerd,
    runtime: &str,
    config: Option<&Path>,
    id: &str,
    timeout: Duration,
) -> Option<Duration> {
    let config = config.map(|p| p.display().to_string());
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    if let Some(p) = &config {
        args.extend(["--runtime-config-path", p]);
    }
    args.extend([BUSYBOX_IMAGE, id, "/bin/true"]);
    let start = Instant::now();
    let err = match c.ctr_timeout(&args, timeout) {
        Ok(o) if o.code() == Some(0) => {
            let took = start.elapsed();
            // Let the previous pod's teardown finish before the next run starts.
            let left = c.wait_clean(Duration::from_secs(30));
            if !left.is_empty() {
                println!(
                    "  note: {id} still left after 30 s:\n{}",
                    tail_lines(&left, 10)
                );
            }
            return Some(took);
        }
        Ok(o) => format!(
            "ctr exited with {} after {:.1} s\nstdout: {}\nstderr: {}",
            o.status,
            o.elapsed.as_secs_f64(),
            o.stdout.trim(),
            o.stderr.trim()
        ),
        Err(e) => brief(&e),
    };
    report_failure(c, id, &format!("{runtime} {id}"), &err);
    clean_up(c, id);
    None
}

fn print_stats(name: &str, v: &[Duration], runs: usize) {
    if v.is_empty() {
        println!("  {name:<30} no successful run of {runs}");
        return;
    }
    let min = v.iter().min().copied().unwrap_or_default();
    let max = v.iter().max().copied().unwrap_or_default();
    println!(
        "  {name:<30} {:>10.1} {:>10.1} {:>10.1} {:>6}/{runs}",
        ms(median(v)),
        ms(min),
        ms(max),
        v.len()
    );
}

/// `Key:  N kB` lines of a smaps-style file, in KiB.
fn smaps_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The guest RAM mappings of husk-vmm in /proc/<pid>/smaps: (mapped KiB, resident KiB,
/// number of mappings). Resident pages of the shared memfd mapping are the pages the
/// guest (or the VMM) touched.
fn guest_ram_mappings(pid: u32) -> Result<(u64, u64, usize)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("/proc/{pid}/smaps"))?;
    parse_guest_ram(&smaps)
        .with_context(|| format!("no {GUEST_RAM_MEMFD} mapping in /proc/{pid}/smaps"))
}

/// Sums Size and Rss over the smaps entries whose path is the guest RAM memfd.
fn parse_guest_ram(smaps: &str) -> Option<(u64, u64, usize)> {
    let (mut size, mut rss, mut n) = (0, 0, 0);
    let mut in_ram = false;
    for l in smaps.lines() {
        let mut f = l.split_whitespace();
        let first = f.next().unwrap_or("");
        // A mapping's header: "start-end perms offset dev inode [path]".
        if first.contains('-') && !first.ends_with(':') {
            let path = f.nth(4).unwrap_or("");
            in_ram = path.starts_with(GUEST_RAM_MEMFD);
            n += usize::from(in_ram);
            continue;
        }
        if in_ram {
            if let Some(v) = smaps_field(l, "Size") {
                size += v;
            } else if let Some(v) = smaps_field(l, "Rss") {
                rss += v;
            }
        }
    }
    (n > 0).then_some((size, rss, n))
}

/// Pages allocated in the guest RAM memfd itself (touched by anyone: guest, VMM or
/// virtiofsd), from the blocks of the file behind one of husk-vmm's fds, in KiB.
fn guest_ram_allocated(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let rd = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    rd.flatten().find_map(|e| {
        let target = std::fs::read_link(e.path()).ok()?;
        if !target.to_string_lossy().starts_with(GUEST_RAM_MEMFD) {
            return None;
        }
        Some(std::fs::metadata(e.path()).ok()?.blocks() / 2)
    })
}

/// The guest memory size husk-vmm was started with (`--memory N`).
fn vmm_memory_arg(cmd: &str) -> Option<u64> {
    let mut it = cmd.split_whitespace();
    while let Some(a) = it.next() {
        if a == "--memory" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// `memory_mib` from the husk.toml the shim reads, else the default.
fn configured_memory_mib(c: &Containerd) -> u64 {
    std::fs::read_to_string(&c.husk_config)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            if k.trim() != "memory_mib" {
                return None;
            }
            v.trim().parse().ok()
        })
        .unwrap_or(DEFAULT_MEMORY_MIB)
}

fn wait_status(c: &Containerd, id: &str, want: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let s = c.task_status(id);
        if s.as_deref() == Some(want) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("task {id}: status {s:?} after {timeout:?}, want {want}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Host memory of one idle husk pod (`sleep 3600`). Returns false if anything failed.
fn idle_memory(c: &Containerd, timeout: Duration) -> bool {
    let id = "idle";
    println!("\nidle husk pod ({id}: sleep 3600), host memory:");
    let args = [
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        BUSYBOX_IMAGE,
        id,
        "sleep",
        "3600",
    ];
    let started = match c.ctr_timeout(&args, timeout) {
        Ok(o) if o.code() == Some(0) => {
            wait_status(c, id, "RUNNING", Duration::from_secs(60)).map_err(|e| format!("{e:#}"))
        }
        Ok(o) => Err(format!(
            "ctr run -d exited with {}\n    stderr: {}",
            o.status,
            o.stderr.trim()
        )),
        Err(e) => Err(brief(&e)),
    };
    if let Err(e) = started {
        report_failure(c, id, "idle pod start", &e);
        clean_up(c, id);
        return false;
    }
    std::thread::sleep(Duration::from_secs(5));

    let mut ok = true;
    let (mut pss, mut rss) = (0u64, 0u64);
    let mut vmm = None;
    println!(
        "  {:<26} {:>8} {:>10} {:>10}",
        "process", "pid", "PSS MiB", "RSS MiB"
    );
    for (name, short) in [
        ("containerd-shim-husk-v2", "shim"),
        ("husk-vmm", "husk-vmm"),
        ("virtiofsd", "virtiofsd"),
    ] {
        let procs: Vec<(u32, String)> = processes_mentioning(c.dir.path())
            .into_iter()
            .filter(|(_, cmd)| {
                let argv0 = cmd.split_whitespace().next().unwrap_or("");
                Path::new(argv0).file_name().and_then(|n| n.to_str()) == Some(name)
            })
            .collect();
        if procs.is_empty() {
            println!("  FAILED: no {name} process of this containerd");
            ok = false;
        }
        for (pid, cmd) in procs {
            match std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
                Ok(t) => {
                    let (p, r) = (
                        smaps_field(&t, "Pss").unwrap_or(0),
                        smaps_field(&t, "Rss").unwrap_or(0),
                    );
                    pss += p;
                    rss += r;
                    println!("  {short:<26} {pid:>8} {:>10.1} {:>10.1}", mib(p), mib(r));
                }
                Err(e) => {
                    println!("  FAILED: /proc/{pid}/smaps_rollup ({name}): {e}");
                    ok = false;
                }
            }
            if name == "husk-vmm" {
                vmm = Some((pid, cmd));
            }
        }
    }
    println!(
        "  {:<26} {:>8} {:>10.1} {:>10.1}",
        "sum",
        "",
        mib(pss),
        mib(rss)
    );
    println!("  (RSS counts guest pages that virtiofsd also maps twice; PSS splits them)");

    if let Some((pid, cmd)) = vmm {
        let configured = configured_memory_mib(c);
        let vm_mib = vmm_memory_arg(&cmd).unwrap_or(configured);
        match guest_ram_mappings(pid) {
            Ok((size, touched, n)) => {
                println!(
                    "  guest RAM touched (RSS of husk-vmm's {GUEST_RAM_MEMFD} mapping{}): \
                     {:.1} MiB of {vm_mib} MiB ({:.0}%); mapped {:.1} MiB; \
                     husk.toml memory_mib {configured}",
                    if n == 1 { "" } else { "s" },
                    mib(touched),
                    100.0 * mib(touched) / vm_mib as f64,
                    mib(size),
                );
            }
            Err(e) => {
                println!("  FAILED: guest RAM: {e:#}");
                ok = false;
            }
        }
        if let Some(kib) = guest_ram_allocated(pid) {
            println!(
                "  guest RAM memfd pages allocated (by guest, VMM or virtiofsd): {:.1} MiB",
                mib(kib)
            );
        }
    }

    let t = Duration::from_secs(60);
    let teardown = (|| -> Result<()> {
        let o = c.ctr_timeout(&["task", "kill", "-s", "SIGKILL", id], t)?;
        anyhow::ensure!(o.code() == Some(0), "ctr task kill: {}", o.stderr.trim());
        wait_status(c, id, "STOPPED", Duration::from_secs(60))?;
        let o = c.ctr_timeout(&["task", "rm", id], t)?;
        anyhow::ensure!(o.code() == Some(0), "ctr task rm: {}", o.stderr.trim());
        let o = c.ctr_timeout(&["container", "rm", id], t)?;
        anyhow::ensure!(o.code() == Some(0), "ctr container rm: {}", o.stderr.trim());
        Ok(())
    })();
    if let Err(e) = teardown {
        report_failure(c, id, "idle pod teardown", &brief(&e));
        clean_up(c, id);
        ok = false;
    }
    let left = c.wait_clean(Duration::from_secs(30));
    if left.is_empty() {
        println!("  after kill and rm: nothing left behind");
    } else {
        println!(
            "  FAILED: left behind 30 s after the idle pod's removal:\n{}",
            tail_lines(&left, 30)
        );
        pod_context(c, id);
        let start = Instant::now();
        let more = c.wait_clean(Duration::from_secs(90));
        if more.is_empty() {
            println!(
                "  (all gone {:.0} s later)",
                30.0 + start.elapsed().as_secs_f64()
            );
        } else {
            println!(
                "  still left 120 s after the removal:\n{}",
                tail_lines(&more, 30)
            );
        }
        ok = false;
    }
    ok
}

fn main() -> Result<()> {
    let mut runs = 10usize;
    let mut timeout = Duration::from_secs(180);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--runs" => runs = value()?.parse().context("--runs")?,
            "--timeout" => timeout = Duration::from_secs(value()?.parse().context("--timeout")?),
            other => {
                bail!("unknown argument {other:?}; usage: husk-bench-shim [--runs N] [--timeout SECS]")
            }
        }
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let c = Containerd::start(&HuskToml::default())?;
    c.import_busybox()?;
    // The same husk.toml with husk-vmm unjailed (`ctr run --runtime-config-path`), for
    // the cost of the jail (SECURITY.md); the seccomp filters' cost is `make bench`'s.
    let unjailed = c.dir.path().join("husk-unjailed.toml");
    std::fs::write(
        &unjailed,
        format!(
            "{}\njail = false\n",
            std::fs::read_to_string(&c.husk_config).context("read husk.toml")?
        ),
    )?;
    println!(
        "husk-bench-shim: private containerd at {}; ctr run --rm {BUSYBOX_IMAGE} /bin/true, \
         {runs} runs each, interleaved, watchdog {} s per ctr",
        c.socket.display(),
        timeout.as_secs()
    );

    let mut failed = 0usize;
    // One warm-up of each, not counted (page cache, first snapshot, first cgroup).
    for (runtime, config, id) in [
        (RUNC, None, "rwarm"),
        (RUNTIME, None, "hwarm"),
        (RUNTIME, Some(unjailed.as_path()), "uwarm"),
    ] {
        match run_true(&c, runtime, config, id, timeout) {
            Some(d) => println!("warm-up {runtime}: {:.1} ms (not counted)", ms(d)),
            None => failed += 1,
        }
    }
    let (mut runc, mut husk, mut husk_unjailed) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=runs {
        let r = run_true(&c, RUNC, None, &format!("r{i}"), timeout);
        let h = run_true(&c, RUNTIME, None, &format!("h{i}"), timeout);
        let u = run_true(&c, RUNTIME, Some(&unjailed), &format!("u{i}"), timeout);
        let show = |d: Option<Duration>| d.map_or("FAILED".into(), |d| format!("{:.1} ms", ms(d)));
        println!(
            "run {i:2}/{runs}: runc {:>12}  husk {:>12}  husk unjailed {:>12}",
            show(r),
            show(h),
            show(u)
        );
        for (d, v) in [(r, &mut runc), (h, &mut husk), (u, &mut husk_unjailed)] {
            match d {
                Some(d) => v.push(d),
                None => failed += 1,
            }
        }
    }
    println!("\nctr run --rm busybox /bin/true (wall time of ctr, ms):");
    println!(
        "  {:<30} {:>10} {:>10} {:>10} {:>8}",
        "", "median", "min", "max", "ok"
    );
    print_stats("runc (io.containerd.runc.v2)", &runc, runs);
    print_stats("husk (io.containerd.husk.v2)", &husk, runs);
    print_stats("husk, jail = false", &husk_unjailed, runs);
    let ratio = |a: &[Duration], b: &[Duration]| {
        if a.is_empty() || b.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.2}", median(a).as_secs_f64() / median(b).as_secs_f64())
        }
    };
    println!("  ratio husk/runc (medians): {}", ratio(&husk, &runc));
    println!(
        "  ratio husk jailed/unjailed (medians): {}",
        ratio(&husk, &husk_unjailed)
    );

    if !idle_memory(&c, timeout) {
        failed += 1;
    }
    if failed > 0 {
        // Not an Err: its backtrace (RUST_BACKTRACE is set in the test host) says nothing.
        eprintln!("husk-bench-shim: {failed} run(s) or measurement(s) failed (reported above)");
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0010000000 rw-s 00000000 00:01 2049                       /memfd:husk-guest-ram (deleted)
Size:             262144 kB
KernelPageSize:        4 kB
Rss:               37376 kB
Pss:               36000 kB
Pss_Shmem:         36000 kB
VmFlags: rd wr sh mr mw me ms sd
7f0010000000-7f0010021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                 100 kB
VmFlags: rd wr mr mw me ac sd
";

    #[test]
    fn guest_ram_is_the_memfd_mapping_only() {
        assert_eq!(parse_guest_ram(SMAPS), Some((262144, 37376, 1)));
        assert_eq!(
            parse_guest_ram("55d0-55e0 r-xp 00000000 08:01 12 /bin/x\nRss: 4 kB\n"),
            None
        );
    }

    #[test]
    fn rollup_fields_match_whole_keys() {
        let t = "Rss:  5734 kB\nPss:  4505 kB\nPss_Anon:  4000 kB\n";
        assert_eq!(smaps_field(t, "Pss"), Some(4505));
        assert_eq!(smaps_field(t, "Rss"), Some(5734));
        assert_eq!(smaps_field("Pss_Anon:  4000 kB\n", "Pss"), None);
    }

    #[test]
    fn memory_argument_and_medians() {
        let cmd = "/x/husk-vmm --kernel k --vcpus 1 --memory 512 --console file:c";
        assert_eq!(vmm_memory_arg(cmd), Some(512));
        assert_eq!(vmm_memory_arg("/x/husk-vmm --config vm.json"), None);
        let d = |ms| Duration::from_millis(ms);
        assert_eq!(median(&[d(30), d(10), d(20)]), d(20));
        assert_eq!(median(&[d(40), d(10), d(20), d(30)]), d(25));
    }

    #[test]
    fn console_excerpt_starts_at_the_oops() {
        let c = "boot line\r\nmore\r\ngeneral protection fault, probably for non-canonical \
                 address 0xdead000000000125\r\nRIP: 0010:0xffffffff8110350c\r\n";
        let e = console_excerpt(c);
        assert!(e.starts_with("    | general protection fault"), "{e}");
        assert!(e.contains("RIP"), "{e}");
        assert!(!e.contains("boot line"), "{e}");
        assert!(console_excerpt("a\nb\n").contains("| b"));
    }
}
