//! virtio-vsock (virtio spec 1.2, 5.10; device type 19), hybrid like Firecracker's: guest
//! stream sockets are mapped to host Unix sockets instead of host vsock.
//!
//! - Host -> guest: a host program connects to `uds_path`, writes `CONNECT <port>\n`,
//!   reads `OK <hostport>\n`; from then on the stream is the guest's port `<port>`.
//! - Guest -> host: a guest connection to (CID 2, port P) is connected to the Unix socket
//!   `<uds_path>_<P>`; if nothing listens there the guest gets RST.
//!
//! Files: [`packet`] (header and descriptor-chain parsing), [`connection`] (one
//! connection's state machine and credit accounting), [`muxer`] (the host sockets and the
//! connection table), [`device`] (the virtio device and its queue processing) and
//! `event_handler` (the event-loop glue), `restore` (the transport reset after a snapshot
//! restore).

pub mod connection;
pub mod device;
mod event_handler;
pub mod muxer;
pub mod packet;
mod restore;

pub use husk_vm_config::vsock::{VsockConfig, VsockConfigError, MIN_GUEST_CID};

pub use device::{Vsock, VsockError, VsockMetrics};
pub use packet::{parse_tx_packet, PacketError, PacketHeader, TxPacket};
