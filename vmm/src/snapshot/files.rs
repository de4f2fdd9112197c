//! The snapshot directory: creating its two files ahead of time (before the seccomp
//! filters, which allow no open), writing them, and reading them back with every check
//! `format` and `state` make.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryMmap;

use super::format::{
    self, check_memory_header, encode_memory_header, encode_state, SnapshotId, MAX_PAYLOAD,
    MEMORY_DATA_OFFSET, STATE_HEADER_LEN,
};
use super::memory::{write_guest_memory, MemoryWritten};
use super::state::VmSnapshot;
use super::SnapshotError;
use crate::guest_ram::Backing;

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "vm.state";
/// The memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "vm.mem";

/// A snapshot directory opened for writing, with the id the snapshot will carry.
pub struct SnapshotTarget {
    dir: PathBuf,
    state: File,
    memory: File,
    id: SnapshotId,
    memory_bytes: u64,
}

impl SnapshotTarget {
    /// Creates `dir` if needed and opens (truncating) its two files.
    pub fn create(dir: &Path, memory_bytes: u64) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(|e| SnapshotError::CreateDir(dir.into(), e))?;
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| SnapshotError::Open(path, e))
        };
        Ok(Self {
            dir: dir.to_owned(),
            state: open(STATE_FILE)?,
            memory: open(MEMORY_FILE)?,
            id: random_id().map_err(SnapshotError::Random)?,
            memory_bytes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// Writes guest RAM, then the state (each synced to disk before the next step), so a
    /// state file that reads back whole always has its memory file complete: a snapshot
    /// interrupted half-way leaves a state file that is refused, never a wrong VM.
    pub fn write(
        &self,
        snapshot: &VmSnapshot,
        mem: &GuestMemoryMmap,
        backing: Backing,
    ) -> Result<MemoryWritten, SnapshotError> {
        let memory_path = self.dir.join(MEMORY_FILE);
        let state_path = self.dir.join(STATE_FILE);
        let mw = |e| SnapshotError::Write(memory_path.clone(), e);
        // Emptied first: an earlier failed attempt may have left pages that are now zero.
        self.state
            .set_len(0)
            .map_err(|e| SnapshotError::Write(state_path.clone(), e))?;
        self.memory.set_len(0).map_err(mw)?;
        self.memory
            .set_len(MEMORY_DATA_OFFSET + self.memory_bytes)
            .map_err(mw)?;
        self.memory
            .write_all_at(&encode_memory_header(&self.id, self.memory_bytes), 0)
            .map_err(mw)?;
        let written = write_guest_memory(mem, backing, &self.memory).map_err(mw)?;
        self.memory.sync_all().map_err(mw)?;
        let sw = |e| SnapshotError::Write(state_path.clone(), e);
        self.state
            .write_all_at(&encode_state(&snapshot.to_payload()), 0)
            .map_err(sw)?;
        self.state.sync_all().map_err(sw)?;
        Ok(written)
    }
}

/// A snapshot read back and checked: its state, and its memory file (opened read-only,
/// its header and length matching the state).
pub struct LoadedSnapshot {
    pub state: VmSnapshot,
    pub memory: File,
}

/// Reads the snapshot in `dir`. Nothing of it is trusted before it passed every check: a
/// truncated, changed, foreign or future file is a clear error.
pub fn load(dir: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let bytes = read_bounded(&state_path)?;
    let payload = format::decode_state(&bytes).map_err(|source| SnapshotError::Format {
        path: state_path.clone(),
        source,
    })?;
    let state = VmSnapshot::from_payload(payload).map_err(|source| SnapshotError::State {
        path: state_path.clone(),
        source,
    })?;

    let memory_path = dir.join(MEMORY_FILE);
    let memory =
        File::open(&memory_path).map_err(|e| SnapshotError::Open(memory_path.clone(), e))?;
    let len = memory
        .metadata()
        .map_err(|e| SnapshotError::Read(memory_path.clone(), e))?
        .len();
    let mut header = vec![0u8; MEMORY_DATA_OFFSET as usize];
    let got = read_up_to(&memory, &mut header)
        .map_err(|e| SnapshotError::Read(memory_path.clone(), e))?;
    check_memory_header(&header[..got], len, &state.id.0, state.memory_bytes).map_err(
        |source| SnapshotError::Format {
            path: memory_path.clone(),
            source,
        },
    )?;
    Ok(LoadedSnapshot { state, memory })
}

/// The whole state file, refused before reading if it is longer than any valid one.
fn read_bounded(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let file = File::open(path).map_err(|e| SnapshotError::Open(path.into(), e))?;
    let max = STATE_HEADER_LEN as u64 + MAX_PAYLOAD;
    let mut bytes = Vec::new();
    // One byte more than allowed tells "too long" from "exactly the maximum".
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SnapshotError::Read(path.into(), e))?;
    if bytes.len() as u64 > max {
        return Err(SnapshotError::Format {
            path: path.into(),
            source: format::FormatError::PayloadTooLarge {
                len: bytes.len() as u64 - STATE_HEADER_LEN as u64,
            },
        });
    }
    Ok(bytes)
}

/// Reads from offset 0 until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// 16 bytes from getrandom(2): a jailed husk-vmm has no `/dev/urandom` (its root holds
/// `/dev/kvm` only), and the id is drawn before the seccomp filter is installed.
fn random_id() -> io::Result<SnapshotId> {
    let mut id = [0u8; 16];
    let mut got = 0;
    while got < id.len() {
        // SAFETY: getrandom writes at most `id.len() - got` bytes into `id` from offset
        // `got`, a buffer we own and that outlives the call.
        let n = unsafe { libc::getrandom(id[got..].as_mut_ptr().cast(), id.len() - got, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::guest_ram;
    use crate::snapshot::state::tests::sample;

    fn tempdir() -> vmm_sys_util::tempdir::TempDir {
        vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/husk-snap-").unwrap()
    }

    /// A written snapshot of 256 MiB with a few pages of guest memory.
    fn written(dir: &Path) -> SnapshotId {
        let mut snap = sample();
        let target = SnapshotTarget::create(dir, snap.memory_bytes).unwrap();
        snap.id.0 = target.id();
        let mem = guest_ram::shared(snap.memory_bytes).unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x20_0000))
            .unwrap();
        let stats = target.write(&snap, &mem, Backing::SharedMemfd).unwrap();
        assert_eq!(stats.written, 4096);
        target.id()
    }

    fn load_err(dir: &Path) -> String {
        match load(dir) {
            Ok(_) => panic!("loaded"),
            Err(e) => {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(x) = src {
                    s.push_str(": ");
                    s.push_str(&x.to_string());
                    src = x.source();
                }
                s
            }
        }
    }

    #[test]
    fn write_then_load() {
        let d = tempdir();
        let id = written(d.as_path());
        let loaded = load(d.as_path()).unwrap();
        assert_eq!(loaded.state.id.0, id);
        let mem =
            guest_ram::private_from_file(&loaded.memory, MEMORY_DATA_OFFSET, 256 << 20).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x20_0000)).unwrap(),
            0x1234_5678
        );
    }

    #[test]
    fn damaged_snapshots_are_refused_with_the_reason() {
        let d = tempdir();
        written(d.as_path());
        let state = d.as_path().join(STATE_FILE);
        let memory = d.as_path().join(MEMORY_FILE);
        let good_state = std::fs::read(&state).unwrap();

        // Truncated state.
        std::fs::write(&state, &good_state[..good_state.len() / 2]).unwrap();
        let e = load_err(d.as_path());
        assert!(e.contains("truncated"), "{e}");
        // One byte changed in the payload.
        let mut bad = good_state.clone();
        let i = bad.len() - 10;
        bad[i] ^= 0x20;
        std::fs::write(&state, &bad).unwrap();
        let e = load_err(d.as_path());
        assert!(e.contains("SHA-256"), "{e}");
        // Another format version.
        let mut bad = good_state.clone();
        bad[8] = 7;
        std::fs::write(&state, &bad).unwrap();
        let e = load_err(d.as_path());
        assert!(e.contains("version 7"), "{e}");
        // Not a snapshot at all.
        std::fs::write(&state, b"#!/bin/sh\necho hello\n").unwrap();
        let e = load_err(d.as_path());
        assert!(e.contains("truncated, or not a husk snapshot"), "{e}");
        std::fs::write(&state, vec![b'x'; 4096]).unwrap();
        let e = load_err(d.as_path());
        assert!(e.contains("wrong magic"), "{e}");
        // Empty (a snapshot that never completed).
        std::fs::write(&state, b"").unwrap();
        assert!(load_err(d.as_path()).contains("truncated"));
        std::fs::write(&state, &good_state).unwrap();
        load(d.as_path()).unwrap();

        // The memory file: truncated, or another snapshot's.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&memory)
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 4096).unwrap();
        let e = load_err(d.as_path());
        assert!(e.contains("vm.mem") && e.contains("truncated"), "{e}");
        f.set_len(len).unwrap();
        let mut id = [0u8; 1];
        f.read_exact_at(&mut id, 16).unwrap();
        f.write_all_at(&[id[0] ^ 1], 16).unwrap();
        let e = load_err(d.as_path());
        assert!(e.contains("another snapshot"), "{e}");
        std::fs::remove_file(&memory).unwrap();
        let e = load_err(d.as_path());
        assert!(e.contains("Cannot open") && e.contains("vm.mem"), "{e}");
    }

    #[test]
    fn an_oversized_state_file_is_not_read_whole() {
        let d = tempdir();
        written(d.as_path());
        let f = OpenOptions::new()
            .write(true)
            .open(d.as_path().join(STATE_FILE))
            .unwrap();
        f.set_len(1 << 30).unwrap();
        let e = load_err(d.as_path());
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn a_second_write_replaces_the_first() {
        let d = tempdir();
        let mut snap = sample();
        let target = SnapshotTarget::create(d.as_path(), snap.memory_bytes).unwrap();
        snap.id.0 = target.id();
        let mem = guest_ram::shared(snap.memory_bytes).unwrap();
        mem.write_obj(7u8, GuestAddress(0x30_0000)).unwrap();
        target.write(&snap, &mem, Backing::SharedMemfd).unwrap();
        // The page is zero again: the second snapshot must not keep the old bytes.
        mem.write_obj(0u8, GuestAddress(0x30_0000)).unwrap();
        snap.vmm_version = "a longer version string than before".into();
        target.write(&snap, &mem, Backing::SharedMemfd).unwrap();
        let loaded = load(d.as_path()).unwrap();
        assert_eq!(loaded.state.vmm_version, snap.vmm_version);
        let back =
            guest_ram::private_from_file(&loaded.memory, MEMORY_DATA_OFFSET, snap.memory_bytes)
                .unwrap();
        assert_eq!(back.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(), 0);
    }
}
