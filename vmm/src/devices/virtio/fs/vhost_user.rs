//! The vhost-user control plane to virtiofsd: handshake, memory table and vring set-up.
//!
//! The order follows the vhost-user spec (and Cloud Hypervisor's `vu_common_ctrl.rs`):
//! SET_OWNER, GET_FEATURES, then GET/SET_PROTOCOL_FEATURES when the backend offers
//! VHOST_USER_F_PROTOCOL_FEATURES, GET_QUEUE_NUM with the MQ protocol feature. Activation
//! sends SET_FEATURES, SET_MEM_TABLE and, per queue, SET_VRING_NUM/ADDR/BASE/CALL/KICK and
//! SET_VRING_ENABLE. With REPLY_ACK every request waits for the backend's verdict, so a
//! refused request is an error here rather than a silently dead queue. The memory table
//! and the rings are the relay's ([`super::relay`]): virtiofsd never maps guest RAM.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Error as VuError, Frontend, VhostUserFrontend, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::relay::{Relay, SHADOW_SIZE};
use super::FsConfigError;

/// How long one vhost-user request may take before we give up on the backend. The
/// requests are answered from virtiofsd's own thread at once; the bound only keeps a
/// wedged backend from blocking a vCPU thread forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The virtio features we offer the guest when the backend offers them. The relay serves
/// the guest's rings (with `virtio_queue`, which follows indirect descriptors), so ring
/// features are ours, not virtiofsd's: indirect descriptors yes; EVENT_IDX no (like
/// husk's other devices, every used batch raises the interrupt). Left out on purpose:
/// NOTIFICATION_DATA (KVM's ioeventfd matches QueueNotify on the bare queue index),
/// RING_PACKED (the transport sets up split rings), ACCESS_PLATFORM (no IOMMU), and
/// anything device specific (virtio-fs has no feature bits yet).
pub const GUEST_FEATURES_MASK: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC);

/// The vhost-user protocol features we use: several queues, and an acknowledgement for
/// every request.
pub const PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

/// Without the MQ protocol feature a virtio-fs backend serves the high-priority queue and
/// one request queue.
const DEFAULT_BACKEND_QUEUES: u64 = 2;

/// Errors talking to the vhost-user backend.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("Invalid virtio-fs configuration")]
    Config(#[from] FsConfigError),
    #[error(
        "Cannot connect to the virtio-fs backend socket {} (is virtiofsd running?)",
        socket.display()
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot set timeouts on the vhost-user socket")]
    SocketTimeout(#[source] std::io::Error),
    #[error("Cannot create a call eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("The vhost-user request {request} failed")]
    Request {
        request: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("The vhost-user backend does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
    #[error("{wanted} queues configured, the vhost-user backend serves at most {backend}")]
    TooManyQueues { wanted: usize, backend: u64 },
    #[error("Queue {0} has misaligned rings or rings outside guest memory")]
    BadQueue(usize),
    #[error("Cannot create the relay's shared window for virtiofsd")]
    Window(#[source] std::io::Error),
    #[error("The vhost-user backend hung up")]
    BackendGone,
}

impl FsError {
    /// Whether the connection to the backend is unusable after this error (it hung up, or a
    /// reply timed out and the stream is out of step).
    pub fn breaks_connection(&self) -> bool {
        match self {
            FsError::BackendGone => true,
            FsError::Request {
                source: vhost::Error::VhostUserProtocol(e),
                ..
            } => matches!(
                e,
                VuError::Disconnected
                    | VuError::PartialMessage
                    | VuError::SocketBroken(_)
                    | VuError::SocketError(_)
                    | VuError::SocketRetry(_)
            ),
            _ => false,
        }
    }
}

fn request<T>(request: &'static str, r: vhost::Result<T>) -> Result<T, FsError> {
    r.map_err(|source| FsError::Request { request, source })
}

/// The features offered to the guest, from what the backend offers.
pub fn guest_features(backend_features: u64) -> Result<u64, FsError> {
    if backend_features & (1 << VIRTIO_F_VERSION_1) == 0 {
        return Err(FsError::NoVersion1(backend_features));
    }
    Ok(backend_features & GUEST_FEATURES_MASK)
}

/// The features to send with SET_FEATURES: what the shadow rings use, whatever the guest
/// acked: VIRTIO_F_VERSION_1 (checked at connection), no ring features (the relay writes
/// direct descriptors, and without EVENT_IDX virtiofsd signals every answer), plus
/// VHOST_USER_F_PROTOCOL_FEATURES when the backend has it (dropping it would turn the
/// protocol features off again).
pub fn backend_ack(backend_features: u64) -> u64 {
    let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    (backend_features & (1 << VIRTIO_F_VERSION_1)) | (backend_features & protocol)
}

/// The host address of `len` bytes at `addr` aligned to `align`, all in one region.
fn host_range(mem: &GuestMemoryMmap, addr: u64, len: usize, align: u64) -> Option<u64> {
    if !addr.is_multiple_of(align) {
        return None;
    }
    let slice = mem.get_slice(GuestAddress(addr), len).ok()?;
    Some(slice.ptr_guard().as_ptr() as u64)
}

/// Shadow queue `index`'s rings as the backend needs them: host user addresses in our
/// address space, which it maps through the memory table. Sizes include the event index
/// fields (`used_event`, `avail_event`).
pub fn vring_config(relay: &Relay, index: usize) -> Result<VringConfigData, FsError> {
    let bad = || FsError::BadQueue(index);
    let (desc, avail, used) = relay.rings(index).ok_or_else(bad)?;
    let size = usize::from(SHADOW_SIZE);
    let window = relay.window();
    Ok(VringConfigData {
        queue_max_size: SHADOW_SIZE,
        queue_size: SHADOW_SIZE,
        flags: 0,
        desc_table_addr: host_range(window, desc, 16 * size, 16).ok_or_else(bad)?,
        used_ring_addr: host_range(window, used, 6 + 8 * size, 4).ok_or_else(bad)?,
        avail_ring_addr: host_range(window, avail, 6 + 2 * size, 2).ok_or_else(bad)?,
        log_addr: None,
    })
}

/// An owned vhost-user session with one virtio-fs backend.
pub struct Backend {
    frontend: Frontend,
    socket: PathBuf,
    backend_features: u64,
    guest_features: u64,
    protocol: VhostUserProtocolFeatures,
}

impl Backend {
    /// Connects to `socket`, takes ownership of the backend and negotiates the protocol
    /// features; checks that the backend serves `num_queues` queues.
    pub fn connect(socket: &Path, num_queues: usize, timeout: Duration) -> Result<Self, FsError> {
        let stream = UnixStream::connect(socket).map_err(|source| FsError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(FsError::SocketTimeout)?;
        let mut frontend = Frontend::from_stream(stream, num_queues as u64);

        request("SET_OWNER", frontend.set_owner())?;
        let backend_features = request("GET_FEATURES", frontend.get_features())?;
        let guest_features = guest_features(backend_features)?;

        let mut protocol = VhostUserProtocolFeatures::empty();
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = request("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
            protocol = offered & PROTOCOL_FEATURES;
            request(
                "SET_PROTOCOL_FEATURES",
                frontend.set_protocol_features(protocol),
            )?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }

        let backend_queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            request("GET_QUEUE_NUM", frontend.get_queue_num())?
        } else {
            DEFAULT_BACKEND_QUEUES
        };
        if num_queues as u64 > backend_queues {
            return Err(FsError::TooManyQueues {
                wanted: num_queues,
                backend: backend_queues,
            });
        }

        tracing::debug!(
            socket = %socket.display(),
            backend_features = format_args!("{backend_features:#x}"),
            protocol = format_args!("{:#x}", protocol.bits()),
            backend_queues,
            "virtio-fs: vhost-user handshake done"
        );
        Ok(Self {
            frontend,
            socket: socket.to_owned(),
            backend_features,
            guest_features,
            protocol,
        })
    }

    /// The features to offer the guest.
    pub fn guest_features(&self) -> u64 {
        self.guest_features
    }

    /// The protocol features both sides agreed on.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Hands the backend the relay's window as its memory table and the shadow rings of
    /// the queues in `ready` (the ones the driver made ready): after this virtiofsd serves
    /// them. `kicks[i]` and `calls[i]` belong to queue `i`.
    pub fn activate(
        &mut self,
        relay: &Relay,
        ready: &[usize],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), FsError> {
        let rings = ready
            .iter()
            .map(|&index| Ok((index, vring_config(relay, index)?)))
            .collect::<Result<Vec<_>, FsError>>()?;

        let acked = backend_ack(self.backend_features);
        request("SET_FEATURES", self.frontend.set_features(acked))?;
        request(
            "SET_MEM_TABLE",
            self.frontend.set_mem_table(&[relay.memory_table()]),
        )?;
        for (index, ring) in rings {
            let (Some(kick), Some(call)) = (kicks.get(index), calls.get(index)) else {
                return Err(FsError::BadQueue(index));
            };
            let f = &mut self.frontend;
            request("SET_VRING_NUM", f.set_vring_num(index, ring.queue_size))?;
            request("SET_VRING_ADDR", f.set_vring_addr(index, &ring))?;
            // The shadow rings start afresh on every activation, restored VMs' too.
            request("SET_VRING_BASE", f.set_vring_base(index, 0))?;
            request("SET_VRING_CALL", f.set_vring_call(index, call))?;
            request("SET_VRING_KICK", f.set_vring_kick(index, kick))?;
            if acked & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                request("SET_VRING_ENABLE", f.set_vring_enable(index, true))?;
            }
        }
        Ok(())
    }

    /// Stops the backend's rings (the driver reset the device): disables them, then
    /// GET_VRING_BASE, which the spec defines as stopping the ring.
    pub fn stop(&mut self, num_queues: usize) -> Result<(), FsError> {
        for index in 0..num_queues {
            if self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                request(
                    "SET_VRING_ENABLE",
                    self.frontend.set_vring_enable(index, false),
                )?;
            }
            request("GET_VRING_BASE", self.frontend.get_vring_base(index))?;
        }
        Ok(())
    }
}

impl AsRawFd for Backend {
    /// The vhost-user socket, for watching it for hang-ups.
    fn as_raw_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_config::{
        VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_NOTIFICATION_DATA, VIRTIO_F_RING_PACKED,
    };
    use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    use vm_memory::{Bytes, GuestMemoryRegion};

    use super::*;

    #[test]
    fn guest_features_filter() {
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let log_all = VhostUserVirtioFeatures::LOG_ALL.bits();
        let backend = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_F_NOTIFICATION_DATA)
            | (1 << VIRTIO_F_RING_PACKED)
            | (1 << VIRTIO_F_ACCESS_PLATFORM)
            | protocol
            | log_all;
        let offered = guest_features(backend).unwrap();
        // EVENT_IDX is the relay's to offer, and it does not.
        assert_eq!(
            offered,
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        );
        // Only what the backend has.
        assert_eq!(
            guest_features(1 << VIRTIO_F_VERSION_1).unwrap(),
            1 << VIRTIO_F_VERSION_1
        );
        assert!(matches!(
            guest_features(protocol | (1 << VIRTIO_RING_F_EVENT_IDX)),
            Err(FsError::NoVersion1(_))
        ));
    }

    #[test]
    fn backend_ack_is_what_the_shadow_rings_use() {
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let v1 = 1u64 << VIRTIO_F_VERSION_1;
        let idx = 1u64 << VIRTIO_RING_F_EVENT_IDX;
        let indirect = 1u64 << VIRTIO_RING_F_INDIRECT_DESC;
        // Ring features stay off whatever the backend offers: without EVENT_IDX it
        // signals every answer, which the relay relies on.
        assert_eq!(backend_ack(v1 | idx | indirect | protocol), v1 | protocol);
        assert_eq!(backend_ack(v1 | idx), v1);
    }

    #[test]
    fn the_relay_window_is_the_whole_memory_table() {
        let relay = Relay::new(2).unwrap();
        let table = relay.memory_table();
        assert_eq!(table.guest_phys_addr, 0);
        assert_eq!(table.mmap_offset, 0);
        let window = relay.window().iter().next().unwrap();
        assert_eq!(table.memory_size, window.len());
        assert_eq!(table.userspace_addr, window.as_ptr() as u64);
        // The fd maps the window's pages: what we write there, virtiofsd reads.
        let fd = window.file_offset().unwrap().file();
        relay
            .window()
            .write_obj(0x5au8, GuestAddress(0x40))
            .unwrap();
        let mut byte = [0u8];
        std::os::unix::fs::FileExt::read_exact_at(fd, &mut byte, 0x40).unwrap();
        assert_eq!(byte[0], 0x5a);
        assert_eq!(table.mmap_handle, relay.memory_table().mmap_handle);
    }

    #[test]
    fn vring_addresses_are_host_addresses_in_the_window() {
        let relay = Relay::new(2).unwrap();
        for q in 0..2 {
            let cfg = vring_config(&relay, q).unwrap();
            let (desc, avail, used) = relay.rings(q).unwrap();
            let host = |a: u64| relay.window().get_host_address(GuestAddress(a)).unwrap() as u64;
            assert_eq!(cfg.desc_table_addr, host(desc));
            assert_eq!(cfg.avail_ring_addr, host(avail));
            assert_eq!(cfg.used_ring_addr, host(used));
            assert_eq!(cfg.queue_size, SHADOW_SIZE);
            assert_eq!(cfg.flags, 0);
        }
        // Rings never overlap another queue's.
        let (_, _, used0) = relay.rings(0).unwrap();
        let (desc1, _, _) = relay.rings(1).unwrap();
        assert!(used0 + 6 + 8 * u64::from(SHADOW_SIZE) <= desc1);
        assert!(matches!(vring_config(&relay, 2), Err(FsError::BadQueue(2))));
    }
}
