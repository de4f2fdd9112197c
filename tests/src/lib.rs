//! Helpers shared by husk's integration tests and benchmarks: where the real binaries and
//! the guest image are, whether this machine's KVM can boot a standard guest, and running
//! a process under a watchdog.

/// Declares each `case(runtime)` twice, as `runc::case` and `husk::case` (both
/// `#[ignore]`d, run by `make test`): the runc run is the reference, and the husk run is
/// skipped where KVM cannot boot a standard guest. `$runc` and `$husk` are the runtime
/// (or CRI handler) names, as paths seen from inside the generated modules.
#[macro_export]
macro_rules! under_runc_and_husk {
    ($runc:path, $husk:path; $($case:ident),* $(,)?) => {
        mod runc {
            $(
                #[test]
                #[ignore = "needs root, containerd and the CNI plugins: `make test` runs it"]
                fn $case() {
                    super::$case($runc);
                }
            )*
        }
        mod husk {
            $(
                #[test]
                #[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
                fn $case() {
                    if $crate::kvm_available(stringify!($case)) {
                        super::$case($husk);
                    }
                }
            )*
        }
    };
}

pub mod busybox_bundle;
pub mod cni;
pub mod containerd;
pub mod cri_node;
pub mod guest;
pub mod host;
pub mod oci_image;
pub mod report;
pub mod tap;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate is inside the workspace")
        .to_path_buf()
}

/// `$var`, or `default` below the workspace root.
pub fn path_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default))
}

/// Where `make vmm` puts the host binaries: the static (musl) release build, as
/// shipped by `make dist`; the tests and benchmarks run exactly those.
pub const RELEASE_DIR: &str = "target/x86_64-unknown-linux-musl/release";

/// The husk-vmm binary (`HUSK_VMM`, default `RELEASE_DIR/husk-vmm`).
pub fn vmm_bin() -> PathBuf {
    path_from_env("HUSK_VMM", &format!("{RELEASE_DIR}/husk-vmm"))
}

/// The husk-jailer binary (`HUSK_JAILER`, default `RELEASE_DIR/husk-jailer`).
pub fn jailer_bin() -> PathBuf {
    path_from_env("HUSK_JAILER", &format!("{RELEASE_DIR}/husk-jailer"))
}

/// The guest kernel (`HUSK_KERNEL`, default `build/guest/vmlinux`).
pub fn guest_kernel() -> PathBuf {
    path_from_env("HUSK_KERNEL", "build/guest/vmlinux")
}

/// The guest kernel as a bzImage (`HUSK_BZIMAGE`, default `build/guest/bzImage`).
pub fn guest_bzimage() -> PathBuf {
    path_from_env("HUSK_BZIMAGE", "build/guest/bzImage")
}

/// The guest initramfs (`HUSK_INITRAMFS`, default `build/guest/initramfs.cpio`).
pub fn guest_initramfs() -> PathBuf {
    path_from_env("HUSK_INITRAMFS", "build/guest/initramfs.cpio")
}

/// The static TCP probe of the network tests (`HUSK_NET_PROBE`, default the musl build
/// `make agent` makes): runs in the test image and on the host.
pub fn net_probe_bin() -> PathBuf {
    path_from_env(
        "HUSK_NET_PROBE",
        "target/x86_64-unknown-linux-musl/release/husk-net-probe",
    )
}

/// The report's in-container workloads (`HUSK_BENCH_PROBE`, default the musl build
/// `make agent` makes): CPU, syscalls and file I/O, in the test image.
pub fn bench_probe_bin() -> PathBuf {
    path_from_env(
        "HUSK_BENCH_PROBE",
        "target/x86_64-unknown-linux-musl/release/husk-bench-probe",
    )
}

/// The guest-side virtio-fs attacker of tests/virtiofs_attack.rs (`HUSK_FS_ATTACK`,
/// default the musl build `make agent` makes): runs in a privileged test container.
pub fn fs_attack_bin() -> PathBuf {
    path_from_env(
        "HUSK_FS_ATTACK",
        "target/x86_64-unknown-linux-musl/release/husk-fs-attack",
    )
}

/// Why this machine cannot boot a standard guest on KVM, or `None` if it can.
pub fn kvm_unusable_reason() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Some(format!("/dev/kvm cannot be opened: {e}"));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some("/dev/kvm is PVM (kvm_pvm), which cannot boot a standard guest".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !has_virt {
        return Some("the CPU has no vmx/svm flag".into());
    }
    None
}

/// Whether the tests that boot guests can run here. With `HUSK_REQUIRE_KVM=1` (set by
/// `make test`, which runs them in the test host where needed) a machine that cannot boot
/// guests is a failure, never a silent pass; otherwise the test says loudly that it skips.
pub fn kvm_available(test: &str) -> bool {
    match kvm_unusable_reason() {
        None => true,
        Some(reason) => {
            if std::env::var("HUSK_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{test}: HUSK_REQUIRE_KVM=1 but {reason}");
            }
            eprintln!("SKIPPED {test}: {reason}; `make test` runs this test inside the test host");
            false
        }
    }
}

/// Panics with a clear message if an artifact the tests need was not built.
pub fn require_file(path: &Path) {
    assert!(
        path.is_file(),
        "{} is missing: run `make test` (or `make image vmm`) to build it",
        path.display()
    );
}

/// What a finished process left.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `cmd` to completion, killing it after `timeout` (the watchdog every guest boot
/// gets: under emulation a boot occasionally hangs). A timeout is an error that carries
/// the output so far.
pub fn run_with_watchdog(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    // Its own process group, so the watchdog also kills whatever it started.
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            kill_group(child.id());
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Outcome {
            status,
            stdout,
            stderr,
            elapsed: start.elapsed(),
        }),
        None => anyhow::bail!(
            "watchdog: {:?} still running after {timeout:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            cmd.get_program()
        ),
    }
}

/// Kills a process group led by `pid`.
pub fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes plain integers; a stale group id at worst fails with ESRCH.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// The boot watchdog: generous, because the test host emulates its CPU in software.
pub fn boot_timeout() -> Duration {
    let secs = std::env::var("HUSK_BOOT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(secs)
}

/// Extracts `key=value` from the agent's ready line.
pub fn ready_field<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    let line = console.lines().find(|l| l.contains("husk-agent: ready"))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

pub use report::stats::{median, ms};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_fields() {
        let c = "noise\r\nhusk-agent: ready uptime_ms=812 cpus_online=0-1 kernel=6.1.192\r\n";
        assert_eq!(ready_field(c, "cpus_online"), Some("0-1"));
        assert_eq!(ready_field(c, "uptime_ms"), Some("812"));
        assert_eq!(ready_field(c, "kernel"), Some("6.1.192"));
        assert_eq!(ready_field(c, "missing"), None);
        assert_eq!(ready_field("no ready line", "kernel"), None);
    }

    #[test]
    fn watchdog_kills_and_reports() {
        let e = run_with_watchdog(
            Command::new("sh").args(["-c", "echo started; sleep 30"]),
            Duration::from_secs(3),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("watchdog"), "{e}");
        assert!(e.contains("started"), "{e}");
        let ok = run_with_watchdog(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 7"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(ok.code(), Some(7));
        assert_eq!(ok.stdout, "out\n");
        assert_eq!(ok.stderr, "err\n");
    }
}
