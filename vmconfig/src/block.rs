//! A block device's configuration: a raw disk image, read-only or not, and its serial.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest disk serial the guest can read back with GET_ID (VIRTIO_BLK_ID_BYTES).
pub const ID_LEN: usize = 20;

/// Errors in a block device's configuration.
#[derive(Debug, thiserror::Error)]
pub enum BlockConfigError {
    #[error("Disk id {0:?} is longer than {ID_LEN} bytes")]
    IdTooLong(String),
}

/// A block device as configured: CLI `--block path=/img.ext4[,ro][,id=NAME]` or JSON
/// `{"path": "/img.ext4", "read_only": true, "id": "NAME"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// A raw disk image (regular file or block device), its size a multiple of 512 bytes.
    pub path: PathBuf,
    /// Open the image read-only and offer VIRTIO_BLK_F_RO.
    #[serde(default)]
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (`/sys/block/vdX/serial`,
    /// `/dev/disk/by-id/virtio-<id>`), at most 20 bytes. Default: derived from the image's
    /// device and inode numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl BlockConfig {
    /// Checks what can be checked without opening the image.
    pub fn validate(&self) -> Result<(), BlockConfigError> {
        match &self.id {
            Some(id) if id.len() > ID_LEN => Err(BlockConfigError::IdTooLong(id.clone())),
            _ => Ok(()),
        }
    }
}

impl std::str::FromStr for BlockConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut path = None;
        let mut read_only = false;
        let mut id = None;
        for item in s.split(',') {
            match item.split_once('=') {
                Some(("path", p)) if !p.is_empty() && path.is_none() => {
                    path = Some(PathBuf::from(p))
                }
                Some(("id", v)) if !v.is_empty() && id.is_none() => id = Some(v.to_string()),
                None if item == "ro" => read_only = true,
                _ => {
                    return Err(format!(
                        "invalid block option {item:?} in {s:?}: expected path=PATH[,ro][,id=NAME]"
                    ))
                }
            }
        }
        let Some(path) = path else {
            return Err(format!("block device {s:?} has no path=PATH"));
        };
        let cfg = BlockConfig {
            path,
            read_only,
            id,
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cli_form() {
        let c: BlockConfig = "path=/img.ext4".parse().unwrap();
        assert_eq!(
            c,
            BlockConfig {
                path: "/img.ext4".into(),
                read_only: false,
                id: None
            }
        );
        let c: BlockConfig = "path=/a/b.img,ro,id=rootfs".parse().unwrap();
        assert_eq!(c.path, PathBuf::from("/a/b.img"));
        assert!(c.read_only);
        assert_eq!(c.id.as_deref(), Some("rootfs"));
        let c: BlockConfig = "id=x,ro,path=/p".parse().unwrap();
        assert_eq!(c.path, PathBuf::from("/p"));

        for bad in [
            "",
            "ro",
            "/img.ext4",
            "path=",
            "path=/a,path=/b",
            "path=/a,rw",
            "path=/a,ro=1",
            "path=/a,id=",
            "path=/a,id=123456789012345678901",
        ] {
            assert!(bad.parse::<BlockConfig>().is_err(), "{bad:?} parsed");
        }
        // 20 bytes is the most GET_ID can return.
        assert!("path=/a,id=12345678901234567890"
            .parse::<BlockConfig>()
            .is_ok());
    }

    #[test]
    fn serde_form() {
        let c: BlockConfig =
            serde_json::from_str(r#"{"path": "/i", "read_only": true, "id": "d"}"#).unwrap();
        assert!(c.read_only);
        assert_eq!(c.id.as_deref(), Some("d"));
        let c: BlockConfig = serde_json::from_str(r#"{"path": "/i"}"#).unwrap();
        assert!(!c.read_only);
        assert_eq!(c.id, None);
        assert!(serde_json::from_str::<BlockConfig>(r#"{"path": "/i", "ro": true}"#).is_err());
        let back: BlockConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
