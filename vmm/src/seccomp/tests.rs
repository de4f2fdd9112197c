use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::*;

/// `x86_64.json` as plain data (seccompiler keeps its own parse private).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFilter {
    mismatch_action: serde_json::Value,
    match_action: serde_json::Value,
    filter: Vec<JsonRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRule {
    syscall: String,
    #[serde(default)]
    args: Option<Vec<JsonCondition>>,
    #[allow(dead_code)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCondition {
    index: u8,
    #[serde(rename = "type")]
    #[allow(dead_code)]
    len: String,
    op: serde_json::Value,
    val: u64,
    comment: Option<String>,
}

fn lists() -> BTreeMap<String, JsonFilter> {
    serde_json::from_str(FILTERS_JSON).expect("x86_64.json parses")
}

fn syscalls(f: &JsonFilter) -> BTreeSet<&str> {
    f.filter.iter().map(|r| r.syscall.as_str()).collect()
}

#[test]
fn filters_compile_for_every_thread_class() {
    let filters = Filters::compile().unwrap();
    for class in ThreadClass::ALL {
        assert!(!filters.program(class).is_empty(), "{class:?}");
    }
    let keys: BTreeSet<String> = lists().into_keys().collect();
    let want: BTreeSet<String> = ThreadClass::ALL.iter().map(|c| c.key().into()).collect();
    assert_eq!(keys, want);
}

#[test]
fn a_list_for_an_unknown_class_or_a_missing_one_is_refused() {
    let one = r#"{"mismatch_action": "kill_process", "match_action": "allow",
                  "filter": [{"syscall": "read"}]}"#;
    let json = format!(r#"{{"main": {one}, "vmm-events": {one}, "vcpu": {one}, "api": {one}}}"#);
    assert!(matches!(
        Filters::from_json(&json),
        Err(SeccompError::UnknownClass(c)) if c == "api"
    ));
    let json = format!(r#"{{"main": {one}, "vcpu": {one}}}"#);
    assert!(matches!(
        Filters::from_json(&json),
        Err(SeccompError::MissingClass("vmm-events"))
    ));
    let json = format!(
        r#"{{"main": {one}, "vmm-events": {one}, "vcpu": {}}}"#,
        one.replace("read", "no_such_call")
    );
    assert!(matches!(
        Filters::from_json(&json),
        Err(SeccompError::Compile(_))
    ));
}

/// What each thread class may call. A change to `x86_64.json` changes this list too, so
/// that it is a reviewed change (see SECURITY.md for why each call is there).
#[test]
fn allow_lists_are_exactly_these() {
    let want: [(&str, &[&str]); 3] = [("main", MAIN), ("vmm-events", EVENTS), ("vcpu", VCPU)];
    let lists = lists();
    for (class, want) in want {
        let got: Vec<&str> = syscalls(&lists[class]).into_iter().collect();
        assert_eq!(got, want, "{class}");
    }
}

const MAIN: &[&str] = &[
    "brk",
    "clock_gettime",
    "close",
    "exit",
    "exit_group",
    "fsync",
    "ftruncate",
    "futex",
    "getpid",
    "gettid",
    "ioctl",
    "lseek",
    "madvise",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "pwrite64",
    "read",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_yield",
    "sigaltstack",
    "tgkill",
    "tkill",
    "write",
];
const EVENTS: &[&str] = &[
    "accept4",
    "brk",
    "clock_gettime",
    "close",
    "connect",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_wait",
    "exit",
    "exit_group",
    "fdatasync",
    "futex",
    "getpid",
    "gettid",
    "ioctl",
    "madvise",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "pread64",
    "pwrite64",
    "read",
    "readv",
    "recvfrom",
    "recvmsg",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_yield",
    "sendmsg",
    "sendto",
    "shutdown",
    "sigaltstack",
    "socket",
    "tgkill",
    "tkill",
    "write",
    "writev",
];
const VCPU: &[&str] = &[
    "brk",
    "clock_gettime",
    "close",
    "exit",
    "exit_group",
    "futex",
    "getpid",
    "gettid",
    "ioctl",
    "madvise",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "read",
    "recvmsg",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_yield",
    "sendmsg",
    "sigaltstack",
    "tgkill",
    "tkill",
    "write",
];

#[test]
fn every_list_kills_the_process_on_a_mismatch() {
    for (class, f) in lists() {
        assert_eq!(f.mismatch_action, "kill_process", "{class}");
        assert_eq!(f.match_action, "allow", "{class}");
    }
}

/// seccompiler drops an unconditional rule for a syscall that also has conditional ones
/// (the call is then allowed only with those arguments): a list must not rely on both.
#[test]
fn no_call_is_listed_both_with_and_without_argument_checks() {
    for (class, f) in lists() {
        let mut plain = BTreeSet::new();
        let mut checked = BTreeSet::new();
        for r in &f.filter {
            match &r.args {
                Some(a) if !a.is_empty() => checked.insert(r.syscall.as_str()),
                _ => {
                    assert!(
                        plain.insert(r.syscall.as_str()),
                        "{class}: {} twice",
                        r.syscall
                    );
                    true
                }
            };
        }
        let both: Vec<_> = plain.intersection(&checked).collect();
        assert!(both.is_empty(), "{class}: {both:?}");
    }
}

const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const KVMIO: u64 = 0xae;
const TUN: u64 = b'T' as u64;

/// The ioctl numbers the lists may name, computed from the kernel's definitions.
fn known_ioctls() -> BTreeMap<&'static str, u64> {
    use kvm_bindings::{
        kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
        kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    };
    use std::mem::size_of;
    BTreeMap::from([
        ("KVM_RUN", ioc(0, KVMIO, 0x80, 0)),
        (
            "KVM_GET_IRQCHIP",
            ioc(3, KVMIO, 0x62, size_of::<kvm_irqchip>()),
        ),
        (
            "KVM_GET_CLOCK",
            ioc(2, KVMIO, 0x7c, size_of::<kvm_clock_data>()),
        ),
        (
            "KVM_GET_CPUID2",
            ioc(3, KVMIO, 0x91, size_of::<kvm_cpuid2>()),
        ),
        (
            "KVM_GET_PIT2",
            ioc(2, KVMIO, 0x9f, size_of::<kvm_pit_state2>()),
        ),
        (
            "KVM_GET_VCPU_EVENTS",
            ioc(2, KVMIO, 0x9f, size_of::<kvm_vcpu_events>()),
        ),
        (
            "KVM_GET_DEBUGREGS",
            ioc(2, KVMIO, 0xa1, size_of::<kvm_debugregs>()),
        ),
        ("KVM_GET_TSC_KHZ", ioc(0, KVMIO, 0xa3, 0)),
        ("KVM_GET_XSAVE", ioc(2, KVMIO, 0xa4, size_of::<kvm_xsave>())),
        ("KVM_GET_XCRS", ioc(2, KVMIO, 0xa6, size_of::<kvm_xcrs>())),
        ("KVM_GET_REGS", ioc(2, KVMIO, 0x81, size_of::<kvm_regs>())),
        ("KVM_GET_SREGS", ioc(2, KVMIO, 0x83, size_of::<kvm_sregs>())),
        ("KVM_GET_MSRS", ioc(3, KVMIO, 0x88, size_of::<kvm_msrs>())),
        (
            "KVM_GET_LAPIC",
            ioc(2, KVMIO, 0x8e, size_of::<kvm_lapic_state>()),
        ),
        (
            "KVM_GET_MP_STATE",
            ioc(2, KVMIO, 0x98, size_of::<kvm_mp_state>()),
        ),
        ("TUNSETIFF", ioc(1, TUN, 202, size_of::<libc::c_int>())),
        ("TUNSETOFFLOAD", ioc(1, TUN, 208, size_of::<libc::c_uint>())),
        ("TUNGETIFF", ioc(2, TUN, 210, size_of::<libc::c_uint>())),
        (
            "TUNSETVNETHDRSZ",
            ioc(1, TUN, 216, size_of::<libc::c_int>()),
        ),
        ("FIONBIO", libc::FIONBIO),
    ])
}

#[test]
fn every_ioctl_rule_names_its_request_and_the_number_is_right() {
    let known = known_ioctls();
    assert_eq!(known["KVM_RUN"], 0xae80);
    assert_eq!(known["KVM_GET_MP_STATE"], 2147790488, "Firecracker's value");
    for (class, f) in lists() {
        for r in f.filter.iter().filter(|r| r.syscall == "ioctl") {
            let args = r
                .args
                .as_ref()
                .unwrap_or_else(|| panic!("{class}: bare ioctl"));
            let req = args
                .iter()
                .find(|c| c.index == 1)
                .unwrap_or_else(|| panic!("{class}: ioctl rule without a request check"));
            assert_eq!(req.op, "eq", "{class}");
            let name = req.comment.as_deref().unwrap_or_default();
            let want = known
                .get(name)
                .unwrap_or_else(|| panic!("{class}: unknown ioctl {name:?}"));
            assert_eq!(req.val, *want, "{class}: {name}");
        }
    }
}

/// Per class: (syscalls, rules), as printed for the review of a change: a rule is one
/// unconditional entry or one entry with argument checks.
#[test]
fn counts() {
    for (class, f) in lists() {
        eprintln!(
            "{class}: {} syscalls, {} rules",
            syscalls(&f).len(),
            f.filter.len()
        );
    }
}

/// In a forked child (the filter stays with it): installs `class`'s filter, writes one byte
/// to a pipe (allowed everywhere), then makes `forbidden` calls. Returns the child's wait
/// status and whether the byte arrived.
fn run_filtered_child(class: ThreadClass, forbidden: bool) -> (libc::c_int, bool) {
    let filters = Filters::compile().unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a 2-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes async-signal-safe calls (prctl, seccomp, write,
    // getppid, _exit) before it ends; seccompiler::apply_filter allocates nothing.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        if filters.apply(class).is_err() {
            // SAFETY: _exit(2) ends the child at once.
            unsafe { libc::_exit(10) };
        }
        // SAFETY: write(2) of one byte from a static; getppid(2) and _exit(2) take plain
        // integers.
        unsafe {
            libc::write(fds[1], b"x".as_ptr().cast(), 1);
            if forbidden {
                forbidden_call();
            }
            libc::_exit(0);
        }
    }
    // SAFETY: close(2) of our write end.
    unsafe { libc::close(fds[1]) };
    let mut status = 0;
    // SAFETY: waitpid(2) on our own child with a valid status pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let mut b = [0u8; 1];
    // SAFETY: read(2) of at most one byte into `b`; close(2) of our read end.
    let got = unsafe {
        let n = libc::read(fds[0], b.as_mut_ptr().cast(), 1);
        libc::close(fds[0]);
        n == 1 && b[0] == b'x'
    };
    (status, got)
}

#[test]
fn a_filtered_thread_makes_allowed_calls_and_dies_by_sigsys_on_a_forbidden_one() {
    for class in ThreadClass::ALL {
        let (status, wrote) = run_filtered_child(class, false);
        assert!(libc::WIFEXITED(status), "{class:?}: status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "{class:?}");
        assert!(wrote, "{class:?}: the allowed write did not arrive");

        let (status, wrote) = run_filtered_child(class, true);
        assert!(wrote, "{class:?}: the allowed write did not arrive");
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "{class:?}: a forbidden call must kill by SIGSYS; status {status:#x}"
        );
    }
}
