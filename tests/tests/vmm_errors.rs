//! husk-vmm rejects bad input with a clear error before any guest runs (exit code 1).
//! These need no KVM, except the corrupt-kernel case, which loads after creating the VM.

use std::process::Command;
use std::time::Duration;

use husk_tests::{guest_initramfs, require_file, run_with_watchdog, vmm_bin, Outcome};

fn vmm(args: &[&str]) -> Outcome {
    require_file(&vmm_bin());
    run_with_watchdog(Command::new(vmm_bin()).args(args), Duration::from_secs(30)).unwrap()
}

fn temp(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("husk-vmm-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

fn assert_clear_error(o: &Outcome, needle: &str) {
    assert_eq!(o.code(), Some(1), "stderr: {}", o.stderr);
    assert!(
        o.stdout.is_empty(),
        "no guest output expected: {}",
        o.stdout
    );
    assert!(
        o.stderr.contains("husk-vmm: error:") && o.stderr.contains(needle),
        "expected {needle:?} in: {}",
        o.stderr
    );
}

#[test]
fn missing_kernel() {
    let o = vmm(&["--kernel", "/nonexistent/vmlinux"]);
    assert_clear_error(&o, "Kernel file /nonexistent/vmlinux is not usable");
}

#[test]
fn missing_initramfs() {
    let k = temp("kernel-for-initramfs-test", b"\x7fELF-not-really");
    let o = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initramfs",
        "/nonexistent/initrd",
    ]);
    assert_clear_error(&o, "Initramfs file /nonexistent/initrd is not usable");
}

#[test]
fn memory_out_of_range() {
    let k = temp("kernel-for-memory-test", b"\x7fELF-not-really");
    let k = k.to_str().unwrap();
    assert_clear_error(&vmm(&["--kernel", k, "--memory", "1"]), "out of range");
    assert_clear_error(
        &vmm(&["--kernel", k, "--memory", "99999999999"]),
        "out of range",
    );
    assert_clear_error(&vmm(&["--kernel", k, "--vcpus", "0"]), "out of range");
}

#[test]
fn bad_config_file() {
    let c = temp("bad.json", br#"{"kernel": "/k", "memory": 512}"#);
    let o = vmm(&["--config", c.to_str().unwrap()]);
    assert_clear_error(&o, "unknown field `memory`");
    let c = temp("garbage.json", b"\x00\x01 not json");
    assert_clear_error(
        &vmm(&["--config", c.to_str().unwrap()]),
        "Invalid config file",
    );
}

#[test]
fn corrupt_kernel() {
    // Loading happens after /dev/kvm is opened, so this needs a /dev/kvm (any kind).
    if std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("SKIPPED corrupt_kernel: no /dev/kvm here");
        if std::env::var("HUSK_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("HUSK_REQUIRE_KVM=1 but /dev/kvm is missing");
        }
        return;
    }
    let k = temp("corrupt-kernel", &vec![0xa5u8; 64 * 1024]);
    let mut args = vec!["--kernel", k.to_str().unwrap()];
    let initramfs = guest_initramfs();
    if initramfs.is_file() {
        args.extend(["--initramfs", initramfs.to_str().unwrap()]);
    }
    assert_clear_error(&vmm(&args), "is neither an ELF vmlinux nor a bzImage");
    // A truncated bzImage header: right magic, nothing after it.
    let mut trunc = vec![0u8; 0x300];
    trunc[0x202..0x206].copy_from_slice(b"HdrS");
    let k = temp("truncated-bzimage", &trunc);
    let o = vmm(&["--kernel", k.to_str().unwrap()]);
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("husk-vmm: error:"), "{}", o.stderr);
}
