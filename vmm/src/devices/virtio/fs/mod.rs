//! virtio-fs (virtio spec 1.2, 5.11; device type 26) as a vhost-user frontend.
//!
//! The file system server is a separate `virtiofsd` process that we reach over its Unix
//! socket. At construction we take ownership of the backend and learn its features
//! ([`vhost_user::Backend::connect`]); at activation we hand it a memory table and rings,
//! but not the guest's: the [`relay`] serves the guest's queues on the VMM's event loop
//! and gives virtiofsd shadow queues in a small window of its own, copying each request
//! there and each answer back. virtiofsd never maps guest RAM, so a compromised virtiofsd
//! cannot read or write the guest, and guest RAM need not be shareable: a VM restored
//! from a snapshot maps the snapshot's memory file privately, shared copy-on-write with
//! every other VM restored from it.
//!
//! Queues: one high-priority queue (FUSE_FORGET, FUSE_INTERRUPT) and
//! `num_request_queues` request queues. Config space: the mount tag (36 bytes, NUL
//! padded) and `num_request_queues` (le32).

mod arena;
mod device;
mod event_handler;
pub mod relay;
#[cfg(any(test, fuzzing))]
pub mod shadow_server;
#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;
pub mod vhost_user;

pub use husk_vm_config::fs::{
    FsConfig, FsConfigError, CONFIG_SPACE_LEN, MAX_QUEUE_SIZE, MAX_REQUEST_QUEUES, TAG_LEN,
};

pub use self::device::Fs;
pub use self::vhost_user::FsError;

/// Index of the high-priority queue; request queues follow it.
pub const HIPRIO_QUEUE: usize = 0;
