//! Building a VM from a snapshot instead of booting it.
//!
//! Order matters, for KVM and for the guest: the files are read and checked before KVM is
//! touched (a bad snapshot fails fast, with the reason); guest RAM is mapped from the
//! memory file; the interrupt controllers and PIT are restored; the vCPUs are created and
//! restored (their LAPICs included); only then are the devices restored, since a restored
//! device may raise an interrupt at once (a vsock transport reset, an unacknowledged
//! interrupt, the UART's pending one) and an interrupt injected before its LAPIC exists
//! and is restored is lost. The kvmclock is set last, just before the vCPUs run
//! ([`Vm::run`]).

use std::sync::mpsc::channel;

use super::build::{
    add_virtio_devices, check_xsave_size, create_vm, legacy_devices, snapshot_support, Parts,
};
use super::{Vm, VmError};
use crate::config::RestoreConfig;
use crate::devices::manager::DeviceManager;
use crate::guest_ram::{self, Backing};
use crate::snapshot::format::MEMORY_DATA_OFFSET;
use crate::snapshot::{self, LoadedSnapshot, SnapshotTarget};
use crate::vcpu::Vcpu;

impl Vm {
    /// Restores the VM saved in `config.restore_from`, with the device backends and
    /// console of `config`. No guest code runs until [`Vm::run`]; when it does, the guest
    /// goes on from where it was stopped.
    pub fn restore(config: &RestoreConfig) -> Result<Self, VmError> {
        config.validate()?;
        let LoadedSnapshot { state, memory } = snapshot::load(&config.restore_from)?;
        if state.vmm_version != husk_version::VERSION {
            tracing::info!(
                "the snapshot was written by {} (this is {}); its format version matches",
                state.vmm_version,
                husk_version::VERSION
            );
        }
        let (kvm, vm_fd) = create_vm()?;
        // Before any vCPU is restored: KVM_SET_XSAVE must not read past `kvm_xsave`.
        check_xsave_size(&kvm)?;
        let memory_bytes = state.memory_bytes;
        // Shared copy-on-write with every VM restored from this file (virtio-fs's backend
        // never maps guest RAM: the relay copies its requests).
        let mem = guest_ram::private_from_file(&memory, MEMORY_DATA_OFFSET, memory_bytes)?;
        let backing = Backing::PrivateFile;
        tracing::debug!(
            "guest memory: {} MiB mapped copy-on-write from {}",
            memory_bytes >> 20,
            config.restore_from.display()
        );
        guest_ram::register(&vm_fd, &mem)?;
        state.vm.restore_devices(&vm_fd)?;

        let vcpus = state
            .vcpus
            .iter()
            .enumerate()
            .map(|(id, saved)| {
                let vcpu = Vcpu::new(&vm_fd, id as u8)?;
                vcpu.restore(saved)?;
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>, VmError>>()?;

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
        devices.restore(&state.devices)?;
        let (tx, events) = channel();
        let (pio, serial, panic) =
            legacy_devices(&vm_fd, &config.console, tx.clone(), Some(&state.serial))?;

        let target = config
            .snapshot_to
            .as_deref()
            .map(|dir| SnapshotTarget::create(dir, memory_bytes))
            .transpose()?;
        let msr_list = snapshot_support(&kvm, target.is_some())?;
        tracing::debug!(
            vcpus = vcpus.len(),
            devices = state.devices.len(),
            "restored from {}",
            config.restore_from.display()
        );
        Self::assemble(Parts {
            kvm,
            vm_fd,
            mem,
            backing,
            memory_bytes,
            devices,
            pio,
            serial,
            panic,
            vcpus,
            events: (tx, events),
            target,
            msr_list,
            restored: Some(state.vm),
        })
    }
}
