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

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name, e.g. `kvm`.
    pub name: &'static str,
    pub pass: bool,
    /// A pass that could be better (husk works, slower): printed WARN with its fix.
    pub warn: bool,
    /// What was found (for a FAIL: why it fails).
    pub reason: String,
    /// For a FAIL: what to do about it.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: &'static str, reason: impl Into<String>) -> Self {
        Self {
            name,
            pass: true,
            warn: false,
            reason: reason.into(),
            fix: None,
        }
    }

    /// husk runs, but not as well as it could: does not fail the check run.
    pub fn warn(name: &'static str, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            pass: true,
            warn: true,
            reason: reason.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            pass: false,
            warn: false,
            reason: reason.into(),
            fix: Some(fix.into()),
        }
    }

    /// `PASS name: reason`, `WARN name: reason; fix: ...` or `FAIL name: reason; fix: ...`.
    pub fn line(&self) -> String {
        if self.warn {
            let fix = self.fix.as_deref().unwrap_or_default();
            return format!("WARN {}: {}; fix: {}", self.name, self.reason, fix);
        }
        match (&self.pass, &self.fix) {
            (true, _) | (false, None) => format!(
                "{} {}: {}",
                if self.pass { "PASS" } else { "FAIL" },
                self.name,
                self.reason
            ),
            (false, Some(fix)) => format!("FAIL {}: {}; fix: {}", self.name, self.reason, fix),
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
        assert!(w.pass, "a warning does not fail the run");
        assert_eq!(w.line(), "WARN huge-pages: never; fix: echo advise");
    }
}
