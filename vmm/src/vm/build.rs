//! The parts every VM has, booted or restored (the KVM VM, the virtio devices in their
//! fixed order, the legacy port devices, snapshot support), and booting one.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use event_manager::SubscriberOps;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{console_output, Vm, VmError, VmEvent};
use crate::arch::x86_64::vm_state::VmState;
use crate::arch::x86_64::{layout, memory, mptable};
use crate::boot;
use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::bus::Bus;
use crate::devices::legacy::{self, ConsoleSink, GuestPanic, SerialSnapshot, I8042};
use crate::devices::manager::DeviceManager;
use crate::devices::virtio::block::{Block, BlockConfig};
use crate::devices::virtio::fs::{Fs, FsConfig};
use crate::devices::virtio::net::{Net, NetConfig};
use crate::devices::virtio::vsock::{Vsock, VsockConfig};
use crate::guest_ram::{self, Backing};
use crate::snapshot::trigger::SnapshotTrigger;
use crate::snapshot::SnapshotTarget;
use crate::vcpu::pause::PauseControl;
use crate::vcpu::{ExitCounters, Vcpu, VcpuContext, VcpuError};

/// Opens KVM, checks its capabilities and creates a VM with its TSS, in-kernel irqchip and
/// PIT.
pub(super) fn create_vm() -> Result<(Kvm, VmFd), VmError> {
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
    Ok((kvm, vm_fd))
}

/// The virtio devices, in the order that fixes their place: block devices (vda, vdb, ...),
/// vsock, virtio-fs, net (eth0, eth1, ...).
pub(super) fn add_virtio_devices(
    devices: &mut DeviceManager,
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    vsock: &Option<VsockConfig>,
    fs: &[FsConfig],
    block: &[BlockConfig],
    net: &[NetConfig],
) -> Result<(), VmError> {
    for b in block {
        let dev = Block::new(b).map_err(|e| VmError::Block(b.path.display().to_string(), e))?;
        devices.add_virtio(vm_fd, mem, dev)?;
    }
    if let Some(v) = vsock {
        devices.add_virtio(vm_fd, mem, Vsock::new(v).map_err(VmError::Vsock)?)?;
    }
    for f in fs {
        let dev = Fs::new(f).map_err(|e| VmError::Fs(f.tag.clone(), e))?;
        devices.add_virtio(vm_fd, mem, dev)?;
    }
    for (index, n) in net.iter().enumerate() {
        let dev = Net::new(n).map_err(|source| VmError::Net {
            index,
            backend: n.describe(),
            source,
        })?;
        devices.add_virtio(vm_fd, mem, dev)?;
    }
    Ok(())
}

/// The port I/O bus with COM1 (fresh, or in a saved state) and the i8042.
pub(super) fn legacy_devices(
    vm_fd: &VmFd,
    console: &ConsoleConfig,
    events: Sender<VmEvent>,
    saved_serial: Option<&SerialSnapshot>,
) -> Result<(Bus, Arc<Mutex<legacy::Serial>>, GuestPanic), VmError> {
    let panic = GuestPanic::default();
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
    vm_fd
        .register_irqfd(&serial_irq, layout::SERIAL_IRQ)
        .map_err(|e| VmError::Setup("serial irqfd", e))?;
    let sink = ConsoleSink::new(console_output(console)?, panic.clone());
    let serial = match saved_serial {
        Some(saved) => legacy::Serial::restore(saved, serial_irq, sink)?,
        None => legacy::Serial::new(serial_irq, sink),
    };
    let serial = Arc::new(Mutex::new(serial));
    let mut pio = Bus::new();
    pio.insert(
        serial.clone(),
        legacy::SERIAL_PORT_BASE,
        legacy::SERIAL_PORT_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(events))),
        legacy::I8042_PORT_BASE,
        legacy::I8042_PORT_LEN,
    )?;
    Ok((pio, serial, panic))
}

/// What snapshots of this VM need from KVM: the MSRs to save, and an XSAVE area within the
/// 4096 bytes of KVM_GET_XSAVE (larger only with features the VMM would have to enable at
/// run time, which it never does). Checked only when the VM can be snapshotted or is
/// restored; otherwise the list is empty.
pub(super) fn snapshot_support(kvm: &Kvm, needed: bool) -> Result<Vec<u32>, VmError> {
    if !needed {
        return Ok(Vec::new());
    }
    check_xsave_size(kvm)?;
    let list = kvm.get_msr_index_list().map_err(VmError::MsrList)?;
    Ok(list.as_slice().to_vec())
}

pub(super) fn check_xsave_size(kvm: &Kvm) -> Result<(), VmError> {
    let size = kvm.check_extension_int(Cap::Xsave2);
    if size > 4096 {
        return Err(VmError::XsaveSize(size));
    }
    Ok(())
}

/// Everything [`Vm`] is made of, booted or restored.
pub(super) struct Parts {
    pub kvm: Kvm,
    pub vm_fd: VmFd,
    pub mem: GuestMemoryMmap,
    pub backing: Backing,
    pub memory_bytes: u64,
    pub devices: DeviceManager,
    pub pio: Bus,
    pub serial: Arc<Mutex<legacy::Serial>>,
    pub panic: GuestPanic,
    pub vcpus: Vec<Vcpu>,
    pub events: (Sender<VmEvent>, std::sync::mpsc::Receiver<VmEvent>),
    pub target: Option<SnapshotTarget>,
    pub msr_list: Vec<u32>,
    pub restored: Option<VmState>,
}

impl Vm {
    pub(super) fn assemble(parts: Parts) -> Result<Self, VmError> {
        let Parts {
            kvm,
            vm_fd,
            mem,
            backing,
            memory_bytes,
            mut devices,
            pio,
            serial,
            panic,
            vcpus,
            events: (tx, events),
            target,
            msr_list,
            restored,
        } = parts;
        let trigger = SnapshotTrigger::install(tx.clone(), target.is_some())?;
        devices
            .event_manager
            .add_subscriber(Arc::new(Mutex::new(trigger)));
        let placed = devices.devices();
        Ok(Self {
            _kvm: kvm,
            vm_fd,
            mem,
            backing,
            memory_bytes,
            vcpus,
            ctx: VcpuContext {
                pio: Arc::new(pio),
                mmio: Arc::new(devices.mmio),
                events: tx,
                exits: Arc::new(ExitCounters::default()),
                pause: Arc::new(PauseControl::new(msr_list)),
            },
            events,
            serial,
            panic,
            event_manager: devices.event_manager,
            devices: placed,
            target,
            restored,
        })
    }

    /// Validates `config`, creates the VM, loads the guest and configures the vCPUs. No
    /// guest code runs until [`Vm::run`].
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        config.validate()?;
        let (kvm, vm_fd) = create_vm()?;
        let memory_bytes = config.memory_bytes();
        let mem = guest_ram::shared(memory_bytes)?;
        guest_ram::register(&vm_fd, &mem)?;
        let mut devices = DeviceManager::new()?;
        add_virtio_devices(
            &mut devices,
            &vm_fd,
            &mem,
            &config.vsock,
            &config.fs,
            &config.block,
            &config.net,
        )?;

        // Guest image: kernel, initramfs, command line, zero page, MP table.
        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let low_end = memory::low_ram_end(memory_bytes);
        let initramfs = match &config.initramfs {
            Some(path) => Some(boot::load_initramfs(&mem, path, &kernel, low_end)?),
            None => None,
        };
        let cmdline = boot::build_cmdline(&format!("{} {}", devices.cmdline(), config.cmdline))?;
        let params = boot::build_boot_params(
            kernel.setup_header,
            cmdline.len() + 1,
            initramfs,
            &memory::e820_map(memory_bytes),
        );
        boot::write_boot_data(&mem, &cmdline, &params)?;
        mem.write_slice(
            &mptable::build(config.vcpus)?,
            GuestAddress(mptable::MPTABLE_START),
        )
        .map_err(VmError::GuestMemory)?;
        tracing::debug!(entry = format!("{:#x}", kernel.entry), %cmdline, "guest loaded");

        let (tx, events) = channel();
        let (pio, serial, panic) = legacy_devices(&vm_fd, &config.console, tx.clone(), None)?;
        let vcpus = (0..config.vcpus)
            .map(|id| {
                let vcpu = Vcpu::new(&vm_fd, id)?;
                vcpu.configure(&kvm, &mem, config.vcpus, kernel.entry)?;
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>, VcpuError>>()?;
        let target = config
            .snapshot_to
            .as_deref()
            .map(|dir| SnapshotTarget::create(dir, memory_bytes))
            .transpose()?;
        let msr_list = snapshot_support(&kvm, target.is_some())?;
        Self::assemble(Parts {
            kvm,
            vm_fd,
            mem,
            backing: Backing::SharedMemfd,
            memory_bytes,
            devices,
            pio,
            serial,
            panic,
            vcpus,
            events: (tx, events),
            target,
            msr_list,
            restored: None,
        })
    }
}
