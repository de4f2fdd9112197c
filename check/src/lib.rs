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
            reason: reason.into(),
            fix: None,
        }
    }

    pub fn fail(name: &'static str, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            pass: false,
            reason: reason.into(),
            fix: Some(fix.into()),
        }
    }

    /// `PASS name: reason` or `FAIL name: reason; fix: ...`.
    pub fn line(&self) -> String {
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
    }
}
