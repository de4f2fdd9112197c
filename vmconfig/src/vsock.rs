//! The vsock device's configuration: the guest's CID and the host socket it is reached by.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Smallest CID a guest may have (0-2 are reserved for the hypervisor and host).
pub const MIN_GUEST_CID: u32 = 3;

/// Errors in a vsock configuration.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VsockConfigError {
    #[error("Guest CID {0} is reserved (use 3..=4294967294)")]
    ReservedCid(u32),
    #[error("Vsock socket path is empty")]
    EmptyPath,
    #[error("Invalid vsock option {0:?}: expected cid=<CID>,uds=<PATH>")]
    BadOption(String),
    #[error("Vsock option {0} is given twice")]
    Duplicate(&'static str),
    #[error("Vsock option {0} is missing: expected cid=<CID>,uds=<PATH>")]
    Missing(&'static str),
    #[error("Invalid guest CID {0:?}")]
    BadCid(String),
}

/// The vsock device of a VM: the guest's CID and the host Unix socket it is reached by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

impl VsockConfig {
    pub fn validate(&self) -> Result<(), VsockConfigError> {
        if self.guest_cid < MIN_GUEST_CID || self.guest_cid == u32::MAX {
            return Err(VsockConfigError::ReservedCid(self.guest_cid));
        }
        if self.uds_path.as_os_str().is_empty() {
            return Err(VsockConfigError::EmptyPath);
        }
        Ok(())
    }
}

/// The command-line form `cid=3,uds=/path/v.sock` (in any order).
impl FromStr for VsockConfig {
    type Err = VsockConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cid = None;
        let mut uds = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    if cid.is_some() {
                        return Err(VsockConfigError::Duplicate("cid"));
                    }
                    let v: u32 = v
                        .parse()
                        .map_err(|_| VsockConfigError::BadCid(v.to_owned()))?;
                    cid = Some(v);
                }
                Some(("uds", v)) => {
                    if uds.is_some() {
                        return Err(VsockConfigError::Duplicate("uds"));
                    }
                    uds = Some(PathBuf::from(v));
                }
                _ => return Err(VsockConfigError::BadOption(part.to_owned())),
            }
        }
        let cfg = VsockConfig {
            guest_cid: cid.ok_or(VsockConfigError::Missing("cid"))?,
            uds_path: uds.ok_or(VsockConfigError::Missing("uds"))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_str() {
        let c: VsockConfig = "cid=3,uds=/run/v.sock".parse().unwrap();
        assert_eq!(c.guest_cid, 3);
        assert_eq!(c.uds_path, PathBuf::from("/run/v.sock"));
        let c: VsockConfig = "uds=/a,cid=42".parse().unwrap();
        assert_eq!(c.guest_cid, 42);

        let err = |s: &str| s.parse::<VsockConfig>().unwrap_err();
        assert_eq!(err("cid=2,uds=/a"), VsockConfigError::ReservedCid(2));
        assert_eq!(
            err("cid=4294967295,uds=/a"),
            VsockConfigError::ReservedCid(u32::MAX)
        );
        assert_eq!(err("cid=x,uds=/a"), VsockConfigError::BadCid("x".into()));
        assert_eq!(err("cid=3"), VsockConfigError::Missing("uds"));
        assert_eq!(err("uds=/a"), VsockConfigError::Missing("cid"));
        assert_eq!(err("cid=3,uds="), VsockConfigError::EmptyPath);
        assert_eq!(
            err("cid=3,cid=4,uds=/a"),
            VsockConfigError::Duplicate("cid")
        );
        assert_eq!(
            err("cid=3,uds=/a,x=1"),
            VsockConfigError::BadOption("x=1".into())
        );
        assert_eq!(err(""), VsockConfigError::BadOption("".into()));
        assert!(err("cid=1,uds=/a").to_string().starts_with("Guest CID 1"));
    }

    #[test]
    fn config_serde() {
        let c: VsockConfig =
            serde_json::from_str(r#"{"guest_cid": 5, "uds_path": "/tmp/x"}"#).unwrap();
        assert_eq!(c.guest_cid, 5);
        assert!(serde_json::from_str::<VsockConfig>(
            r#"{"guest_cid": 5, "uds_path": "/x", "y": 1}"#
        )
        .is_err());
        let back: VsockConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
