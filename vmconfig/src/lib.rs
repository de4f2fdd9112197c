//! husk-vm-config: what a husk VM is, as one typed contract. husk-vmm reads it (its
//! command line and its `--config` JSON file are this same set of serde structs), the shim
//! writes it for each pod (`--config`), and the tests build it: the limits (memory,
//! vCPUs) and every device's checks live here once.
//!
//! - [`VmConfig`]: a VM to boot; [`RestoreConfig`]: a snapshot to restore; [`ConfigFile`]:
//!   either, as a file.
//! - [`block`], [`fs`], [`net`], [`vsock`]: the devices' configurations.

pub mod block;
pub mod fs;
pub mod net;
pub mod vsock;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::block::BlockConfig;
pub use crate::fs::{FsConfig, FsConfigError};
pub use crate::net::{MacAddr, NetConfig, NetConfigError};
pub use crate::vsock::{VsockConfig, VsockConfigError};

/// Smallest guest memory we accept: the kernel, initramfs and page tables must fit.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Largest guest memory we accept (1 TiB); the host may still refuse less.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Most vCPUs one VM may have: the MP table must fit in the last KiB of base memory.
pub const MAX_VCPUS: u8 = 32;

/// Errors in a VM configuration, found before any guest runs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("Memory size {0} MiB is out of range ({MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB)")]
    MemoryOutOfRange(u64),
    #[error("vCPU count {0} is out of range (1..={MAX_VCPUS})")]
    VcpusOutOfRange(u8),
    #[error("Kernel file {path} is not usable")]
    Kernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Initramfs file {path} is not usable")]
    Initramfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Kernel command line must not contain NUL or newline characters")]
    BadCmdline,
    #[error("Invalid virtio-fs device {index}")]
    Fs {
        index: usize,
        #[source]
        source: FsConfigError,
    },
    #[error("Invalid vsock device")]
    Vsock(#[source] VsockConfigError),
    #[error("Invalid block device {index}: {reason}")]
    Block { index: usize, reason: String },
    #[error("Invalid net device {index}")]
    Net {
        index: usize,
        #[source]
        source: NetConfigError,
    },
    #[error("Net devices {first} and {second} both use {backend}")]
    DuplicateNetBackend {
        first: usize,
        second: usize,
        backend: String,
    },
    #[error("Net devices {first} and {second} both have MAC address {mac}")]
    DuplicateMac {
        first: usize,
        second: usize,
        mac: String,
    },
    #[error("Two virtio-fs devices have the tag {0:?}")]
    DuplicateFsTag(String),
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ConsoleConfig {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded (panic detection still works).
    Off,
}

impl std::str::FromStr for ConsoleConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "off" => Ok(Self::Off),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(format!(
                    "invalid console {s:?}: expected stdout, off or file:PATH"
                )),
            },
        }
    }
}

fn default_vcpus() -> u8 {
    1
}
fn default_memory_mib() -> u64 {
    256
}

/// Everything needed to build and boot one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an uncompressed ELF `vmlinux` or a `bzImage`.
    pub kernel: PathBuf,
    /// Optional initramfs (newc cpio, optionally compressed).
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Extra kernel command line arguments, appended to the VMM's own.
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// The hybrid vsock device: guest ports reached through a host Unix socket.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices: vhost-user connections to running virtiofsd instances.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// virtio-blk devices on raw image files, in order (/dev/vda, /dev/vdb, ...).
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    /// virtio-net devices on taps, in order (the guest's eth0, eth1, ...).
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// Where a snapshot goes when SIGUSR2 asks for one (`vm.state` and `vm.mem`, created
    /// at start-up).
    #[serde(default)]
    pub snapshot_to: Option<PathBuf>,
}

/// Restoring a snapshot instead of booting: the snapshot directory and this VM's device
/// backends. The devices must be the snapshot's, in kind, number and order (they are where
/// the guest found them at boot); their backends are new: another vsock socket, another
/// virtiofsd, other disk images and taps, another console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// The snapshot directory (`vm.state`, `vm.mem`).
    pub restore_from: PathBuf,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// As [`VmConfig::snapshot_to`]: a restored VM can be snapshotted again.
    #[serde(default)]
    pub snapshot_to: Option<PathBuf>,
}

impl RestoreConfig {
    /// Checks the device configurations (the snapshot itself is checked when read).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_devices(&self.vsock, &self.block, &self.net, &self.fs)
    }
}

/// A config file: a VM to boot, or (with `restore_from`) a snapshot to restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigFile {
    Boot(VmConfig),
    Restore(RestoreConfig),
}

impl ConfigFile {
    /// Reads a JSON config file.
    pub fn from_json_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if value.get("restore_from").is_some() {
            serde_json::from_value(value).map(Self::Restore)
        } else {
            serde_json::from_value(value).map(Self::Boot)
        }
    }
}

impl VmConfig {
    /// Reads a JSON config file.
    pub fn from_json_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks the ranges and that the files exist and are readable regular files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::MemoryOutOfRange(self.memory_mib));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::VcpusOutOfRange(self.vcpus));
        }
        if self.cmdline.contains(['\0', '\n']) {
            return Err(ConfigError::BadCmdline);
        }
        check_file(&self.kernel).map_err(|source| ConfigError::Kernel {
            path: self.kernel.clone(),
            source,
        })?;
        if let Some(initramfs) = &self.initramfs {
            check_file(initramfs).map_err(|source| ConfigError::Initramfs {
                path: initramfs.clone(),
                source,
            })?;
        }
        validate_devices(&self.vsock, &self.block, &self.net, &self.fs)
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

/// The checks every device configuration gets, booted or restored.
fn validate_devices(
    vsock: &Option<VsockConfig>,
    block: &[BlockConfig],
    net: &[NetConfig],
    fs: &[FsConfig],
) -> Result<(), ConfigError> {
    if let Some(vsock) = vsock {
        vsock.validate().map_err(ConfigError::Vsock)?;
    }
    for (index, block) in block.iter().enumerate() {
        block.validate().map_err(|e| ConfigError::Block {
            index,
            reason: e.to_string(),
        })?;
    }
    for (index, n) in net.iter().enumerate() {
        n.validate()
            .map_err(|source| ConfigError::Net { index, source })?;
        for (first, other) in net[..index].iter().enumerate() {
            if (other.tap.is_some() && other.tap == n.tap)
                || (other.fd.is_some() && other.fd == n.fd)
            {
                return Err(ConfigError::DuplicateNetBackend {
                    first,
                    second: index,
                    backend: n.describe(),
                });
            }
            if let (Some(a), Some(b)) = (other.mac, n.mac) {
                if a == b {
                    return Err(ConfigError::DuplicateMac {
                        first,
                        second: index,
                        mac: a.to_string(),
                    });
                }
            }
        }
    }
    for (index, f) in fs.iter().enumerate() {
        f.validate()
            .map_err(|source| ConfigError::Fs { index, source })?;
        if fs[..index].iter().any(|other| other.tag == f.tag) {
            return Err(ConfigError::DuplicateFsTag(f.tag.clone()));
        }
    }
    Ok(())
}

fn check_file(path: &std::path::Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "file is empty",
        ));
    }
    std::fs::File::open(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmConfig {
        VmConfig {
            kernel: "/proc/self/exe".into(),
            initramfs: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 256,
            console: ConsoleConfig::Stdout,
            vsock: None,
            fs: Vec::new(),
            block: Vec::new(),
            net: Vec::new(),
            snapshot_to: None,
        }
    }

    #[test]
    fn config_file_is_a_boot_or_a_restore() {
        let boot = ConfigFile::from_json(r#"{"kernel": "/k", "snapshot_to": "/snap"}"#).unwrap();
        assert!(
            matches!(&boot, ConfigFile::Boot(c) if c.snapshot_to.as_deref() == Some(std::path::Path::new("/snap")))
        );
        let restore = ConfigFile::from_json(
            r#"{"restore_from": "/snap", "console": "off", "vsock": {"guest_cid": 4, "uds_path": "/v"}}"#,
        )
        .unwrap();
        let ConfigFile::Restore(r) = restore else {
            panic!("not a restore");
        };
        assert_eq!(r.console, ConsoleConfig::Off);
        assert_eq!(r.vsock.as_ref().map(|v| v.guest_cid), Some(4));
        r.validate().unwrap();
        // A restore takes no kernel, vCPUs or memory: the snapshot has them.
        let e = ConfigFile::from_json(r#"{"restore_from": "/snap", "vcpus": 2}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `vcpus`"), "{e}");
        assert!(ConfigFile::from_json(r#"{"restore_from": "/s", "kernel": "/k"}"#).is_err());
        // Device checks apply to restores too.
        let ConfigFile::Restore(mut r) =
            ConfigFile::from_json(r#"{"restore_from": "/s"}"#).unwrap()
        else {
            panic!("not a restore");
        };
        r.fs = vec![
            "tag=a,socket=/x".parse().unwrap(),
            "tag=a,socket=/y".parse().unwrap(),
        ];
        assert!(matches!(r.validate(), Err(ConfigError::DuplicateFsTag(_))));
    }

    #[test]
    fn json_defaults_and_unknown_fields() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 256);
        assert_eq!(c.console, ConsoleConfig::Stdout);
        let c: VmConfig =
            serde_json::from_str(r#"{"kernel": "/k", "console": {"file": "/tmp/x"}, "vcpus": 2}"#)
                .unwrap();
        assert_eq!(c.console, ConsoleConfig::File("/tmp/x".into()));
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "memory": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `memory`"), "{err}");
        assert!(serde_json::from_str::<VmConfig>(r#"{"vcpus": 2}"#).is_err());
    }

    #[test]
    fn console_from_str() {
        assert_eq!("off".parse::<ConsoleConfig>(), Ok(ConsoleConfig::Off));
        assert_eq!(
            "file:/a/b".parse::<ConsoleConfig>(),
            Ok(ConsoleConfig::File("/a/b".into()))
        );
        assert!("file:".parse::<ConsoleConfig>().is_err());
        assert!("tty".parse::<ConsoleConfig>().is_err());
    }

    #[test]
    fn validate_ranges() {
        assert!(base().validate().is_ok());
        let mut c = base();
        c.memory_mib = 8;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemoryOutOfRange(8))
        ));
        c.memory_mib = MAX_MEMORY_MIB + 1;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemoryOutOfRange(_))
        ));
        let mut c = base();
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::VcpusOutOfRange(0))));
        c.vcpus = MAX_VCPUS + 1;
        assert!(c.validate().is_err());
        let mut c = base();
        c.cmdline = "a\nb".into();
        assert!(matches!(c.validate(), Err(ConfigError::BadCmdline)));
    }

    #[test]
    fn net_devices() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel": "/k", "net": [{"tap": "tap0", "mac": "02:00:00:00:00:01", "mtu": 1500}]}"#,
        )
        .unwrap();
        assert_eq!(c.net.len(), 1);
        assert_eq!(c.net[0].tap.as_deref(), Some("tap0"));
        assert_eq!(c.net[0].mtu, Some(1500));
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"kernel": "/k", "net": [{"tap": "t", "x": 1}]}"#
        )
        .is_err());

        let mut c = base();
        c.net = vec![
            "tap=a".parse().unwrap(),
            "tap=b,mac=02:00:00:00:00:01".parse().unwrap(),
        ];
        assert!(c.validate().is_ok());
        c.net[0].fd = Some(100);
        let e = c.validate().unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Net {
                    index: 0,
                    source: NetConfigError::Backend
                }
            ),
            "{e}"
        );
        c.net[0].fd = None;
        c.net.push("tap=a".parse().unwrap());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DuplicateNetBackend {
                first: 0,
                second: 2,
                ..
            })
        ));
        c.net[2] = "tap=c,mac=02:00:00:00:00:01".parse().unwrap();
        let e = c.validate().unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::DuplicateMac {
                    first: 1,
                    second: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn validate_files() {
        let mut c = base();
        c.kernel = "/nonexistent/vmlinux".into();
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ConfigError::Kernel { .. }));
        assert!(e.to_string().contains("/nonexistent/vmlinux"));
        let mut c = base();
        c.kernel = "/".into();
        assert!(matches!(c.validate(), Err(ConfigError::Kernel { .. })));
        let mut c = base();
        c.initramfs = Some("/nonexistent/initrd".into());
        assert!(matches!(c.validate(), Err(ConfigError::Initramfs { .. })));
    }
}
