//! The profile → BPF translation, checked by running the compiled program
//! on `struct seccomp_data` inputs with a small classic-BPF interpreter
//! (the instructions seccompiler and the chaining emit).

use oci_spec::runtime::{LinuxCapabilitiesBuilder, ProcessBuilder};

use super::*;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_TRACE: u32 = 0x7ff0_0000;

/// Runs `program` on (nr, arch, args) and returns the filter's verdict.
fn run(program: &[sock_filter], nr: i64, arch: u32, args: [u64; 6]) -> u32 {
    let mut data = Vec::with_capacity(64);
    data.extend_from_slice(&(nr as i32).to_ne_bytes());
    data.extend_from_slice(&arch.to_ne_bytes());
    data.extend_from_slice(&0u64.to_ne_bytes());
    for a in args {
        data.extend_from_slice(&a.to_ne_bytes());
    }
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    loop {
        let insn = &program[pc];
        pc += 1;
        let k = insn.k;
        match insn.code {
            0x20 => {
                let off = k as usize;
                acc = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
            }
            0x54 => acc &= k,
            0x05 => pc += k as usize,
            0x15 | 0x25 | 0x35 => {
                let taken = match insn.code {
                    0x15 => acc == k,
                    0x25 => acc > k,
                    _ => acc >= k,
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            0x06 => return k,
            code => panic!("instruction {code:#x} at {} not interpreted", pc - 1),
        }
    }
}

fn verdict(filter: &CompiledFilter, name: &str, args: [u64; 6]) -> u32 {
    let nr = syscall_number(name).unwrap_or_else(|| panic!("{name} not in table"));
    run(&filter.program, nr, AUDIT_ARCH_X86_64, args)
}

fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).expect("profile JSON")
}

fn compiled(json: &str) -> CompiledFilter {
    compile(&profile(json)).expect("compiles")
}

#[test]
fn syscall_table_is_sorted_and_agrees_with_libc() {
    let table = syscalls_x86_64::SYSCALLS;
    assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
    for (name, nr) in [
        ("read", libc::SYS_read),
        ("mkdir", libc::SYS_mkdir),
        ("mkdirat", libc::SYS_mkdirat),
        ("execve", libc::SYS_execve),
        ("seccomp", libc::SYS_seccomp),
        ("clone3", libc::SYS_clone3),
        ("capset", libc::SYS_capset),
        ("openat2", libc::SYS_openat2),
    ] {
        assert_eq!(syscall_number(name), Some(nr), "{name}");
    }
    assert_eq!(syscall_number("arm_fadvise64_64"), None);
}

#[test]
fn errno_rule_on_an_allow_default() {
    let f = compiled(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    );
    assert_eq!(verdict(&f, "mkdir", [0; 6]), RET_ERRNO | 1);
    assert_eq!(verdict(&f, "mkdirat", [0; 6]), RET_ERRNO | 1);
    assert_eq!(verdict(&f, "getpid", [0; 6]), RET_ALLOW);
    assert_eq!(f.flags, 0);
    assert!(f.skipped.is_empty());
}

#[test]
fn allow_list_with_errno_default_and_mixed_actions() {
    let f = compiled(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"syscalls":[
            {"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW"},
            {"names":["getpid"],"action":"SCMP_ACT_KILL"},
            {"names":["getppid"],"action":"SCMP_ACT_KILL_PROCESS"},
            {"names":["getuid"],"action":"SCMP_ACT_TRAP"},
            {"names":["getgid"],"action":"SCMP_ACT_LOG"},
            {"names":["geteuid"],"action":"SCMP_ACT_TRACE"},
            {"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
    );
    assert_eq!(verdict(&f, "read", [0; 6]), RET_ALLOW);
    assert_eq!(verdict(&f, "exit_group", [0; 6]), RET_ALLOW);
    assert_eq!(verdict(&f, "getpid", [0; 6]), RET_KILL_THREAD);
    assert_eq!(verdict(&f, "getppid", [0; 6]), RET_KILL_PROCESS);
    assert_eq!(verdict(&f, "getuid", [0; 6]), RET_TRAP);
    assert_eq!(verdict(&f, "getgid", [0; 6]), RET_LOG);
    assert_eq!(verdict(&f, "geteuid", [0; 6]), RET_TRACE | EPERM);
    // errnoRet absent: EPERM, as runc.
    assert_eq!(verdict(&f, "mkdir", [0; 6]), RET_ERRNO | EPERM);
    // Not listed: the default, with its errno.
    assert_eq!(verdict(&f, "openat", [0; 6]), RET_ERRNO | 38);
}

#[test]
fn conditions_are_anded_within_an_entry() {
    // personality(0x8) allowed only with arg1 == 7 too (made up, two indexes).
    let f = compiled(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[
                {"index":0,"value":8,"op":"SCMP_CMP_EQ"},
                {"index":1,"value":7,"op":"SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(verdict(&f, "personality", [8, 7, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(
        verdict(&f, "personality", [8, 6, 0, 0, 0, 0]),
        RET_ERRNO | EPERM
    );
    assert_eq!(
        verdict(&f, "personality", [9, 7, 0, 0, 0, 0]),
        RET_ERRNO | EPERM
    );
}

#[test]
fn same_index_conditions_are_ored_like_runc() {
    let f = compiled(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[
                {"index":0,"value":0,"op":"SCMP_CMP_EQ"},
                {"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(verdict(&f, "personality", [0; 6]), RET_ALLOW);
    assert_eq!(verdict(&f, "personality", [8, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(
        verdict(&f, "personality", [4, 0, 0, 0, 0, 0]),
        RET_ERRNO | EPERM
    );
}

#[test]
fn every_operator_on_64_bit_values() {
    let big = 0x1_0000_0005u64;
    let op = |op: &str, value: u64, two: Option<u64>| {
        let two = two
            .map(|v| format!(r#","valueTwo":{v}"#))
            .unwrap_or_default();
        compiled(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {{"names":["ioctl"],"action":"SCMP_ACT_ERRNO","args":[
                    {{"index":1,"value":{value}{two},"op":"{op}"}}]}}]}}"#
        ))
    };
    let denied =
        |f: &CompiledFilter, arg: u64| verdict(f, "ioctl", [0, arg, 0, 0, 0, 0]) != RET_ALLOW;
    let f = op("SCMP_CMP_EQ", big, None);
    assert!(denied(&f, big) && !denied(&f, 5));
    let f = op("SCMP_CMP_NE", big, None);
    assert!(!denied(&f, big) && denied(&f, 5));
    let f = op("SCMP_CMP_LT", big, None);
    assert!(denied(&f, 5) && !denied(&f, big) && !denied(&f, big + 1));
    let f = op("SCMP_CMP_LE", big, None);
    assert!(denied(&f, big) && !denied(&f, big + 1));
    let f = op("SCMP_CMP_GT", big, None);
    assert!(denied(&f, big + 1) && !denied(&f, big));
    let f = op("SCMP_CMP_GE", big, None);
    assert!(denied(&f, big) && !denied(&f, 5));
    // (arg & 0xff00) == 0x5400: TCGETS-like ioctl numbers.
    let f = op("SCMP_CMP_MASKED_EQ", 0xff00, Some(0x5400));
    assert!(denied(&f, 0x5401) && denied(&f, 0x1_0000_5499) && !denied(&f, 0x5501));
}

#[test]
fn most_restrictive_action_wins_when_entries_overlap() {
    let f = compiled(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["kill"],"action":"SCMP_ACT_ERRNO"},
            {"names":["kill"],"action":"SCMP_ACT_KILL_PROCESS","args":[
                {"index":1,"value":9,"op":"SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(verdict(&f, "kill", [1, 9, 0, 0, 0, 0]), RET_KILL_PROCESS);
    assert_eq!(verdict(&f, "kill", [1, 15, 0, 0, 0, 0]), RET_ERRNO | EPERM);
}

#[test]
fn an_unconditional_entry_beats_a_conditional_one_of_the_same_action() {
    let f = compiled(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["kill"],"action":"SCMP_ACT_ERRNO","args":[
                {"index":1,"value":9,"op":"SCMP_CMP_EQ"}]},
            {"names":["kill"],"action":"SCMP_ACT_ERRNO"}]}"#,
    );
    assert_eq!(verdict(&f, "kill", [1, 15, 0, 0, 0, 0]), RET_ERRNO | EPERM);
}

#[test]
fn other_abis_are_killed() {
    let f = compiled(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
    );
    let mkdir = syscall_number("mkdir").unwrap();
    // x32 mkdir: same arch value, number | 0x40000000.
    assert_eq!(
        run(&f.program, mkdir | 0x4000_0000, AUDIT_ARCH_X86_64, [0; 6]),
        RET_KILL_PROCESS
    );
    // i386 (int 0x80) mkdir is 39.
    assert_eq!(
        run(&f.program, 39, AUDIT_ARCH_I386, [0; 6]),
        RET_KILL_PROCESS
    );
    // -1 (skipped by a tracer) gets the default.
    assert_eq!(run(&f.program, -1, AUDIT_ARCH_X86_64, [0; 6]), RET_ALLOW);
}

#[test]
fn unknown_names_are_skipped_and_reported() {
    let f = compiled(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read","arm_fadvise64_64","no_such_call","read"],"action":"SCMP_ACT_ALLOW"}]}"#,
    );
    assert_eq!(f.skipped, ["arm_fadvise64_64", "no_such_call"]);
    assert_eq!(verdict(&f, "read", [0; 6]), RET_ALLOW);
}

#[test]
fn flags_map_to_seccomp_flags() {
    let f = compiled(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_TSYNC","SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
    );
    assert_eq!(f.flags, 1 | 2 | 4);
    assert_eq!(verdict(&f, "mkdir", [0; 6]), RET_ALLOW);
}

#[test]
fn bad_profiles_are_refused_with_clear_errors() {
    let err = |json: &str| compile(&profile(json)).unwrap_err().to_string();
    assert_eq!(
        err(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#),
        "Seccomp action SCMP_ACT_NOTIFY is not supported in the guest"
    );
    assert_eq!(
        err(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","errnoRet":70000}]}"#
        ),
        "Seccomp errnoRet 70000 is out of range (1..=4095)"
    );
    assert_eq!(
        err(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#
        ),
        "Seccomp argument index 6 of read is out of range (0..=5)"
    );
    assert_eq!(
        err(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#
        ),
        "Seccomp flag SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV is not supported in the guest"
    );
    // Unknown action or operator strings never get here: the spec parser
    // refuses them, naming the bad value.
    let parse = serde_json::from_str::<LinuxSeccomp>(r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#);
    assert!(parse.unwrap_err().to_string().contains("SCMP_ACT_BOGUS"));
}

#[test]
fn the_whole_table_fits_in_one_program() {
    // Every x86_64 syscall allowed by name, with a conditional deny on top.
    let names: Vec<String> = syscalls_x86_64::SYSCALLS
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect();
    let f = compiled(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {{"names":[{}],"action":"SCMP_ACT_ALLOW"}},
            {{"names":["socket"],"action":"SCMP_ACT_ERRNO","errnoRet":97,"args":[{{"index":0,"value":40,"op":"SCMP_CMP_EQ"}}]}}]}}"#,
        names.join(",")
    ));
    assert!(f.program.len() <= MAX_INSTRUCTIONS);
    assert_eq!(verdict(&f, "socket", [40, 0, 0, 0, 0, 0]), RET_ERRNO | 97);
    assert_eq!(verdict(&f, "socket", [2, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(verdict(&f, "set_mempolicy_home_node", [0; 6]), RET_ALLOW);
}

fn process(nnp: Option<bool>, with_sys_admin: bool) -> Process {
    let mut caps = std::collections::HashSet::from([Capability::Chown, Capability::Kill]);
    if with_sys_admin {
        caps.insert(Capability::SysAdmin);
    }
    let mut process = ProcessBuilder::default()
        .args(vec!["true".to_string()])
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps.clone())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    // (The builder's default is Some(true).)
    process.set_no_new_privileges(nnp);
    process
}

fn has(set: &Option<oci_spec::runtime::Capabilities>) -> bool {
    set.as_ref()
        .is_some_and(|s| s.contains(&Capability::SysAdmin))
}

#[test]
fn sys_admin_is_lent_only_without_no_new_privs_and_never_to_bounding() {
    let p = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#);
    let mut proc = process(None, false);
    let exec = prepare_process(Some(&p), &mut proc).unwrap();
    assert!(exec.has_filter() && exec.lent_effective && exec.lent_permitted);
    let caps = proc.capabilities().as_ref().unwrap();
    assert!(has(caps.effective()) && has(caps.permitted()));
    assert!(!has(caps.bounding()) && !has(caps.inheritable()) && !has(caps.ambient()));

    let mut proc = process(Some(true), false);
    let exec = prepare_process(Some(&p), &mut proc).unwrap();
    assert!(exec.has_filter() && !exec.lent_effective && !exec.lent_permitted);
    assert!(!has(proc.capabilities().as_ref().unwrap().effective()));

    // restore() gives the spec back what it asked for.
    let mut spec = Spec::default();
    spec.set_process(Some(process(None, false)));
    let before = spec.process().as_ref().unwrap().capabilities().clone();
    let exec = prepare_process(Some(&p), spec.process_mut().as_mut().unwrap()).unwrap();
    assert_ne!(spec.process().as_ref().unwrap().capabilities(), &before);
    exec.restore(&mut spec);
    assert_eq!(spec.process().as_ref().unwrap().capabilities(), &before);

    // Already privileged: nothing to lend, nothing to take back.
    let mut proc = process(Some(false), true);
    let exec = prepare_process(Some(&p), &mut proc).unwrap();
    assert!(!exec.lent_effective && !exec.lent_permitted);

    // No profile: no filter, spec untouched.
    let mut proc = process(None, false);
    let exec = prepare_process(None, &mut proc).unwrap();
    assert!(!exec.has_filter());
    assert!(!has(proc.capabilities().as_ref().unwrap().effective()));
}
