//! A virtio-fs device's configuration: its tag and the virtiofsd socket it uses.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length of the tag field in the config space; a tag may use all of it (no NUL needed).
pub const TAG_LEN: usize = 36;
/// Size of the config space: tag + `num_request_queues`.
pub const CONFIG_SPACE_LEN: usize = TAG_LEN + 4;
/// Most request queues we accept (virtiofsd serves one; the bound keeps fd counts small).
pub const MAX_REQUEST_QUEUES: u16 = 64;
/// Largest split virtqueue (virtio spec 2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

fn default_num_request_queues() -> u16 {
    1
}
fn default_queue_size() -> u16 {
    1024
}

/// Errors in a virtio-fs configuration.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsConfigError {
    #[error("The virtio-fs tag must be 1 to {TAG_LEN} bytes long, {0:?} is {len}", len = .0.len())]
    TagLength(String),
    #[error("The virtio-fs tag must not contain NUL bytes")]
    TagNul,
    #[error("The virtio-fs socket path is empty")]
    EmptySocket,
    #[error("The number of request queues must be 1 to {MAX_REQUEST_QUEUES}, not {0}")]
    RequestQueues(u16),
    #[error("The queue size must be a power of two up to {MAX_QUEUE_SIZE}, not {0}")]
    QueueSize(u16),
    #[error("Unknown virtio-fs option {0:?} (expected tag, socket, queues, queue_size)")]
    UnknownKey(String),
    #[error("The virtio-fs option {0:?} is given twice")]
    DuplicateKey(String),
    #[error("The virtio-fs option {0:?} needs a value (key=value)")]
    MissingValue(String),
    #[error("The virtio-fs option {key} has an invalid number {value:?}")]
    BadNumber { key: String, value: String },
    #[error("The virtio-fs option {0} is required")]
    Missing(&'static str),
}

/// One virtio-fs device: a tag the guest mounts and the virtiofsd socket that serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The mount tag the guest uses (`mount -t virtiofs <tag> /mnt`), 1 to 36 bytes.
    pub tag: String,
    /// The Unix socket a running virtiofsd listens on (`virtiofsd --socket-path`).
    pub socket: PathBuf,
    /// Number of request queues (the high-priority queue comes on top).
    #[serde(default = "default_num_request_queues")]
    pub num_request_queues: u16,
    /// Largest size of each queue (a power of two).
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
}

impl FsConfig {
    /// Checks the tag, the socket path and the queue numbers (not that the socket exists:
    /// the VMM finds out by connecting).
    pub fn validate(&self) -> Result<(), FsConfigError> {
        if self.tag.is_empty() || self.tag.len() > TAG_LEN {
            return Err(FsConfigError::TagLength(self.tag.clone()));
        }
        if self.tag.contains('\0') {
            return Err(FsConfigError::TagNul);
        }
        if self.socket.as_os_str().is_empty() {
            return Err(FsConfigError::EmptySocket);
        }
        if self.num_request_queues == 0 || self.num_request_queues > MAX_REQUEST_QUEUES {
            return Err(FsConfigError::RequestQueues(self.num_request_queues));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > MAX_QUEUE_SIZE {
            return Err(FsConfigError::QueueSize(self.queue_size));
        }
        Ok(())
    }

    /// Total number of virtqueues: the high-priority queue plus the request queues.
    pub fn num_queues(&self) -> usize {
        1 + usize::from(self.num_request_queues)
    }

    /// The device config space (virtio spec 5.11.4): the tag NUL-padded to 36 bytes and
    /// `num_request_queues` as le32.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut space = [0u8; CONFIG_SPACE_LEN];
        let tag = self.tag.as_bytes();
        let n = tag.len().min(TAG_LEN);
        space[..n].copy_from_slice(&tag[..n]);
        space[TAG_LEN..].copy_from_slice(&u32::from(self.num_request_queues).to_le_bytes());
        space
    }
}

/// The command-line form: `tag=shared,socket=/path/vfs.sock[,queues=1][,queue_size=1024]`.
impl FromStr for FsConfig {
    type Err = FsConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tag = None;
        let mut socket = None;
        let mut queues = None;
        let mut queue_size = None;
        for item in s.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| FsConfigError::MissingValue(item.to_owned()))?;
            let duplicate = match key {
                "tag" => tag.replace(value.to_owned()).is_some(),
                "socket" => socket.replace(PathBuf::from(value)).is_some(),
                "queues" => queues.replace(parse_u16(key, value)?).is_some(),
                "queue_size" => queue_size.replace(parse_u16(key, value)?).is_some(),
                _ => return Err(FsConfigError::UnknownKey(key.to_owned())),
            };
            if duplicate {
                return Err(FsConfigError::DuplicateKey(key.to_owned()));
            }
        }
        let config = FsConfig {
            tag: tag.ok_or(FsConfigError::Missing("tag"))?,
            socket: socket.ok_or(FsConfigError::Missing("socket"))?,
            num_request_queues: queues.unwrap_or_else(default_num_request_queues),
            queue_size: queue_size.unwrap_or_else(default_queue_size),
        };
        config.validate()?;
        Ok(config)
    }
}

fn parse_u16(key: &str, value: &str) -> Result<u16, FsConfigError> {
    value.parse().map_err(|_| FsConfigError::BadNumber {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod config_tests {
    use super::*;

    fn cfg(tag: &str) -> FsConfig {
        FsConfig {
            tag: tag.to_owned(),
            socket: PathBuf::from("/run/vfs.sock"),
            num_request_queues: 1,
            queue_size: 1024,
        }
    }

    #[test]
    fn parse_minimal_uses_defaults() {
        let c: FsConfig = "tag=shared,socket=/tmp/vfs.sock".parse().unwrap();
        assert_eq!(c.tag, "shared");
        assert_eq!(c.socket, PathBuf::from("/tmp/vfs.sock"));
        assert_eq!(c.num_request_queues, 1);
        assert_eq!(c.queue_size, 1024);
        assert_eq!(c.num_queues(), 2);
    }

    #[test]
    fn parse_all_options_any_order() {
        let c: FsConfig = "queue_size=256,socket=/a/b.sock,queues=2,tag=rootfs"
            .parse()
            .unwrap();
        assert_eq!(
            c,
            FsConfig {
                tag: "rootfs".into(),
                socket: "/a/b.sock".into(),
                num_request_queues: 2,
                queue_size: 256,
            }
        );
        assert_eq!(c.num_queues(), 3);
    }

    #[test]
    fn parse_errors() {
        let err = |s: &str| s.parse::<FsConfig>().unwrap_err();
        assert_eq!(err("socket=/s"), FsConfigError::Missing("tag"));
        assert_eq!(err("tag=t"), FsConfigError::Missing("socket"));
        assert_eq!(
            err("tag=t,socket=/s,cache=always"),
            FsConfigError::UnknownKey("cache".into())
        );
        assert_eq!(
            err("tag=t,tag=u,socket=/s"),
            FsConfigError::DuplicateKey("tag".into())
        );
        assert_eq!(
            err("tag=t,socket"),
            FsConfigError::MissingValue("socket".into())
        );
        assert_eq!(
            err("tag=t,socket=/s,queues=x"),
            FsConfigError::BadNumber {
                key: "queues".into(),
                value: "x".into()
            }
        );
        assert_eq!(
            err("tag=t,socket=/s,queues=70000"),
            FsConfigError::BadNumber {
                key: "queues".into(),
                value: "70000".into()
            }
        );
        assert_eq!(
            err("tag=t,socket=/s,queues=0"),
            FsConfigError::RequestQueues(0)
        );
        assert_eq!(
            err("tag=t,socket=/s,queue_size=1000"),
            FsConfigError::QueueSize(1000)
        );
        assert_eq!(
            err("tag=,socket=/s"),
            FsConfigError::TagLength(String::new())
        );
        assert_eq!(err("tag=t,socket="), FsConfigError::EmptySocket);
        assert_eq!(err(""), FsConfigError::MissingValue(String::new()));
    }

    #[test]
    fn tag_length_bounds() {
        assert!(cfg(&"a".repeat(TAG_LEN)).validate().is_ok());
        assert_eq!(
            cfg(&"a".repeat(TAG_LEN + 1)).validate(),
            Err(FsConfigError::TagLength("a".repeat(TAG_LEN + 1)))
        );
        // The bound is in bytes, not characters.
        let tag = "é".repeat(TAG_LEN / 2 + 1);
        assert!(matches!(
            cfg(&tag).validate(),
            Err(FsConfigError::TagLength(_))
        ));
        assert_eq!(cfg("a\0b").validate(), Err(FsConfigError::TagNul));
    }

    #[test]
    fn queue_bounds() {
        let mut c = cfg("t");
        c.queue_size = MAX_QUEUE_SIZE;
        assert!(c.validate().is_ok());
        c.queue_size = 0;
        assert_eq!(c.validate(), Err(FsConfigError::QueueSize(0)));
        c.queue_size = 1;
        c.num_request_queues = MAX_REQUEST_QUEUES + 1;
        assert_eq!(
            c.validate(),
            Err(FsConfigError::RequestQueues(MAX_REQUEST_QUEUES + 1))
        );
    }

    #[test]
    fn serde_defaults_and_unknown_fields() {
        let c: FsConfig = serde_json::from_str(r#"{"tag":"t","socket":"/s"}"#).unwrap();
        assert_eq!(c.num_request_queues, 1);
        assert_eq!(c.queue_size, 1024);
        let round: FsConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
        assert!(
            serde_json::from_str::<FsConfig>(r#"{"tag":"t","socket":"/s","cache":"auto"}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<FsConfig>(r#"{"socket":"/s"}"#).is_err());
    }

    #[test]
    fn config_space_layout() {
        let mut c = cfg("shared");
        c.num_request_queues = 3;
        let space = c.config_space();
        assert_eq!(&space[..6], b"shared");
        assert!(space[6..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&space[TAG_LEN..], &[3, 0, 0, 0]);

        // A 36-byte tag fills the field with no NUL.
        let c = cfg(&"x".repeat(TAG_LEN));
        let space = c.config_space();
        assert!(space[..TAG_LEN].iter().all(|&b| b == b'x'));
        assert_eq!(&space[TAG_LEN..], &[1, 0, 0, 0]);
    }
}
