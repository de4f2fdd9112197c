//! Fuzzes the vsock packet parser: arbitrary descriptor tables (addresses, lengths, flags,
//! next indices) over guest memory filled with arbitrary bytes, parsed as guest tx chains
//! and used as rx chains. Nothing may panic and every length must stay bounded.
#![no_main]

use husk_vmm::devices::virtio::vsock::packet::{
    parse_tx_packet, rx_payload_room, write_rx_packet, PacketHeader, HDR_SIZE, MAX_PAYLOAD,
};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x4_0000;
const DATA_START: u64 = 0x1000;
const QUEUE_LEN: u16 = 16;

fn u64_at(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(first % 8) + 1;
    if rest.len() < n * 16 {
        return;
    }
    let (table, payload) = rest.split_at(n * 16);

    // The header codec round-trips whatever bytes it is given.
    if payload.len() >= HDR_SIZE {
        let raw: [u8; HDR_SIZE] = payload[..HDR_SIZE].try_into().unwrap();
        assert_eq!(PacketHeader::from_bytes(&raw).to_bytes(), raw);
    }

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let room = (MEM_SIZE - DATA_START) as usize;
    mem.write_slice(
        &payload[..payload.len().min(room)],
        GuestAddress(DATA_START),
    )
    .unwrap();

    let descs: Vec<RawDescriptor> = table
        .chunks_exact(16)
        .map(|d| {
            // Mostly inside guest memory, sometimes past its end.
            let addr = u64_at(d) % (MEM_SIZE + 0x1000);
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        })
        .collect();
    let vq = MockSplitQueue::new(&mem, QUEUE_LEN);
    if vq.add_desc_chains(&descs, 0).is_err() {
        return;
    }
    let Ok(mut queue) = vq.create_queue::<Queue>() else {
        return;
    };
    let mut budget = QUEUE_LEN;
    while let Some(chain) = queue.pop_descriptor_chain(&mem) {
        budget -= 1;
        // As an rx buffer ...
        if let Ok(room) = rx_payload_room(&mem, &chain) {
            assert!(room <= MAX_PAYLOAD);
            let hdr = PacketHeader::default();
            let len = write_rx_packet(&mem, chain.clone(), &hdr, &vec![0x5a; room]).unwrap();
            assert_eq!(len as usize, HDR_SIZE + room);
        }
        // ... and as a tx packet.
        if let Ok(pkt) = parse_tx_packet(&mem, chain) {
            assert_eq!(pkt.payload.len(), pkt.hdr.len as usize);
            assert!(pkt.payload.len() <= MAX_PAYLOAD);
        }
        if budget == 0 {
            break;
        }
    }
});
