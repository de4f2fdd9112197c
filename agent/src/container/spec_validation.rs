//! Checks on an OCI runtime spec that the agent makes before handing it to
//! libcontainer, so a hostile or malformed spec fails early with an error
//! that names the field.

use std::path::{Component, Path};

use oci_spec::runtime::Spec;

/// Why a spec was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("Spec has no root (root.path is required)")]
    MissingRoot,
    #[error("Spec has no process")]
    MissingProcess,
    #[error("Spec process has no args")]
    MissingArgs,
    #[error("Mount destination {0:?} is not absolute")]
    RelativeMountDestination(String),
    #[error("Mount destination {0:?} contains '..'")]
    MountDestinationEscapes(String),
    #[error("Spec version {0:?} is not 1.x")]
    UnsupportedVersion(String),
    #[error("Spec root is invalid: {0}")]
    InvalidRoot(String),
}

/// Refuses specs libcontainer would reject late, or accept unsafely.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    if !spec.version().starts_with("1.") {
        return Err(SpecError::UnsupportedVersion(spec.version().clone()));
    }
    if spec.root().is_none() {
        return Err(SpecError::MissingRoot);
    }
    let process = spec.process().as_ref().ok_or(SpecError::MissingProcess)?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::MissingArgs);
    }
    for mount in spec.mounts().iter().flatten() {
        check_destination(mount.destination())?;
    }
    Ok(())
}

fn check_destination(dest: &Path) -> Result<(), SpecError> {
    let shown = || dest.display().to_string();
    if !dest.is_absolute() {
        return Err(SpecError::RelativeMountDestination(shown()));
    }
    if dest.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::MountDestinationEscapes(shown()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{MountBuilder, RootBuilder};

    use super::*;

    fn base() -> Spec {
        let mut spec = Spec::default();
        spec.set_root(Some(RootBuilder::default().path("rootfs").build().unwrap()));
        spec
    }

    #[test]
    fn default_spec_with_root_passes() {
        assert_eq!(validate(&base()), Ok(()));
    }

    #[test]
    fn missing_root_is_refused() {
        let mut spec = base();
        spec.set_root(None);
        assert_eq!(validate(&spec), Err(SpecError::MissingRoot));
    }

    #[test]
    fn dotdot_destination_is_refused() {
        let mut spec = base();
        let mount = MountBuilder::default()
            .destination("/proc/../../etc")
            .typ("tmpfs")
            .source("tmpfs")
            .build()
            .unwrap();
        spec.set_mounts(Some(vec![mount]));
        assert!(matches!(
            validate(&spec),
            Err(SpecError::MountDestinationEscapes(_))
        ));
    }

    #[test]
    fn relative_destination_is_refused() {
        assert!(matches!(
            check_destination(Path::new("tmp")),
            Err(SpecError::RelativeMountDestination(_))
        ));
    }
}
