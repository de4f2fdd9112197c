//! husk-check: whether this host can run husk pods, and what to fix when it cannot,
//! modelled on `kata-runtime check`. Every check is a pure decision over what the host
//! shows (`/proc/cpuinfo` flags, `/proc/modules`, the mount table, `containerd config
//! dump`, ...), gathered in [`host`], so the decisions are unit-tested on canned text.
//!
//! The shim's own config module is compiled in here ([`shim_config`]), so the kernel,
//! initramfs, VMM, virtiofsd and state dir are read with exactly the shim's rules
//! (defaults, `HUSK_CONFIG`, unknown keys are errors).

pub mod checks;
pub mod containerd;
pub mod host;
pub mod mounts;

/// The shim's config (`shim/src/config.rs`, shared by path: the shim is a binary-only
/// crate and this keeps one definition of the file's keys and defaults).
#[allow(dead_code)]
#[path = "../../shim/src/config.rs"]
pub mod shim_config;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// A pass that could be better (husk works, slower): printed WARN with its fix; does
    /// not fail the run.
    Warn,
    Fail,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name, e.g. `kvm`.
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was found (for a FAIL: why it fails).
    pub reason: String,
    /// For a WARN or FAIL: what to do about it.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: &'static str, reason: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Pass,
            reason: reason.into(),
            fix: None,
        }
    }

    /// husk runs, but not as well as it could: does not fail the check run.
    pub fn warn(name: &'static str, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Warn,
            reason: reason.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Fail,
            reason: reason.into(),
            fix: Some(fix.into()),
        }
    }

    /// Whether husk can run as checked: a PASS or a WARN.
    pub fn passes(&self) -> bool {
        self.verdict != Verdict::Fail
    }

    /// `PASS name: reason`, `WARN name: reason; fix: ...` or `FAIL name: reason; fix: ...`.
    pub fn line(&self) -> String {
        let word = match self.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        match (self.verdict, &self.fix) {
            (Verdict::Pass, _) | (_, None) => format!("{word} {}: {}", self.name, self.reason),
            (_, Some(fix)) => format!("{word} {}: {}; fix: {fix}", self.name, self.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_pass_or_fail_with_the_fix() {
        assert_eq!(Check::pass("tun", "ok").line(), "PASS tun: ok");
        assert_eq!(
            Check::fail("tun", "missing", "modprobe tun").line(),
            "FAIL tun: missing; fix: modprobe tun"
        );
        let w = Check::warn("huge-pages", "never", "echo advise");
        assert!(w.passes(), "a warning does not fail the run");
        assert!(!Check::fail("tun", "missing", "modprobe tun").passes());
        assert_eq!(w.line(), "WARN huge-pages: never; fix: echo advise");
    }
}
