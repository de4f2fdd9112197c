//! The snapshot files as `husk-vmm --restore-from` reads them, before anything in them is
//! trusted: the state file's header, checksum and JSON payload
//! (`husk_vmm::snapshot::format::decode_state`, `VmSnapshot::from_payload` with its
//! checks), and the memory file's header (`check_memory_header`, with the id and size the
//! input itself carries, so the length checks are reached); an input that is not a state
//! file is read as a payload itself. Nothing may panic or allocate without bound; a
//! payload that is accepted must encode back to a payload that is accepted and equal.
#![no_main]

use husk_vmm::snapshot::format::{check_memory_header, decode_state};
use husk_vmm::snapshot::VmSnapshot;
use libfuzzer_sys::fuzz_target;

/// A payload that passed the checksum: whoever wrote the file could compute it, so the
/// JSON and its checks are fed directly too (mutations would rarely get past SHA-256).
fn payload(payload: &[u8]) {
    if let Ok(state) = VmSnapshot::from_payload(payload) {
        let again = state.to_payload();
        let back = VmSnapshot::from_payload(&again).expect("a valid state re-encodes");
        assert_eq!(back.to_payload(), again);
        assert_eq!(back.devices, state.devices);
    }
}

fuzz_target!(|data: &[u8]| {
    match decode_state(data) {
        Ok(p) => payload(p),
        Err(_) => payload(data),
    }
    if data.len() >= 40 {
        let mut id = [0u8; 16];
        id.copy_from_slice(&data[16..32]);
        let size = u64::from_le_bytes(data[32..40].try_into().expect("8 bytes"));
        let _ = check_memory_header(data, data.len() as u64, &id, size);
        let _ = check_memory_header(data, 4096u64.wrapping_add(size), &id, size);
    }
});
