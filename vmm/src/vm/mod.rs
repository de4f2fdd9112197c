//! Building a VM (booting it from its configuration, `build`, or restoring it from a
//! snapshot, `restore`) and running it to its end, which a snapshot (`snapshot`) may be.

mod build;
mod restore;
mod snapshot;

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use event_manager::EventManager;
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::mptable;
use crate::arch::x86_64::vcpu_state::VcpuStateError;
use crate::arch::x86_64::vm_state::{VmState, VmStateError};
use crate::boot;
use crate::config::{ConfigError, ConsoleConfig};
use crate::devices::bus::BusError;
use crate::devices::legacy::serial::SerialRestoreError;
use crate::devices::legacy::{self, GuestPanic};
use crate::devices::manager::{DeviceManagerError, DeviceRestoreError, PlacedDevices, Subscriber};
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::fs::FsError;
use crate::devices::virtio::net::NetError;
use crate::devices::virtio::vsock::VsockError;
use crate::guest_ram::{Backing, GuestRamError};
use crate::seccomp::{self, Seccomp, SeccompError, StartGate, ThreadClass};
use crate::snapshot::trigger::TriggerError;
use crate::snapshot::{SnapshotError, SnapshotTarget};
use crate::vcpu::{Vcpu, VcpuContext, VcpuError};

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Invalid configuration")]
    Config(#[from] ConfigError),
    #[error("Cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error("KVM lacks a capability husk needs: {0:?}")]
    MissingCap(Cap),
    #[error("Cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("Cannot set up the VM ({0})")]
    Setup(&'static str, #[source] kvm_ioctls::Error),
    #[error("Cannot set up guest memory")]
    Ram(#[from] GuestRamError),
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    #[error("Cannot set up the block device {0}")]
    Block(String, #[source] BlockError),
    #[error("Cannot set up net device {index} ({backend})")]
    Net {
        index: usize,
        backend: String,
        #[source]
        source: NetError,
    },
    #[error("Cannot set up the vsock device")]
    Vsock(#[source] VsockError),
    #[error("Cannot set up the virtio-fs device {0:?}")]
    Fs(String, #[source] FsError),
    #[error("Cannot start the device event loop thread")]
    EventThread(#[source] std::io::Error),
    #[error("Cannot write the MP table")]
    Mptable(#[from] mptable::MptableError),
    #[error("Cannot write to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    #[error("Cannot load the guest")]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("Cannot open the console output {0}")]
    ConsoleFile(String, #[source] std::io::Error),
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("Cannot place a device")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("Cannot use the snapshot")]
    Snapshot(#[from] SnapshotError),
    #[error("Cannot arm snapshots")]
    Trigger(#[from] TriggerError),
    #[error("Cannot get the list of MSRs to save (KVM_GET_MSR_INDEX_LIST)")]
    MsrList(#[source] kvm_ioctls::Error),
    #[error("KVM's XSAVE area is {0} bytes (features enabled at run time); snapshots handle 4096")]
    XsaveSize(i32),
    #[error("Cannot restore the vCPUs")]
    VcpuState(#[from] VcpuStateError),
    #[error("Cannot restore the interrupt controllers, PIT or clock")]
    VmState(#[from] VmStateError),
    #[error("The configured devices do not fit the snapshot")]
    DeviceRestore(#[from] DeviceRestoreError),
    #[error("Cannot restore the serial port")]
    Serial(#[from] SerialRestoreError),
}

/// What the vCPUs and devices tell the run loop.
#[derive(Debug)]
pub enum VmEvent {
    /// The guest reset the machine through the i8042 (its way to power off).
    Reset,
    /// A vCPU triple-faulted.
    TripleFault { cpu: u8, at: String },
    /// KVM could not run a vCPU.
    Failed { cpu: u8, reason: String },
    /// SIGUSR2: snapshot now. The event loop is parked until the sender is dropped.
    Snapshot(Sender<()>),
}

/// How the guest ended.
#[derive(Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (reset through the i8042 with no panic on the console).
    PowerOff,
    /// The guest kernel panicked, with the reason it printed.
    Panic(String),
    /// The guest crashed: a triple fault or a KVM failure.
    Crash(String),
    /// The VM was snapshotted into this directory (and stopped there).
    Snapshotted(PathBuf),
}

impl VmExit {
    /// The process exit code for this outcome (documented in the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::PowerOff | VmExit::Snapshotted(_) => 0,
            VmExit::Panic(_) => 2,
            VmExit::Crash(_) => 3,
        }
    }
}

/// A VM ready to run.
pub struct Vm {
    _kvm: Kvm,
    vm_fd: VmFd,
    mem: GuestMemoryMmap,
    backing: Backing,
    memory_bytes: u64,
    vcpus: Vec<Vcpu>,
    ctx: VcpuContext,
    events: Receiver<VmEvent>,
    serial: Arc<Mutex<legacy::Serial>>,
    panic: GuestPanic,
    event_manager: EventManager<Subscriber>,
    devices: PlacedDevices,
    target: Option<SnapshotTarget>,
    /// A restored VM's saved state, whose kvmclock is set just before the vCPUs run.
    restored: Option<VmState>,
}

impl Vm {
    /// Runs the guest until it powers off, panics, crashes or is snapshotted. With
    /// [`Seccomp::On`] every thread (vCPUs, `vmm-events`, this one) is filtered before the
    /// guest's first instruction; `selftest` then makes a forbidden call on this thread
    /// ([`seccomp::forbidden_call`]), which kills the process.
    pub fn run(self, seccomp: Seccomp, selftest: bool) -> Result<(VmExit, RunStats), VmError> {
        let Vm {
            vm_fd,
            mem,
            backing,
            memory_bytes,
            vcpus,
            ctx,
            events,
            serial,
            panic,
            mut event_manager,
            devices,
            target,
            restored,
            ..
        } = self;
        // Opened now: no file can be opened once the filters are on.
        let kvm_exits = kvm_debugfs_exits_file(&vm_fd);
        let gate = StartGate::new(seccomp, vcpus.len() + 1);
        // Device work (queues, backends) runs on one thread of its own.
        let start = gate.thread();
        std::thread::Builder::new()
            .name("vmm-events".into())
            .spawn(move || {
                if !start.enter(ThreadClass::Events) {
                    return;
                }
                loop {
                    if let Err(e) = event_manager.run() {
                        tracing::error!("device event loop failed: {e}");
                        return;
                    }
                }
            })
            .map_err(VmError::EventThread)?;
        if let Some(saved) = &restored {
            saved.restore_clock(&vm_fd)?;
        }
        let vcpu_count = vcpus.len();
        for vcpu in vcpus {
            // The threads are not joined: a stopped VM ends the process, which ends them.
            vcpu.spawn(ctx.clone(), gate.thread())?;
        }
        gate.open()?;
        if selftest {
            let ppid = seccomp::forbidden_call();
            tracing::warn!("seccomp selftest: getppid() returned {ppid}: no filter stopped it");
        }
        let stats = || RunStats {
            vmm_exits: ctx.exits.total(),
            kvm_exits: None,
            breakdown: ctx.exits.breakdown_json(),
        };
        let event = loop {
            match recv_event(&events, &ctx.events) {
                VmEvent::Snapshot(parked) => {
                    let Some(target) = &target else {
                        continue;
                    };
                    let parts = snapshot::Parts {
                        vm_fd: &vm_fd,
                        mem: &mem,
                        backing,
                        memory_bytes,
                        vcpus: vcpu_count,
                        pause: &ctx.pause,
                        devices: &devices,
                        serial: &serial,
                        target,
                    };
                    match snapshot::take(&parts) {
                        Ok(()) => {
                            // The event loop stays parked, the vCPUs stopped, until the
                            // process ends.
                            std::mem::forget(parked);
                            serial.lock().unwrap_or_else(|e| e.into_inner()).finish();
                            let mut s = stats();
                            s.kvm_exits = kvm_exits.and_then(read_count);
                            return Ok((VmExit::Snapshotted(target.dir().to_owned()), s));
                        }
                        Err(e) => {
                            tracing::error!("snapshot failed, the VM goes on: {e:#}");
                            ctx.pause.resume();
                            drop(parked);
                        }
                    }
                }
                other => break other,
            }
        };
        serial.lock().unwrap_or_else(|e| e.into_inner()).finish();
        let exit = match event {
            VmEvent::Reset => match panic.get() {
                Some(reason) => VmExit::Panic(reason),
                None => VmExit::PowerOff,
            },
            VmEvent::TripleFault { cpu, at } => VmExit::Crash(match panic.get() {
                Some(reason) => {
                    format!("triple fault on vCPU {cpu} ({at}) after kernel panic: {reason}")
                }
                None => format!("triple fault on vCPU {cpu} ({at})"),
            }),
            VmEvent::Failed { cpu, reason } => VmExit::Crash(format!("vCPU {cpu}: {reason}")),
            VmEvent::Snapshot(_) => unreachable!("handled in the loop above"),
        };
        let mut s = stats();
        s.kvm_exits = kvm_exits.and_then(read_count);
        Ok((exit, s))
    }
}

fn recv_event(events: &Receiver<VmEvent>, _keepalive: &Sender<VmEvent>) -> VmEvent {
    // The run loop holds a sender itself, so `recv` cannot fail with all senders gone.
    events.recv().unwrap_or(VmEvent::Failed {
        cpu: 0,
        reason: "all vCPU threads ended".into(),
    })
}

/// Counters from one run.
#[derive(Debug, Clone)]
pub struct RunStats {
    /// Exits that came back to the VMM (port I/O, MMIO, system events).
    pub vmm_exits: u64,
    /// All VM exits as KVM counts them (from debugfs, where it is mounted).
    pub kvm_exits: Option<u64>,
    /// The VMM's exits by kind and port class, as JSON (`ExitCounters::breakdown_json`).
    pub breakdown: String,
}

fn console_output(console: &ConsoleConfig) -> Result<Option<Box<dyn Write + Send>>, VmError> {
    Ok(match console {
        ConsoleConfig::Stdout => Some(Box::new(std::io::stdout())),
        ConsoleConfig::Off => None,
        ConsoleConfig::File(path) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| VmError::ConsoleFile(path.display().to_string(), e))?,
        )),
    })
}

/// KVM's own count of VM exits for this VM: debugfs has a `<pid>-<vm fd>` directory per VM.
/// The count is formatted when the file is first read, so it is opened early and read late.
fn kvm_debugfs_exits_file(vm_fd: &VmFd) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = format!(
        "/sys/kernel/debug/kvm/{}-{}/exits",
        std::process::id(),
        vm_fd.as_raw_fd()
    );
    std::fs::File::open(path).ok()
}

/// One read(2) into a fixed buffer (`read_to_string` would also fstat and lseek).
fn read_count(mut file: std::fs::File) -> Option<u64> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    let n = file.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(VmExit::PowerOff.exit_code(), 0);
        assert_eq!(VmExit::Snapshotted("/s".into()).exit_code(), 0);
        assert_eq!(VmExit::Panic("x".into()).exit_code(), 2);
        assert_eq!(VmExit::Crash("x".into()).exit_code(), 3);
    }
}
