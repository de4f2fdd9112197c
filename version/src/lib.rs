//! What `--version` prints for every husk binary (husk-vmm, containerd-shim-husk-v2,
//! husk-agent, husk-check): the workspace version from Cargo.toml and the git commit the
//! build came from, e.g. `0.1.0 (git 1a2b3c4d5e6f)`.

/// `<Cargo.toml version> (git <commit>)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("HUSK_GIT_COMMIT"),
    ")"
);

/// The git commit alone (12 hex digits, or "unknown" for a build without git).
pub const COMMIT: &str = env!("HUSK_GIT_COMMIT");

/// The line `--version` prints: `<binary> <VERSION>`.
pub fn line(binary: &str) -> String {
    format!("{binary} {VERSION}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_crate_version_and_a_commit() {
        assert!(VERSION.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (git ")));
        assert!(VERSION.ends_with(')'));
        assert!(
            COMMIT == "unknown"
                || (COMMIT.len() >= 7 && COMMIT.chars().all(|c| c.is_ascii_hexdigit())),
            "{COMMIT}"
        );
        assert_eq!(line("husk-vmm"), format!("husk-vmm {VERSION}"));
    }
}
