//! A seccomp violation in a pod's husk-vmm, as containerd's user sees it: `ctr run` fails
//! with the shim's word that the VMM was killed by SIGSYS for a seccomp violation, and
//! nothing is left behind. Its own test binary: it sets HUSK_SECCOMP_SELFTEST for the whole
//! process (containerd, the shim and husk-vmm inherit it), which must reach no other test.

use std::time::Duration;

use husk_tests::containerd::{Containerd, HuskToml};
use husk_tests::kvm_available;

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn a_seccomp_violation_in_the_vmm_fails_ctr_run_with_a_clear_reason() {
    if !kvm_available("a_seccomp_violation_in_the_vmm_fails_ctr_run_with_a_clear_reason") {
        return;
    }
    // husk-vmm makes one call no filter allows once its filters are on (the hidden
    // `--seccomp-selftest`, reached through the environment the shim passes on).
    std::env::set_var("HUSK_SECCOMP_SELFTEST", "1");
    let c = Containerd::start(&HuskToml::default()).unwrap();
    c.import_busybox().unwrap();
    let o = c.run_rm("sigsys", &["true"]).unwrap();
    assert_ne!(o.code(), Some(0), "{o:?}");
    assert!(
        o.stderr.contains("killed by SIGSYS: a seccomp violation"),
        "ctr run should carry the shim's reason:\n{}\n{}",
        o.stderr,
        c.log()
    );
    let _ = c.ctr(&["container", "rm", "sigsys"]);
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "left behind:\n{left}\n{}", c.log());
}
