//! virtio-blk (virtio 1.2, 5.2; device type 2) on a raw disk image.
//!
//! One request queue; IN, OUT, FLUSH and GET_ID requests executed synchronously on the event
//! loop thread with pread/pwrite at `sector * 512` and fdatasync. Request parsing and
//! execution are pure ([`request`]), the device and its config space in [`device`], the
//! event-loop side in `event_handler`.

pub mod device;
mod event_handler;
pub mod request;

use std::path::PathBuf;

pub use husk_vm_config::block::{BlockConfig, BlockConfigError};

pub use self::device::{Block, BlockMetrics};
pub use self::request::{DiskBackend, ID_LEN, SECTOR_SIZE};

/// Largest queue the device offers.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Errors setting up a block device, found before the guest runs.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("Disk image {0} does not exist")]
    NotFound(PathBuf),
    #[error("Disk image {0} is a directory")]
    IsDirectory(PathBuf),
    #[error("Disk image {0} is neither a regular file nor a block device")]
    NotAFile(PathBuf),
    #[error("Cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot find the size of disk image {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Disk image {0} is empty")]
    Empty(PathBuf),
    #[error("Disk image {path} has {size} bytes, not a multiple of {SECTOR_SIZE}")]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error(transparent)]
    Config(#[from] BlockConfigError),
    #[error("Cannot create the queue eventfd")]
    EventFd(#[source] std::io::Error),
}
