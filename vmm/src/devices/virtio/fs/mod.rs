//! virtio-fs (virtio spec 1.2, 5.11; device type 26) as a vhost-user frontend.
//!
//! The file system server is a separate `virtiofsd` process that we reach over its Unix
//! socket. We only do the control plane: at construction we take ownership of the backend
//! and learn its features ([`vhost_user::Backend::connect`]); at activation we hand it the
//! guest memory table (guest RAM is a shared memfd), the ring addresses, the queues' kick
//! eventfds and one call eventfd per queue of ours. The data plane never passes through
//! us: KVM signals the kick eventfds on QueueNotify (ioeventfd) and virtiofsd reads the
//! rings in guest memory itself. The only thing the event loop does is relay the call
//! eventfds to the interrupt line ([`crate::devices::virtio::IrqTrigger`]), since the
//! virtio-mmio InterruptStatus register must be set before the guest sees the interrupt.
//!
//! Queues: one high-priority queue (FUSE_FORGET, FUSE_INTERRUPT) and
//! `num_request_queues` request queues. Config space: the mount tag (36 bytes, NUL
//! padded) and `num_request_queues` (le32).

mod device;
mod event_handler;
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
