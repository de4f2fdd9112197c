//! husk-vmm boots the real guest kernel and initramfs (husk-agent as PID 1) on KVM.
//! Needs a KVM that can boot a standard guest, so the tests are `#[ignore]`d for a plain
//! `cargo test`; `make test` runs them with `--include-ignored` and `HUSK_REQUIRE_KVM=1`,
//! inside the test host where the machine's own KVM can't boot a standard guest.

use std::process::Command;

use husk_tests::{
    boot_timeout, guest_bzimage, guest_initramfs, guest_kernel, kvm_available, ready_field,
    require_file, run_with_watchdog, vmm_bin, Outcome,
};

fn boot(kernel: &std::path::Path, vcpus: u8, cmdline: &str) -> Outcome {
    for f in [&vmm_bin(), &kernel.to_path_buf(), &guest_initramfs()] {
        require_file(f);
    }
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--kernel")
        .arg(kernel)
        .arg("--initramfs")
        .arg(guest_initramfs())
        .args(["--memory", "256", "--vcpus", &vcpus.to_string()])
        .args(["--cmdline", cmdline]);
    run_with_watchdog(&mut cmd, boot_timeout()).unwrap()
}

fn explain(o: &Outcome) -> String {
    format!(
        "exit {:?} after {:?}\n--- console ---\n{}\n--- stderr ---\n{}",
        o.status, o.elapsed, o.stdout, o.stderr
    )
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn vmlinux_boots_to_agent_ready_and_powers_off_cleanly() {
    if !kvm_available("vmlinux_boots_to_agent_ready_and_powers_off_cleanly") {
        return;
    }
    let o = boot(&guest_kernel(), 1, "quiet husk.test=poweroff");
    assert_eq!(o.code(), Some(0), "{}", explain(&o));
    assert!(o.stdout.contains("husk-agent: ready"), "{}", explain(&o));
    assert!(
        o.stdout.contains("husk-agent: powering off"),
        "{}",
        explain(&o)
    );
    let uptime: u64 = ready_field(&o.stdout, "uptime_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no uptime in ready line\n{}", explain(&o)));
    assert!(uptime > 0);
    assert!(
        ready_field(&o.stdout, "kernel").is_some_and(|k| k.starts_with("6.1.")),
        "{}",
        explain(&o)
    );
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn bzimage_boots_too() {
    if !kvm_available("bzimage_boots_too") {
        return;
    }
    let o = boot(&guest_bzimage(), 1, "quiet husk.test=poweroff");
    assert_eq!(o.code(), Some(0), "{}", explain(&o));
    assert!(o.stdout.contains("husk-agent: ready"), "{}", explain(&o));
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn two_vcpus_are_both_online() {
    if !kvm_available("two_vcpus_are_both_online") {
        return;
    }
    let o = boot(&guest_kernel(), 2, "quiet husk.test=poweroff");
    assert_eq!(o.code(), Some(0), "{}", explain(&o));
    assert_eq!(
        ready_field(&o.stdout, "cpus_online"),
        Some("0-1"),
        "{}",
        explain(&o)
    );
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn guest_kernel_panic_exits_nonzero_with_reason() {
    if !kvm_available("guest_kernel_panic_exits_nonzero_with_reason") {
        return;
    }
    let o = boot(&guest_kernel(), 1, "quiet husk.test=panic");
    assert_eq!(o.code(), Some(2), "{}", explain(&o));
    assert!(
        o.stderr
            .contains("guest kernel panic: Attempted to kill init"),
        "{}",
        explain(&o)
    );
}

#[test]
#[ignore = "boots a guest on KVM: `make test` runs it, in the test host where needed"]
fn json_config_file_boots_the_same_guest() {
    if !kvm_available("json_config_file_boots_the_same_guest") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("husk-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let console = dir.join("console.log");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"kernel": "{}", "initramfs": "{}", "cmdline": "quiet husk.test=poweroff",
                "vcpus": 2, "memory_mib": 192, "console": {{"file": "{}"}}}}"#,
            guest_kernel().display(),
            guest_initramfs().display(),
            console.display()
        ),
    )
    .unwrap();
    let o = run_with_watchdog(
        Command::new(vmm_bin()).arg("--config").arg(&config),
        boot_timeout(),
    )
    .unwrap();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        o.code(),
        Some(0),
        "{}\n--- console file ---\n{log}",
        explain(&o)
    );
    assert!(o.stdout.is_empty(), "console went to the file, not stdout");
    assert_eq!(ready_field(&log, "cpus_online"), Some("0-1"), "{log}");
}
