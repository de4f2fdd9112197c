//! virtio-net (virtio 1.2, 5.1; device type 1) on a Linux tap device.
//!
//! One receive/transmit queue pair (queue 0 rx, queue 1 tx; no control queue). The queue
//! work is pure ([`rx`], [`tx`]: plain functions over a queue, guest memory and a
//! [`tap::TapIo`]), the device and its config space in [`device`], the event-loop side in
//! `event_handler`. The per-pair state ([`rx::RxState`], [`tx::TxState`]) is kept apart from
//! the device so a pair per vCPU (VIRTIO_NET_F_MQ, a multi-queue tap) can be added later.
//!
//! Frames carry a 12-byte `virtio_net_hdr_v1` (virtio 1.x always has `num_buffers`), and the
//! tap is opened with IFF_VNET_HDR and TUNSETVNETHDRSZ 12, so headers pass between the guest
//! and the tap unchanged: checksum and segmentation offloads cost nothing here.

pub mod device;
#[cfg(test)]
mod device_tests;
mod event_handler;
pub mod rx;
pub mod tap;
#[cfg(test)]
mod tests;
pub mod tx;

pub use husk_vm_config::net::{MacAddr, NetConfig, NetConfigError, MAX_TAP_NAME, MIN_MTU};

pub use self::device::{feature_names, Net, NetError, NetMetrics};

/// Length of `struct virtio_net_hdr_v1` in front of every frame, both ways.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame after the header: a 64 KiB GSO frame and an Ethernet header with a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65536 + 18;
/// Smallest frame after the header: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// Largest size of each queue.
pub const QUEUE_MAX_SIZE: u16 = 256;
