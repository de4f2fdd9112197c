//! Building a VM from its configuration and running it to its end.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use event_manager::EventManager;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{layout, memory, mptable};
use crate::boot;
use crate::config::{ConfigError, ConsoleConfig, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::{self, ConsoleSink, GuestPanic, I8042};
use crate::devices::manager::{DeviceManager, DeviceManagerError, Subscriber};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::seccomp::{self, Seccomp, SeccompError, StartGate, ThreadClass};
use crate::vcpu::{ExitCounters, Vcpu, VcpuContext, VcpuError};

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
    #[error("Cannot allocate {0} MiB of guest memory")]
    Memory(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("Cannot create the guest memory file")]
    MemoryFile(#[source] std::io::Error),
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
}

impl VmExit {
    /// The process exit code for this outcome (documented in the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::PowerOff => 0,
            VmExit::Panic(_) => 2,
            VmExit::Crash(_) => 3,
        }
    }
}

/// A VM ready to run.
pub struct Vm {
    _kvm: Kvm,
    vm_fd: VmFd,
    _mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    ctx: VcpuContext,
    events: Receiver<VmEvent>,
    serial: Arc<Mutex<legacy::Serial>>,
    panic: GuestPanic,
    event_manager: EventManager<Subscriber>,
}

impl Vm {
    /// Validates `config`, creates the VM, loads the guest and configures the vCPUs. No
    /// guest code runs until [`Vm::run`].
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        config.validate()?;
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        for cap in [
            Cap::Irqchip,
            Cap::Irqfd,
            Cap::Ioeventfd,
            Cap::UserMemory,
            Cap::SetTssAddr,
            Cap::Pit2,
            Cap::ExtCpuid,
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(cap));
            }
        }
        let vm_fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        vm_fd
            .set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Setup("tss address", e))?;
        vm_fd
            .create_irq_chip()
            .map_err(|e| VmError::Setup("irqchip", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(|e| VmError::Setup("pit", e))?;

        let mem = create_memory(&vm_fd, config.memory_bytes())?;
        let mut devices = DeviceManager::new()?;
        // Block devices first: the guest names them vda, vdb, ... in this order.
        for block in &config.block {
            let dev = Block::new(block)
                .map_err(|e| VmError::Block(block.path.display().to_string(), e))?;
            devices.add_virtio(&vm_fd, &mem, dev)?;
        }
        if let Some(vsock) = &config.vsock {
            devices.add_virtio(&vm_fd, &mem, Vsock::new(vsock).map_err(VmError::Vsock)?)?;
        }
        for fs in &config.fs {
            let dev = Fs::new(fs).map_err(|e| VmError::Fs(fs.tag.clone(), e))?;
            devices.add_virtio(&vm_fd, &mem, dev)?;
        }
        // Net devices: eth0, eth1, ... in this order.
        for (index, net) in config.net.iter().enumerate() {
            let dev = Net::new(net).map_err(|source| VmError::Net {
                index,
                backend: net.describe(),
                source,
            })?;
            devices.add_virtio(&vm_fd, &mem, dev)?;
        }

        // Guest image: kernel, initramfs, command line, zero page, MP table.
        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let low_end = memory::low_ram_end(config.memory_bytes());
        let initramfs = match &config.initramfs {
            Some(path) => Some(boot::load_initramfs(&mem, path, &kernel, low_end)?),
            None => None,
        };
        let cmdline = boot::build_cmdline(&format!("{} {}", devices.cmdline(), config.cmdline))?;
        let params = boot::build_boot_params(
            kernel.setup_header,
            cmdline.len() + 1,
            initramfs,
            &memory::e820_map(config.memory_bytes()),
        );
        boot::write_boot_data(&mem, &cmdline, &params)?;
        mem.write_slice(
            &mptable::build(config.vcpus)?,
            GuestAddress(mptable::MPTABLE_START),
        )
        .map_err(VmError::GuestMemory)?;
        tracing::debug!(entry = format!("{:#x}", kernel.entry), %cmdline, "guest loaded");

        // Devices.
        let (tx, events) = channel();
        let panic = GuestPanic::default();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm_fd
            .register_irqfd(&serial_irq, layout::SERIAL_IRQ)
            .map_err(|e| VmError::Setup("serial irqfd", e))?;
        let sink = ConsoleSink::new(console_output(&config.console)?, panic.clone());
        let serial = Arc::new(Mutex::new(legacy::Serial::new(serial_irq, sink)));
        let mut pio = Bus::new();
        pio.insert(
            serial.clone(),
            legacy::SERIAL_PORT_BASE,
            legacy::SERIAL_PORT_LEN,
        )?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(tx.clone()))),
            legacy::I8042_PORT_BASE,
            legacy::I8042_PORT_LEN,
        )?;

        let vcpus = (0..config.vcpus)
            .map(|id| {
                let vcpu = Vcpu::new(&vm_fd, id)?;
                vcpu.configure(&kvm, &mem, config.vcpus, kernel.entry)?;
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>, VcpuError>>()?;

        Ok(Self {
            _kvm: kvm,
            vm_fd,
            _mem: mem,
            vcpus,
            ctx: VcpuContext {
                pio: Arc::new(pio),
                mmio: Arc::new(devices.mmio),
                events: tx,
                exits: Arc::new(ExitCounters::default()),
            },
            events,
            serial,
            panic,
            event_manager: devices.event_manager,
        })
    }

    /// Runs the guest until it powers off, panics or crashes. With [`Seccomp::On`] every
    /// thread (vCPUs, `vmm-events`, this one) is filtered before the guest's first
    /// instruction; `selftest` then makes a forbidden call on this thread
    /// ([`seccomp::forbidden_call`]), which kills the process.
    pub fn run(self, seccomp: Seccomp, selftest: bool) -> Result<(VmExit, RunStats), VmError> {
        let Vm {
            vm_fd,
            vcpus,
            ctx,
            events,
            serial,
            panic,
            mut event_manager,
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
        for vcpu in vcpus {
            // The threads are not joined: a stopped VM ends the process, which ends them.
            vcpu.spawn(ctx.clone(), gate.thread())?;
        }
        gate.open()?;
        if selftest {
            let ppid = seccomp::forbidden_call();
            tracing::warn!("seccomp selftest: getppid() returned {ppid}: no filter stopped it");
        }
        let event = recv_event(&events, &ctx.events);
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
        };
        let stats = RunStats {
            vmm_exits: ctx.exits.total(),
            kvm_exits: kvm_exits.and_then(read_count),
        };
        Ok((exit, stats))
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
#[derive(Debug, Clone, Copy)]
pub struct RunStats {
    /// Exits that came back to the VMM (port I/O, MMIO, system events).
    pub vmm_exits: u64,
    /// All VM exits as KVM counts them (from debugfs, where it is mounted).
    pub kvm_exits: Option<u64>,
}

/// Guest RAM is one shared memfd, mapped region by region, so that vhost-user backends
/// (virtiofsd) can map the same pages.
fn create_memory(vm_fd: &VmFd, size: u64) -> Result<GuestMemoryMmap, VmError> {
    let file = memfd(size).map_err(VmError::MemoryFile)?;
    let mut offset = 0;
    let mut ranges = Vec::new();
    for (start, len) in memory::ram_ranges(size) {
        let fd = file.try_clone().map_err(VmError::MemoryFile)?;
        ranges.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::new(fd, offset)),
        ));
        offset += len;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files(ranges)
        .map_err(|e| VmError::Memory(size >> 20, e))?;
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem` of exactly `memory_size`
        // bytes, and `mem` outlives the VM: `Vm` keeps it until the process exits.
        unsafe { vm_fd.set_user_memory_region(region_desc) }
            .map_err(|e| VmError::Setup("memory region", e))?;
    }
    Ok(mem)
}

fn memfd(size: u64) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a NUL-terminated string; the call only creates a new fd.
    let fd = unsafe { libc::memfd_create(c"husk-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new file descriptor that nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

fn console_output(console: &ConsoleConfig) -> Result<Option<Box<dyn Write + Send>>, VmError> {
    Ok(match console {
        ConsoleConfig::Stdout => Some(Box::new(std::io::stdout())),
        ConsoleConfig::Off => None,
        ConsoleConfig::File(path) => Some(Box::new(
            OpenOptions::new()
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
        assert_eq!(VmExit::Panic("x".into()).exit_code(), 2);
        assert_eq!(VmExit::Crash("x".into()).exit_code(), 3);
    }
}
