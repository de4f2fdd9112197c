//! Taking a snapshot of the running VM, on the main thread, while the event loop is
//! parked (see `snapshot::trigger`): stop the vCPUs and take their state, then the
//! interrupt controllers, PIT and clock, the devices and the serial port, and write it
//! all with guest RAM.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::vm_state::{VmState, VmStateError};
use crate::devices::legacy;
use crate::devices::manager::PlacedDevices;
use crate::devices::state_dump;
use crate::guest_ram::Backing;
use crate::snapshot::raw::Raw;
use crate::snapshot::{SnapshotError, SnapshotTarget, VmSnapshot};
use crate::vcpu::pause::{PauseControl, PauseError};

/// How long the vCPUs get to stop (generous: under emulation a kick can take a while).
const PAUSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a snapshot was not taken (the VM goes on).
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("Cannot stop the vCPUs")]
    Pause(#[from] PauseError),
    #[error("Cannot save the VM's KVM state")]
    Vm(#[from] VmStateError),
    #[error("Cannot save a device: {0}")]
    Device(String),
    #[error("Cannot write the snapshot")]
    Write(#[from] SnapshotError),
}

/// What a snapshot reads.
pub(super) struct Parts<'a> {
    pub vm_fd: &'a VmFd,
    pub mem: &'a GuestMemoryMmap,
    pub backing: Backing,
    pub memory_bytes: u64,
    pub vcpus: usize,
    pub pause: &'a PauseControl,
    pub devices: &'a PlacedDevices,
    pub serial: &'a Arc<Mutex<legacy::Serial>>,
    pub target: &'a SnapshotTarget,
}

/// Takes the snapshot. On success the vCPUs stay stopped; on an error the caller resumes
/// them.
pub(super) fn take(p: &Parts) -> Result<(), TakeError> {
    let start = Instant::now();
    let vcpus = p
        .pause
        .pause_all(p.vcpus, PAUSE_TIMEOUT, state_dump::kick_vcpus)?;
    let paused = start.elapsed();
    let snapshot = VmSnapshot {
        id: Raw(p.target.id()),
        vmm_version: husk_version::VERSION.to_owned(),
        memory_bytes: p.memory_bytes,
        vcpus,
        vm: VmState::save(p.vm_fd)?,
        serial: p.serial.lock().unwrap_or_else(|e| e.into_inner()).save(),
        devices: p.devices.save().map_err(TakeError::Device)?,
    };
    let written = p.target.write(&snapshot, p.mem, p.backing)?;
    tracing::info!(
        "snapshot written to {}: {} vCPUs stopped in {paused:?}, {} of {} MiB of guest memory \
         written ({} MiB looked at), {:?} in all",
        p.target.dir().display(),
        p.vcpus,
        mib(written.written),
        p.memory_bytes >> 20,
        mib(written.scanned),
        start.elapsed()
    );
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}
