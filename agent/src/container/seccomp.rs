//! The OCI `linux.seccomp` profile, without libseccomp.
//!
//! The guest agent is a static musl binary built without libcontainer's
//! `libseccomp` feature; libcontainer then ignores `linux.seccomp` (it does
//! not reject it). This module compiles the profile with `seccompiler` in
//! the agent, at create time, so a bad profile fails `CreateContainer` with
//! a clear error, and installs it in the container's init right before exec
//! through a libcontainer [`Executor`] ([`SeccompExecutor`]).
//!
//! # Translation
//! - Actions: `SCMP_ACT_ALLOW`, `SCMP_ACT_ERRNO` (`errnoRet`, EPERM when
//!   absent, as runc), `SCMP_ACT_KILL`/`SCMP_ACT_KILL_THREAD` (kill the
//!   thread: SIGSYS), `SCMP_ACT_KILL_PROCESS`, `SCMP_ACT_TRAP`,
//!   `SCMP_ACT_TRACE` (`errnoRet` or EPERM when no tracer), `SCMP_ACT_LOG`.
//!   `SCMP_ACT_NOTIFY` is refused: there is no seccomp agent in the guest.
//!   Unknown action or operator strings are refused by the spec parser.
//! - Arguments: the OCI operators map to seccompiler's, on 64-bit values
//!   (libseccomp compares 64 bits too); `SCMP_CMP_MASKED_EQ` is
//!   `(arg & value) == valueTwo`. Conditions of one entry are ANDed, except
//!   that several conditions on the same argument index become one rule each
//!   (ORed): runc's rule, which Docker's default profile relies on.
//! - Syscall names unknown on x86_64 are skipped with one warning line, as
//!   runc does for names libseccomp does not know: published profiles (Docker's
//!   default) list syscalls of every architecture.
//! - Architectures: the filter is for x86_64 only, whatever the list says;
//!   other entries are ignored. Calls from other ABIs on the same kernel (i386
//!   `int 0x80`, x32) kill the process: stricter than libseccomp, which would
//!   filter them with their own tables when listed.
//! - Flags: `SECCOMP_FILTER_FLAG_TSYNC`, `_LOG` and `_SPEC_ALLOW` are passed
//!   to seccomp(2); `_WAIT_KILLABLE_RECV` (notify only) is refused.
//!
//! seccompiler gives one action per filter (match vs. mismatch), so the
//! profile becomes one filter per distinct action, chained into a single
//! BPF program: each filter's "no match" return becomes a jump to the next,
//! in order of the kernel's action precedence (kill process, kill thread,
//! trap, errno, trace, log), and the last filter returns ALLOW for the
//! allowed syscalls and the default action otherwise. A syscall that matches
//! entries with different actions gets the most restrictive one, as the
//! kernel does for stacked filters. One program means one seccomp(2) call:
//! a profile that denies `seccomp` itself cannot stop its own installation
//! half-way.
//!
//! # When it is installed: no_new_privs and CAP_SYS_ADMIN
//! Installing a filter needs no_new_privs or CAP_SYS_ADMIN. libcontainer
//! sets no_new_privs early when the spec asks for it, and the executor runs
//! after libcontainer has dropped capabilities, as late as possible before
//! exec. With `noNewPrivileges` the filter simply goes on there. Without
//! it, runc installs the filter before dropping capabilities; libcontainer
//! has no hook there, so [`prepare`] adds CAP_SYS_ADMIN to the process's
//! effective and permitted sets (only where the spec leaves it out), and the
//! executor installs the filter and then removes CAP_SYS_ADMIN again
//! (capset) before exec. CAP_SYS_ADMIN is never added to the bounding,
//! inheritable or ambient sets, so even without that capset the exec could
//! not keep it. As with runc in that mode, the profile must allow what runs
//! after the filter: `capset`, `execve` (and what `execvp` tries).

mod install;
mod syscalls_x86_64;

use std::collections::BTreeMap;
use std::sync::Arc;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{
    Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
    Process, Spec,
};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use tracing::warn;

/// Why a seccomp profile was refused (at create) or not installed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("Seccomp action {0} is not supported in the guest")]
    UnsupportedAction(&'static str),
    #[error("Seccomp flag {0} is not supported in the guest")]
    UnsupportedFlag(&'static str),
    #[error("Seccomp errnoRet {0} is out of range (1..=4095)")]
    BadErrno(u32),
    #[error("Seccomp argument index {index} of {syscall} is out of range (0..=5)")]
    BadArgIndex { syscall: String, index: usize },
    #[error("Seccomp profile cannot be compiled: {0}")]
    Compile(String),
    #[error("Seccomp program has {0} instructions, over the kernel's 4096")]
    TooLarge(usize),
}

/// The kernel's limit on one BPF program (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: usize = 4096;

const EPERM: u32 = libc::EPERM as u32;
const CAP_SYS_ADMIN: u32 = 21;

// Values of <linux/seccomp.h>.
const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// x32 syscalls carry this bit in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
// BPF opcodes of <linux/bpf_common.h>.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

/// A profile compiled to one BPF program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledFilter {
    pub program: BpfProgram,
    /// seccomp(2) flags.
    pub flags: u32,
    /// Syscall names of the profile unknown on x86_64, skipped.
    pub skipped: Vec<String>,
}

/// The number of an x86_64 syscall.
pub fn syscall_number(name: &str) -> Option<i64> {
    syscalls_x86_64::SYSCALLS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| syscalls_x86_64::SYSCALLS[i].1)
}

/// The name of x86_64 syscall `nr`.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    syscalls_x86_64::SYSCALLS
        .iter()
        .find(|(_, n)| *n == nr)
        .map(|(name, _)| *name)
}

/// A seccompiler action, ordered by the kernel's precedence (most
/// restrictive first), then by its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    KillProcess,
    KillThread,
    Trap,
    Errno(u32),
    Trace(u32),
    Log,
    Allow,
}

impl Action {
    fn from_oci(action: LinuxSeccompAction, errno: Option<u32>) -> Result<Self, SeccompError> {
        let errno = match errno {
            None => EPERM,
            Some(e) if (1..=4095).contains(&e) => e,
            Some(e) => return Err(SeccompError::BadErrno(e)),
        };
        Ok(match action {
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
                Self::KillThread
            }
            LinuxSeccompAction::ScmpActKillProcess => Self::KillProcess,
            LinuxSeccompAction::ScmpActTrap => Self::Trap,
            LinuxSeccompAction::ScmpActErrno => Self::Errno(errno),
            LinuxSeccompAction::ScmpActTrace => Self::Trace(errno),
            LinuxSeccompAction::ScmpActLog => Self::Log,
            LinuxSeccompAction::ScmpActAllow => Self::Allow,
            LinuxSeccompAction::ScmpActNotify => {
                return Err(SeccompError::UnsupportedAction("SCMP_ACT_NOTIFY"));
            }
        })
    }

    fn to_seccompiler(self) -> SeccompAction {
        match self {
            Self::KillProcess => SeccompAction::KillProcess,
            Self::KillThread => SeccompAction::KillThread,
            Self::Trap => SeccompAction::Trap,
            Self::Errno(e) => SeccompAction::Errno(e),
            Self::Trace(e) => SeccompAction::Trace(e),
            Self::Log => SeccompAction::Log,
            Self::Allow => SeccompAction::Allow,
        }
    }
}

/// The rules of one syscall under one action: `None` matches always.
type Chain = Option<Vec<SeccompRule>>;

fn add_rules(chains: &mut BTreeMap<i64, Chain>, nr: i64, rules: Option<&[SeccompRule]>) {
    let chain = chains.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (chain.as_mut(), rules) {
        (_, None) => *chain = None,
        (Some(existing), Some(rules)) => existing.extend_from_slice(rules),
        (None, Some(_)) => {}
    }
}

fn compile_error(e: impl std::fmt::Display) -> SeccompError {
    SeccompError::Compile(e.to_string())
}

/// The rules of one profile entry: conditions ANDed in one rule, or one
/// rule per condition when an argument index repeats (runc's rule).
fn entry_rules(
    name: &str,
    args: &[oci_spec::runtime::LinuxSeccompArg],
) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    if args.is_empty() {
        return Ok(None);
    }
    let mut conditions = Vec::with_capacity(args.len());
    let mut per_index = [0usize; 6];
    for arg in args {
        let index = arg.index();
        let slot = per_index
            .get_mut(index)
            .ok_or_else(|| SeccompError::BadArgIndex {
                syscall: name.to_owned(),
                index,
            })?;
        *slot += 1;
        let (op, value) = match arg.op() {
            LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
            LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
            LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
            LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
            LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
            LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                SeccompCmpOp::MaskedEq(arg.value()),
                arg.value_two().unwrap_or(0),
            ),
        };
        // index <= 5 was checked above.
        let index = index as u8;
        conditions.push(
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(compile_error)?,
        );
    }
    let rules = if per_index.iter().any(|n| *n > 1) {
        conditions
            .into_iter()
            .map(|c| SeccompRule::new(vec![c]))
            .collect::<Result<Vec<_>, _>>()
    } else {
        SeccompRule::new(conditions).map(|r| vec![r])
    };
    rules.map(Some).map_err(compile_error)
}

fn seccompiler_program(
    chains: BTreeMap<i64, Chain>,
    mismatch: Action,
    matched: Action,
) -> Result<BpfProgram, SeccompError> {
    let rules = chains
        .into_iter()
        .map(|(nr, chain)| (nr, chain.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        mismatch.to_seccompiler(),
        matched.to_seccompiler(),
        TargetArch::x86_64,
    )
    .map_err(compile_error)?;
    BpfProgram::try_from(filter).map_err(compile_error)
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Kills x32 syscalls (numbers with bit 30 set), which an x86_64 filter
/// would otherwise let through to its default action; -1 (a syscall a
/// tracer skipped) goes on to the filter.
fn x32_guard() -> Vec<sock_filter> {
    vec![
        stmt(BPF_LD_W_ABS, 0),
        jump(BPF_JMP_JEQ_K, u32::MAX, 2, 0),
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
    ]
}

/// Compiles an OCI seccomp profile for x86_64.
pub fn compile(profile: &LinuxSeccomp) -> Result<CompiledFilter, SeccompError> {
    let default = Action::from_oci(profile.default_action(), profile.default_errno_ret())?;
    let mut flags = 0;
    for flag in profile.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::UnsupportedFlag(
                    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
                ));
            }
        };
    }

    let mut groups: BTreeMap<Action, BTreeMap<i64, Chain>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for entry in profile.syscalls().iter().flatten() {
        let action = Action::from_oci(entry.action(), entry.errno_ret())?;
        let args = entry.args().as_deref().unwrap_or_default();
        for name in entry.names() {
            let rules = entry_rules(name, args)?;
            let Some(nr) = syscall_number(name) else {
                if !skipped.contains(name) {
                    skipped.push(name.clone());
                }
                continue;
            };
            add_rules(groups.entry(action).or_default(), nr, rules.as_deref());
        }
    }

    let mut program = x32_guard();
    let allowed = groups.remove(&Action::Allow).unwrap_or_default();
    // Most restrictive first; each group's "no match" (ALLOW) jumps on.
    for (action, chains) in groups {
        let mut part = seccompiler_program(chains, Action::Allow, action)?;
        let len = part.len();
        for (i, insn) in part.iter_mut().enumerate() {
            if insn.code == BPF_RET_K && insn.k == RET_ALLOW {
                // To the first instruction after this part.
                *insn = stmt(BPF_JMP_JA, (len - i - 1) as u32);
            }
        }
        program.extend(part);
    }
    let last = if allowed.is_empty() || default == Action::Allow {
        // Only the default is left: any other "match" action will do.
        let other = if default == Action::KillProcess {
            Action::Allow
        } else {
            Action::KillProcess
        };
        seccompiler_program(BTreeMap::new(), default, other)?
    } else {
        seccompiler_program(allowed, default, Action::Allow)?
    };
    program.extend(last);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLarge(program.len()));
    }
    Ok(CompiledFilter {
        program,
        flags,
        skipped,
    })
}

/// Runs the container process: installs the compiled filter (if any), drops
/// the CAP_SYS_ADMIN [`prepare`] lent for that, then execs like
/// libcontainer's default executor.
#[derive(Clone, Debug, Default)]
pub struct SeccompExecutor {
    filter: Option<Arc<CompiledFilter>>,
    /// CAP_SYS_ADMIN was added to the effective set only to install.
    lent_effective: bool,
    /// ... and to the permitted set.
    lent_permitted: bool,
}

impl SeccompExecutor {
    /// True when a filter will be installed.
    pub fn has_filter(&self) -> bool {
        self.filter.is_some()
    }

    /// Takes the lent CAP_SYS_ADMIN out of `spec`'s process again. The
    /// engine saves the spec after libcontainer has created the init (which
    /// keeps its own copy), so the saved spec, which execs start from,
    /// holds the capabilities the caller asked for.
    pub fn restore(&self, spec: &mut Spec) {
        if !(self.lent_effective || self.lent_permitted) {
            return;
        }
        let Some(process) = spec.process_mut() else {
            return;
        };
        if let Some(mut caps) = process.capabilities().clone() {
            if self.lent_effective {
                if let Some(mut set) = caps.effective().clone() {
                    set.remove(&Capability::SysAdmin);
                    caps.set_effective(Some(set));
                }
            }
            if self.lent_permitted {
                if let Some(mut set) = caps.permitted().clone() {
                    set.remove(&Capability::SysAdmin);
                    caps.set_permitted(Some(set));
                }
            }
            process.set_capabilities(Some(caps));
        }
    }

    fn install(&self) -> Result<(), ExecutorError> {
        let Some(filter) = &self.filter else {
            return Ok(());
        };
        install::install_filter(&filter.program, filter.flags)
            .map_err(|e| ExecutorError::Other(format!("Cannot install the seccomp filter: {e}")))?;
        if self.lent_effective || self.lent_permitted {
            install::drop_capability(CAP_SYS_ADMIN, self.lent_permitted).map_err(|e| {
                ExecutorError::Other(format!(
                    "Cannot drop CAP_SYS_ADMIN after installing the seccomp filter \
                     (does the profile allow capset?): {e}"
                ))
            })?;
        }
        Ok(())
    }
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        self.install()?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Compiles the spec's `linux.seccomp` (if any) into the executor that
/// installs it, and lends the process CAP_SYS_ADMIN where it needs it to
/// install the filter (see the module doc). Call on the spec before it is
/// handed to libcontainer, and pass the result to
/// `ContainerBuilder::with_executor`.
pub fn prepare(spec: &mut Spec) -> Result<SeccompExecutor, SeccompError> {
    let profile = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    match spec.process_mut() {
        Some(process) => prepare_process(profile.as_ref(), process),
        None => Ok(SeccompExecutor::default()),
    }
}

/// [`prepare`] for one process (an exec'd process of a container runs
/// under the container's profile too).
pub fn prepare_process(
    profile: Option<&LinuxSeccomp>,
    process: &mut Process,
) -> Result<SeccompExecutor, SeccompError> {
    let Some(profile) = profile else {
        return Ok(SeccompExecutor::default());
    };
    let filter = compile(profile)?;
    if !filter.skipped.is_empty() {
        warn!(
            "Seccomp profile: {} syscall name(s) unknown on x86_64 skipped: {}",
            filter.skipped.len(),
            filter.skipped.join(" ")
        );
    }
    let mut executor = SeccompExecutor {
        filter: Some(Arc::new(filter)),
        ..Default::default()
    };
    if process.no_new_privileges() == Some(true) {
        return Ok(executor);
    }
    if let Some(mut caps) = process.capabilities().clone() {
        if let Some(mut set) = caps.effective().clone() {
            executor.lent_effective = set.insert(Capability::SysAdmin);
            caps.set_effective(Some(set));
        }
        if let Some(mut set) = caps.permitted().clone() {
            executor.lent_permitted = set.insert(Capability::SysAdmin);
            caps.set_permitted(Some(set));
        }
        process.set_capabilities(Some(caps));
    }
    Ok(executor)
}

#[cfg(test)]
mod tests;
