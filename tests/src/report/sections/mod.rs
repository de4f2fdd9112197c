//! The report's sections. Each runs its workload under every runtime in turn
//! (interleaved run by run where the workload allows) and returns a [`SectionResult`];
//! a failed run is recorded and left out, a runtime that cannot run at all is listed as
//! skipped with the reason. Nothing here asserts a time.

pub mod boot;
pub mod devices;
pub mod memory;
pub mod network;
pub mod pod;
pub mod start;
pub mod workload;

use std::collections::BTreeMap;
use std::time::Duration;

use super::ctr::{self, Runtime};
use super::SectionResult;
use crate::containerd::{Containerd, HuskToml};

/// Every section, in report order: (id, what it measures).
pub const SECTIONS: [(&str, &str); 9] = [
    (
        "boot",
        "husk-vmm boot against QEMU's microvm (same kernel and initramfs)",
    ),
    ("start", "ctr run --rm busybox true, CDF"),
    ("pod", "CRI pod start and teardown"),
    (
        "density",
        "host memory of 1/5/10 idle pods and the per-pod slope",
    ),
    ("cpu", "a fixed compute workload (hash over N MiB)"),
    (
        "syscalls",
        "getpid, 4 KiB tmpfs read, open/close, fork+exit in ns per call",
    ),
    (
        "network",
        "TCP throughput host<->container and 1-byte round trips",
    ),
    (
        "devices",
        "vsock against TCP loopback, virtio-fs against the host",
    ),
    // Last: the heaviest I/O under emulation, where a frozen test host is likeliest.
    (
        "fileio",
        "sequential 256 MiB write/read and 10,000 small files on rootfs and a volume",
    ),
];

/// The sizes of every workload: the defaults fit a test-host session under 30 min,
/// `quick` under 10.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub boot_runs: usize,
    pub start_runs: usize,
    pub pod_runs: usize,
    pub density_pods: Vec<usize>,
    pub cpu_mib: u64,
    pub cpu_runs: usize,
    pub syscall_iters: u64,
    pub syscall_runs: usize,
    pub file_mib: u64,
    pub files: u64,
    pub fileio_runs: usize,
    pub net_mib: u64,
    pub net_pings: u64,
    pub net_rounds: usize,
    pub dev_mib: u64,
    pub dev_files: u64,
    pub dev_rounds: usize,
}

impl Sizes {
    pub fn full() -> Self {
        Self {
            boot_runs: 10,
            start_runs: 20,
            pod_runs: 10,
            density_pods: vec![1, 5, 10],
            cpu_mib: 1024,
            cpu_runs: 3,
            syscall_iters: 100_000,
            syscall_runs: 3,
            file_mib: 256,
            files: 10_000,
            fileio_runs: 1,
            net_mib: 256,
            net_pings: 10_000,
            net_rounds: 3,
            dev_mib: 256,
            dev_files: 10_000,
            dev_rounds: 3,
        }
    }

    pub fn quick() -> Self {
        Self {
            boot_runs: 3,
            start_runs: 5,
            pod_runs: 3,
            density_pods: vec![1, 2, 3],
            cpu_mib: 256,
            cpu_runs: 2,
            syscall_iters: 20_000,
            syscall_runs: 2,
            file_mib: 32,
            files: 1_000,
            fileio_runs: 1,
            net_mib: 32,
            net_pings: 1_000,
            net_rounds: 2,
            dev_mib: 32,
            dev_files: 1_000,
            dev_rounds: 1,
        }
    }
}

/// What the sections share: the sizes, one private containerd (started at the first
/// section that needs it, with the test image holding the probes) and the runtimes, each
/// checked once with a warm-up run.
pub struct Ctx {
    pub sizes: Sizes,
    pub timeout: Duration,
    /// Also time husk with `jail = false` in the start section (bench-shim's series).
    pub husk_unjailed: bool,
    /// Also time husk restored from its template (`template = true`) in the start and
    /// pod sections (`husk` itself always boots, [`HUSK_BASE`]).
    pub husk_template: bool,
    containerd: Option<Result<Containerd, String>>,
    runtimes: Vec<Runtime>,
    skipped: BTreeMap<String, String>,
}

/// The runtime names a ctr-based section covers, in table order.
pub const CTR_RUNTIMES: [&str; 3] = ["runc", "crun", "husk"];

/// husk restored from its template (`--husk-template`).
pub const HUSK_TEMPLATE: &str = "husk-template";

/// The report's husk.toml lines: `husk` boots every pod (`template = false`), so that
/// its figures stay those of a boot and `husk-template` differs in that alone.
pub const HUSK_BASE: &str = "template = false";

/// Writes `to`: the husk.toml `from` with `key` set to `value` (its line, if any,
/// replaced).
pub fn write_variant(
    from: &std::path::Path,
    to: &std::path::Path,
    key: &str,
    value: &str,
) -> Result<(), String> {
    let base = std::fs::read_to_string(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let mut text: String = base
        .lines()
        .filter(|l| l.split('=').next().map(str::trim) != Some(key))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{key} = {value}\n"));
    std::fs::write(to, text).map_err(|e| format!("{}: {e}", to.display()))
}

impl Ctx {
    pub fn new(sizes: Sizes, timeout: Duration, husk_unjailed: bool, husk_template: bool) -> Self {
        Self {
            sizes,
            timeout,
            husk_unjailed,
            husk_template,
            containerd: None,
            runtimes: Vec::new(),
            skipped: BTreeMap::new(),
        }
    }

    /// The private containerd, started (with the image imported and every runtime
    /// warmed up once) on first use.
    pub fn containerd(&mut self) -> Result<&Containerd, String> {
        if self.containerd.is_none() {
            let r = self.start_containerd();
            self.containerd = Some(r);
        }
        match self.containerd.as_ref().expect("set above") {
            Ok(c) => Ok(c),
            Err(e) => Err(e.clone()),
        }
    }

    fn start_containerd(&mut self) -> Result<Containerd, String> {
        let c = Containerd::start(&HuskToml {
            extra: HUSK_BASE.into(),
            ..HuskToml::default()
        })
        .map_err(|e| format!("containerd: {e:#}"))?;
        let mut extra = Vec::new();
        for (bin, path) in [
            (crate::net_probe_bin(), "/bin/husk-net-probe"),
            (crate::bench_probe_bin(), "/bin/husk-bench-probe"),
        ] {
            if !bin.is_file() {
                return Err(format!("{} is missing: run `make image`", bin.display()));
            }
            extra.push((bin, path));
        }
        let extra: Vec<(&std::path::Path, &str)> =
            extra.iter().map(|(b, p)| (b.as_path(), *p)).collect();
        c.import_busybox_with(&extra)
            .map_err(|e| format!("import the test image: {e:#}"))?;
        let mut candidates = vec![Ok(Runtime::runc()), ctr::crun(c.dir.path())];
        candidates.push(match crate::kvm_unusable_reason() {
            None => Ok(Runtime::husk()),
            Some(why) => Err(format!("KVM cannot boot a guest here: {why}")),
        });
        let mut names = vec!["runc", "crun", "husk"];
        // The same husk.toml with one key changed: husk-vmm unjailed, for the jail's
        // cost; pods restored from the template, against `husk`'s boots.
        for (on, name, key, value) in [
            (self.husk_unjailed, "husk-nojail", "jail", "false"),
            (self.husk_template, HUSK_TEMPLATE, "template", "true"),
        ] {
            if !on {
                continue;
            }
            let path = c.dir.path().join(format!("{name}.toml"));
            let r = write_variant(&c.husk_config, &path, key, value)
                .and(match crate::kvm_unusable_reason() {
                    None => Ok(()),
                    Some(why) => Err(format!("KVM cannot boot a guest here: {why}")),
                })
                .map(|()| Runtime {
                    name: name.into(),
                    config_path: Some(path),
                    ..Runtime::husk()
                });
            candidates.push(r);
            names.push(name);
        }
        for (i, rt) in candidates.into_iter().enumerate() {
            match rt {
                Err(why) => {
                    eprintln!("report: {} is left out: {why}", names[i]);
                    self.skipped.insert(names[i].into(), why);
                }
                Ok(rt) => {
                    // One uncounted warm-up (page cache, first snapshot, first cgroup),
                    // which also tells whether the runtime works here at all.
                    let id = format!("warm-{}", rt.name);
                    match ctr::run(&c, &rt, &id, false, &[], &["/bin/true"], self.timeout) {
                        Ok((d, _)) => {
                            eprintln!(
                                "report: warm-up {}: {:.0} ms",
                                rt.name,
                                d.as_secs_f64() * 1e3
                            );
                            self.runtimes.push(rt);
                        }
                        Err(e) => {
                            eprintln!("report: {} is left out: its warm-up run failed", rt.name);
                            self.skipped
                                .insert(rt.name.clone(), format!("warm-up run failed: {e}"));
                        }
                    }
                }
            }
        }
        Ok(c)
    }

    /// The runtimes that work, and the section's runtime list and skip reasons filled in.
    /// None: containerd itself could not start (the section is then all skipped).
    pub fn begin(&mut self, s: &mut SectionResult, names: &[&str]) -> Option<Vec<Runtime>> {
        s.runtimes = names.iter().map(|n| n.to_string()).collect();
        if let Err(e) = self.containerd() {
            for n in names {
                s.skipped.insert(n.to_string(), e.clone());
            }
            return None;
        }
        for n in names {
            if let Some(why) = self.skipped.get(*n) {
                s.skipped.insert(n.to_string(), why.clone());
            }
        }
        Some(
            self.runtimes
                .iter()
                .filter(|r| names.contains(&r.name.as_str()))
                .cloned()
                .collect(),
        )
    }
}

/// `rts` starting at the `i`-th (mod its length): each run of an interleaved loop starts
/// with the next runtime, so none always goes first (after another's teardown).
pub fn rotated<T: Clone>(rts: &[T], i: usize) -> Vec<T> {
    let mut v = rts.to_vec();
    if !v.is_empty() {
        let n = v.len();
        v.rotate_left(i % n);
    }
    v
}

/// Runs one section by id.
pub fn run(id: &str, ctx: &mut Ctx) -> Option<SectionResult> {
    Some(match id {
        "boot" => boot::section(ctx),
        "start" => start::section(ctx),
        "pod" => pod::section(ctx),
        "density" => memory::section(ctx),
        "cpu" => workload::cpu(ctx),
        "syscalls" => workload::syscalls(ctx),
        "fileio" => workload::fileio(ctx),
        "network" => network::section(ctx),
        "devices" => devices::section(ctx),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_run_starts_with_the_next_runtime() {
        let r = ["runc", "crun", "husk"];
        assert_eq!(super::rotated(&r, 0), ["runc", "crun", "husk"]);
        assert_eq!(super::rotated(&r, 1), ["crun", "husk", "runc"]);
        assert_eq!(super::rotated(&r, 5), ["husk", "runc", "crun"]);
        assert!(super::rotated::<u8>(&[], 3).is_empty());
    }
}
