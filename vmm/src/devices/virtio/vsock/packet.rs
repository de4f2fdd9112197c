//! The virtio-vsock packet: its 44-byte little-endian header (virtio spec 1.2, 5.10.6) and
//! the parsing of guest descriptor chains into packets and back.
//!
//! Everything here is guest-controlled input: lengths are checked against the chain and a
//! fixed payload limit before anything is copied, and no function panics on any chain.

use std::io::{Read, Write};

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;
/// Largest payload we accept in one guest tx packet (Linux sends at most 64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The host's well-known CID.
pub const HOST_CID: u64 = 2;

/// `type`: stream sockets, the only type we offer.
pub const TYPE_STREAM: u16 = 1;

/// Operations (`op`).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `flags` of OP_SHUTDOWN: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `flags` of OP_SHUTDOWN: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Errors turning a descriptor chain into a packet or a packet into one.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("Chain has {0} readable bytes, fewer than the packet header")]
    HeaderTooShort(usize),
    #[error("Payload length {} exceeds the 64 KiB limit", .hdr.len)]
    PayloadTooLong { hdr: PacketHeader },
    #[error("Header announces {} payload bytes, the chain holds {avail}", .hdr.len)]
    PayloadTruncated { hdr: PacketHeader, avail: usize },
    #[error("Descriptor chain points outside guest memory")]
    Memory(#[source] virtio_queue::Error),
    #[error("Cannot copy between the chain and the packet")]
    Copy(#[source] std::io::Error),
    #[error("Receive buffer has {0} writable bytes, fewer than the packet header")]
    RxBufferTooShort(usize),
}

impl PacketError {
    /// The header of a packet whose payload was bad (its connection should be reset).
    pub fn header(&self) -> Option<&PacketHeader> {
        match self {
            Self::PayloadTooLong { hdr } | Self::PayloadTruncated { hdr, .. } => Some(hdr),
            _ => None,
        }
    }
}

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8; HDR_SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn le_u32(b: &[u8; HDR_SIZE], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le_u16(b: &[u8; HDR_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl PacketHeader {
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        Self {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A packet the guest sent on its tx queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxPacket {
    pub hdr: PacketHeader,
    /// Exactly `hdr.len` bytes (at most [`MAX_PAYLOAD`]).
    pub payload: Vec<u8>,
}

/// Parses a guest tx descriptor chain: the header from its first readable bytes, then
/// `hdr.len` payload bytes. Device-writable descriptors are not read (the chain must be
/// device-readable); bytes past `hdr.len` are ignored.
pub fn parse_tx_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<TxPacket, PacketError> {
    let mut reader = chain.reader(mem).map_err(PacketError::Memory)?;
    let avail = reader.available_bytes();
    if avail < HDR_SIZE {
        return Err(PacketError::HeaderTooShort(avail));
    }
    let mut raw = [0u8; HDR_SIZE];
    reader.read_exact(&mut raw).map_err(PacketError::Copy)?;
    let hdr = PacketHeader::from_bytes(&raw);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD {
        return Err(PacketError::PayloadTooLong { hdr });
    }
    let avail = reader.available_bytes();
    if len > avail {
        return Err(PacketError::PayloadTruncated { hdr, avail });
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).map_err(PacketError::Copy)?;
    Ok(TxPacket { hdr, payload })
}

/// Room for payload in a guest rx chain: its writable bytes past the header, capped at
/// [`MAX_PAYLOAD`].
pub fn rx_payload_room(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<&GuestMemoryMmap>,
) -> Result<usize, PacketError> {
    let writer = chain.clone().writer(mem).map_err(PacketError::Memory)?;
    let avail = writer.available_bytes();
    if avail < HDR_SIZE {
        return Err(PacketError::RxBufferTooShort(avail));
    }
    Ok((avail - HDR_SIZE).min(MAX_PAYLOAD))
}

/// Writes a packet into a guest rx chain and returns the bytes written (the used length).
/// `hdr.len` is set from `payload`, which must fit (see [`rx_payload_room`]).
pub fn write_rx_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    hdr: &PacketHeader,
    payload: &[u8],
) -> Result<u32, PacketError> {
    let mut writer = chain.writer(mem).map_err(PacketError::Memory)?;
    let avail = writer.available_bytes();
    if avail < HDR_SIZE + payload.len() || payload.len() > MAX_PAYLOAD {
        return Err(PacketError::RxBufferTooShort(avail));
    }
    let mut hdr = *hdr;
    // Cannot truncate: payload.len() <= MAX_PAYLOAD.
    hdr.len = payload.len() as u32;
    writer
        .write_all(&hdr.to_bytes())
        .map_err(PacketError::Copy)?;
    writer.write_all(payload).map_err(PacketError::Copy)?;
    Ok((HDR_SIZE + payload.len()) as u32)
}

#[cfg(test)]
pub(crate) mod tests {
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    pub(crate) fn test_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    pub(crate) fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    pub(crate) fn sample_hdr() -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 52,
            len: 0,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn header_roundtrip_and_layout() {
        let h = sample_hdr();
        let b = h.to_bytes();
        assert_eq!(PacketHeader::from_bytes(&b), h);
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[40..44], &7u32.to_le_bytes());
    }

    fn parse(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<TxPacket, PacketError> {
        let vq = MockSplitQueue::new(mem, 16);
        let chain = vq.build_desc_chain(descs).unwrap();
        parse_tx_packet(mem, chain)
    }

    #[test]
    fn parses_header_and_payload_split_over_descriptors() {
        let mem = test_mem();
        let mut h = sample_hdr();
        h.len = 5;
        let b = h.to_bytes();
        // The header itself is split 10 / 34, the payload follows in a third descriptor.
        mem.write_slice(&b[..10], GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(&b[10..], GuestAddress(0x11_0000)).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x12_0000)).unwrap();
        let pkt = parse(
            &mem,
            &[
                desc(0x10_0000, 10, false),
                desc(0x11_0000, 34, false),
                desc(0x12_0000, 100, false),
            ],
        )
        .unwrap();
        assert_eq!(pkt.hdr, h);
        assert_eq!(pkt.payload, b"hello");
    }

    #[test]
    fn malformed_chains_are_errors() {
        let mem = test_mem();
        let mut h = sample_hdr();
        h.len = 100;
        mem.write_slice(&h.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();

        // Header shorter than 44 bytes.
        let e = parse(&mem, &[desc(0x10_0000, 43, false)]).unwrap_err();
        assert!(matches!(e, PacketError::HeaderTooShort(43)), "{e}");
        // Zero-length descriptor.
        let e = parse(&mem, &[desc(0x10_0000, 0, false)]).unwrap_err();
        assert!(matches!(e, PacketError::HeaderTooShort(0)), "{e}");
        // Wrong direction: a device-writable header is not read.
        let e = parse(&mem, &[desc(0x10_0000, 200, true)]).unwrap_err();
        assert!(matches!(e, PacketError::HeaderTooShort(0)), "{e}");
        // len larger than the buffer.
        let e = parse(&mem, &[desc(0x10_0000, 44 + 99, false)]).unwrap_err();
        assert!(
            matches!(
                e,
                PacketError::PayloadTruncated {
                    hdr: PacketHeader { len: 100, .. },
                    avail: 99
                }
            ),
            "{e}"
        );
        // Out-of-memory address.
        let e = parse(&mem, &[desc(0x4000_0000, 200, false)]).unwrap_err();
        assert!(matches!(e, PacketError::Memory(_)), "{e}");
        // Straddling the end of memory.
        let e = parse(&mem, &[desc(0x40_0000 - 20, 200, false)]).unwrap_err();
        assert!(matches!(e, PacketError::Memory(_)), "{e}");
        // len beyond the 64 KiB limit, even with a chain that large.
        h.len = (MAX_PAYLOAD + 1) as u32;
        mem.write_slice(&h.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        let e = parse(&mem, &[desc(0x10_0000, 0x2_0000, false)]).unwrap_err();
        assert!(matches!(e, PacketError::PayloadTooLong { .. }), "{e}");
    }

    #[test]
    fn writes_rx_packet_and_checks_room() {
        let mem = test_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let chain = vq
            .build_desc_chain(&[desc(0x10_0000, 44, true), desc(0x11_0000, 10, true)])
            .unwrap();
        assert_eq!(rx_payload_room(&mem, &chain).unwrap(), 10);
        let n = write_rx_packet(&mem, chain, &sample_hdr(), b"0123456789").unwrap();
        assert_eq!(n, 54);
        let mut raw = [0u8; HDR_SIZE];
        mem.read_slice(&mut raw, GuestAddress(0x10_0000)).unwrap();
        let h = PacketHeader::from_bytes(&raw);
        assert_eq!(h.len, 10);
        assert_eq!(h.op, op::RW);
        let mut data = [0u8; 10];
        mem.read_slice(&mut data, GuestAddress(0x11_0000)).unwrap();
        assert_eq!(&data, b"0123456789");

        // Too small for the payload, or for the header; read-only buffers have no room.
        let vq = MockSplitQueue::new(&mem, 16);
        let chain = vq.build_desc_chain(&[desc(0x10_0000, 50, true)]).unwrap();
        assert!(write_rx_packet(&mem, chain, &sample_hdr(), b"0123456789").is_err());
        let vq = MockSplitQueue::new(&mem, 16);
        let chain = vq.build_desc_chain(&[desc(0x10_0000, 43, true)]).unwrap();
        assert!(matches!(
            rx_payload_room(&mem, &chain),
            Err(PacketError::RxBufferTooShort(43))
        ));
        let vq = MockSplitQueue::new(&mem, 16);
        let chain = vq.build_desc_chain(&[desc(0x10_0000, 100, false)]).unwrap();
        assert!(matches!(
            rx_payload_room(&mem, &chain),
            Err(PacketError::RxBufferTooShort(0))
        ));
    }
}
