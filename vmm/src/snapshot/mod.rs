//! Snapshots of a running VM, and VMs restored from them.
//!
//! `husk-vmm --snapshot-to DIR` opens `DIR/vm.state` and `DIR/vm.mem` at start-up;
//! `SIGUSR2` ([`trigger`]) then stops the VM at a clean point, writes both files and ends
//! the VMM. `husk-vmm --restore-from DIR` builds a VM from them without booting: KVM's
//! vCPU and VM state, the devices (with backends from its own configuration), and guest
//! RAM mapped copy-on-write from `vm.mem`. [`format`] is the files' layout, [`state`]
//! what the state holds, [`files`] reading and writing them, [`memory`] writing RAM.

pub mod files;
pub mod format;
pub mod memory;
pub mod raw;
pub mod state;
pub mod trigger;

use std::path::PathBuf;

pub use files::{load, LoadedSnapshot, SnapshotTarget, MEMORY_FILE, STATE_FILE};
pub use state::{StateError, VmSnapshot};

/// Errors writing or reading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("Cannot create the snapshot directory {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("Cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("Cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("Cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("{path} is not a usable snapshot file")]
    Format {
        path: PathBuf,
        #[source]
        source: format::FormatError,
    },
    #[error("{path} holds an invalid VM state")]
    State {
        path: PathBuf,
        #[source]
        source: StateError,
    },
    #[error("Cannot get random bytes for the snapshot id")]
    Random(#[source] std::io::Error),
}
