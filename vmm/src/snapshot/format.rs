//! The bytes of the two snapshot files, and nothing else: what is read from them is checked
//! here before anything trusts it (this is the parser `fuzz/fuzz_targets/snapshot_state.rs`
//! drives).
//!
//! **State file** (`vm.state`): a 56-byte header, then the payload (the JSON of
//! [`super::state::VmSnapshot`]); the file is exactly header + payload long.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `HUSKSNAP` |
//! | 8 | 4 | format version, little-endian ([`STATE_VERSION`]) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | payload length, little-endian (at most [`MAX_PAYLOAD`]) |
//! | 24 | 32 | SHA-256 of the payload |
//! | 56 | n | payload |
//!
//! **Memory file** (`vm.mem`): one header page, then guest RAM, its ranges back to back
//! (`arch::x86_64::memory::ram_ranges`); the file is exactly one page plus the guest's
//! memory long, and is sparse (pages the guest never wrote are holes). The page-sized
//! header keeps the RAM page-aligned, so a restore maps it straight from the file.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `HUSKMEM\0` |
//! | 8 | 4 | format version ([`MEMORY_VERSION`]) |
//! | 12 | 4 | offset of guest RAM in the file ([`MEMORY_DATA_OFFSET`]) |
//! | 16 | 16 | snapshot id (the same 16 random bytes as in the state) |
//! | 32 | 8 | guest memory in bytes |
//! | 40 | .. | zero up to [`MEMORY_DATA_OFFSET`] |

use sha2::{Digest, Sha256};

pub const STATE_MAGIC: [u8; 8] = *b"HUSKSNAP";
pub const STATE_VERSION: u32 = 1;
pub const STATE_HEADER_LEN: usize = 56;
/// Largest payload read: far above a real one (tens of KiB per vCPU), far below harm.
pub const MAX_PAYLOAD: u64 = 16 << 20;

pub const MEMORY_MAGIC: [u8; 8] = *b"HUSKMEM\0";
pub const MEMORY_VERSION: u32 = 1;
/// Where guest RAM starts in the memory file: one 4 KiB page of header.
pub const MEMORY_DATA_OFFSET: u64 = 4096;
/// Bytes of the memory header that carry fields.
const MEMORY_HEADER_FIELDS: usize = 40;

/// A snapshot's identity, shared by its two files (16 random bytes).
pub type SnapshotId = [u8; 16];

/// Why a snapshot file was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("The file is {len} bytes, shorter than the {need}-byte header: truncated, or not a husk snapshot")]
    TooShort { len: u64, need: u64 },
    #[error("Not a husk snapshot {what} file (wrong magic bytes)")]
    BadMagic { what: &'static str },
    #[error("Snapshot {what} format version {found}; this husk-vmm reads version {supported}")]
    Version {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("Reserved header bytes are not zero: not a snapshot this husk-vmm wrote")]
    Reserved,
    #[error("The state payload claims {len} bytes, more than the {MAX_PAYLOAD} allowed")]
    PayloadTooLarge { len: u64 },
    #[error("The file is {found} bytes, the header says {expected}: truncated or appended to")]
    Length { expected: u64, found: u64 },
    #[error("The state payload does not match its SHA-256: the file was changed or damaged")]
    Checksum,
    #[error("The memory file's RAM starts at {0}, expected {MEMORY_DATA_OFFSET}")]
    DataOffset(u32),
    #[error("The memory file belongs to another snapshot (its id differs from the state's)")]
    ForeignMemory,
    #[error("The memory file holds {found} bytes of guest memory, the state says {expected}")]
    MemorySize { expected: u64, found: u64 },
}

/// The state file's bytes for `payload`.
pub fn encode_state(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATE_HEADER_LEN + payload.len());
    out.extend_from_slice(&STATE_MAGIC);
    out.extend_from_slice(&STATE_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// The checked header of a state file: the payload length it announces.
pub fn decode_state_header(header: &[u8], file_len: u64) -> Result<u64, FormatError> {
    let need = STATE_HEADER_LEN as u64;
    if (header.len() as u64) < need || file_len < need {
        return Err(FormatError::TooShort {
            len: file_len.min(header.len() as u64),
            need,
        });
    }
    if header[..8] != STATE_MAGIC {
        return Err(FormatError::BadMagic { what: "state" });
    }
    let version = le_u32(&header[8..12]);
    if version != STATE_VERSION {
        return Err(FormatError::Version {
            what: "state",
            found: version,
            supported: STATE_VERSION,
        });
    }
    if le_u32(&header[12..16]) != 0 {
        return Err(FormatError::Reserved);
    }
    let len = le_u64(&header[16..24]);
    if len > MAX_PAYLOAD {
        return Err(FormatError::PayloadTooLarge { len });
    }
    if file_len != need + len {
        return Err(FormatError::Length {
            expected: need + len,
            found: file_len,
        });
    }
    Ok(len)
}

/// The checked payload of a whole state file.
pub fn decode_state(file: &[u8]) -> Result<&[u8], FormatError> {
    let len = decode_state_header(file, file.len() as u64)?;
    // The header checked that the file is exactly header + len bytes.
    let payload = &file[STATE_HEADER_LEN..STATE_HEADER_LEN + len as usize];
    if Sha256::digest(payload)[..] != file[24..56] {
        return Err(FormatError::Checksum);
    }
    Ok(payload)
}

/// The memory file's header page.
pub fn encode_memory_header(id: &SnapshotId, memory_bytes: u64) -> Vec<u8> {
    let mut page = vec![0u8; MEMORY_DATA_OFFSET as usize];
    page[..8].copy_from_slice(&MEMORY_MAGIC);
    page[8..12].copy_from_slice(&MEMORY_VERSION.to_le_bytes());
    page[12..16].copy_from_slice(&(MEMORY_DATA_OFFSET as u32).to_le_bytes());
    page[16..32].copy_from_slice(id);
    page[32..40].copy_from_slice(&memory_bytes.to_le_bytes());
    page
}

/// Checks a memory file's header (its first bytes, at least [`MEMORY_DATA_OFFSET`] of
/// them) and length against the state that names it.
pub fn check_memory_header(
    header: &[u8],
    file_len: u64,
    id: &SnapshotId,
    memory_bytes: u64,
) -> Result<(), FormatError> {
    if (header.len() as u64) < MEMORY_DATA_OFFSET || file_len < MEMORY_DATA_OFFSET {
        return Err(FormatError::TooShort {
            len: file_len.min(header.len() as u64),
            need: MEMORY_DATA_OFFSET,
        });
    }
    if header[..8] != MEMORY_MAGIC {
        return Err(FormatError::BadMagic { what: "memory" });
    }
    let version = le_u32(&header[8..12]);
    if version != MEMORY_VERSION {
        return Err(FormatError::Version {
            what: "memory",
            found: version,
            supported: MEMORY_VERSION,
        });
    }
    let offset = le_u32(&header[12..16]);
    if u64::from(offset) != MEMORY_DATA_OFFSET {
        return Err(FormatError::DataOffset(offset));
    }
    if header[MEMORY_HEADER_FIELDS..MEMORY_DATA_OFFSET as usize]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(FormatError::Reserved);
    }
    if header[16..32] != id[..] {
        return Err(FormatError::ForeignMemory);
    }
    let found = le_u64(&header[32..40]);
    if found != memory_bytes {
        return Err(FormatError::MemorySize {
            expected: memory_bytes,
            found,
        });
    }
    let expected = MEMORY_DATA_OFFSET.checked_add(memory_bytes);
    if expected != Some(file_len) {
        let expected = expected.unwrap_or(u64::MAX);
        return Err(FormatError::Length {
            expected,
            found: file_len,
        });
    }
    Ok(())
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: SnapshotId = [7; 16];

    #[test]
    fn state_round_trip() {
        let file = encode_state(b"{\"x\":1}");
        assert_eq!(file.len(), STATE_HEADER_LEN + 7);
        assert_eq!(decode_state(&file).unwrap(), b"{\"x\":1}");
        assert_eq!(decode_state(&encode_state(b"")).unwrap(), b"");
    }

    #[test]
    fn truncated_state_is_refused_at_every_length() {
        let file = encode_state(b"{\"some\": \"payload\"}");
        for cut in 0..file.len() {
            let err = decode_state(&file[..cut]).unwrap_err();
            if cut < STATE_HEADER_LEN {
                assert!(matches!(err, FormatError::TooShort { .. }), "{cut}: {err}");
            } else {
                assert_eq!(
                    err,
                    FormatError::Length {
                        expected: file.len() as u64,
                        found: cut as u64
                    }
                );
            }
        }
        let mut longer = file.clone();
        longer.push(b' ');
        assert!(matches!(
            decode_state(&longer),
            Err(FormatError::Length { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_noticed() {
        let file = encode_state(b"{\"vcpus\": [1, 2, 3]}");
        for byte in 0..file.len() {
            for bit in 0..8 {
                let mut bad = file.clone();
                bad[byte] ^= 1 << bit;
                assert!(decode_state(&bad).is_err(), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn foreign_and_future_files() {
        let mut file = encode_state(b"{}");
        file[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        assert_eq!(
            decode_state(&file),
            Err(FormatError::BadMagic { what: "state" })
        );
        let mut file = encode_state(b"{}");
        file[8..12].copy_from_slice(&2u32.to_le_bytes());
        let err = decode_state(&file).unwrap_err();
        assert_eq!(
            err,
            FormatError::Version {
                what: "state",
                found: 2,
                supported: 1
            }
        );
        assert!(err.to_string().contains("version 2"), "{err}");
        let mut file = encode_state(b"{}");
        file[16..24].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(matches!(
            decode_state(&file),
            Err(FormatError::PayloadTooLarge { .. })
        ));
        // A length that would overflow header + len.
        file[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_state(&file).is_err());
    }

    #[test]
    fn memory_header_checks() {
        let size = 256 << 20;
        let page = encode_memory_header(&ID, size);
        let len = MEMORY_DATA_OFFSET + size;
        check_memory_header(&page, len, &ID, size).unwrap();
        assert_eq!(
            check_memory_header(&page, len, &[8; 16], size),
            Err(FormatError::ForeignMemory)
        );
        assert!(matches!(
            check_memory_header(&page, len, &ID, size * 2),
            Err(FormatError::MemorySize { .. })
        ));
        assert!(matches!(
            check_memory_header(&page, len - 4096, &ID, size),
            Err(FormatError::Length { .. })
        ));
        assert!(matches!(
            check_memory_header(&page[..100], len, &ID, size),
            Err(FormatError::TooShort { .. })
        ));
        let mut bad = page.clone();
        bad[0] = b'X';
        assert_eq!(
            check_memory_header(&bad, len, &ID, size),
            Err(FormatError::BadMagic { what: "memory" })
        );
        let mut bad = page.clone();
        bad[8] = 9;
        assert!(matches!(
            check_memory_header(&bad, len, &ID, size),
            Err(FormatError::Version { found: 9, .. })
        ));
        let mut bad = page.clone();
        bad[13] = 0;
        assert!(matches!(
            check_memory_header(&bad, len, &ID, size),
            Err(FormatError::DataOffset(_))
        ));
        let mut bad = page;
        bad[4000] = 1;
        assert_eq!(
            check_memory_header(&bad, len, &ID, size),
            Err(FormatError::Reserved)
        );
        // Sizes near u64::MAX do not overflow.
        let page = encode_memory_header(&ID, u64::MAX);
        assert!(check_memory_header(&page, u64::MAX, &ID, u64::MAX).is_err());
    }
}
