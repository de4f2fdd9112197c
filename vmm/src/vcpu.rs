//! One vCPU: its boot-time configuration and the thread that runs it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use kvm_bindings::{kvm_sregs, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::vm::VmEvent;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("Cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("Cannot get the CPUID KVM supports")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("Cannot build the CPUID table")]
    CpuidTable,
    #[error("Cannot configure vCPU {cpu} ({what})")]
    Configure {
        cpu: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {wanted} boot MSRs on vCPU {cpu}")]
    Msrs { cpu: u8, set: usize, wanted: usize },
    #[error("Cannot set up boot registers")]
    Regs(#[from] regs::RegsError),
    #[error("Cannot spawn the thread for vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
}

/// Counts of the exits that reach the VMM (exits KVM handles itself are not seen here).
#[derive(Default, Debug)]
pub struct ExitCounters {
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    pub other: AtomicU64,
}

impl ExitCounters {
    pub fn total(&self) -> u64 {
        self.io.load(Ordering::Relaxed)
            + self.mmio.load(Ordering::Relaxed)
            + self.other.load(Ordering::Relaxed)
    }
}

/// What a vCPU thread shares with the rest of the VM.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub events: Sender<VmEvent>,
    pub exits: Arc<ExitCounters>,
}

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &VmFd, id: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create(id, e))?;
        Ok(Self { id, fd })
    }

    /// CPUID, MSRs, FPU and LAPIC for every vCPU; long-mode registers for the boot CPU,
    /// which enters the kernel at `entry` (the others wait for INIT/SIPI in the LAPIC).
    pub fn configure(
        &self,
        kvm: &Kvm,
        mem: &GuestMemoryMmap,
        count: u8,
        entry: u64,
    ) -> Result<(), VcpuError> {
        let cfg = |what| {
            let cpu = self.id;
            move |source| VcpuError::Configure { cpu, what, source }
        };
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VcpuError::SupportedCpuid)?;
        let mut entries = supported.as_slice().to_vec();
        cpuid::patch(&mut entries, self.id, count);
        let table = CpuId::from_entries(&entries).map_err(|_| VcpuError::CpuidTable)?;
        self.fd.set_cpuid2(&table).map_err(cfg("cpuid"))?;

        let msr_entries = regs::boot_msr_entries();
        let msrs = Msrs::from_entries(&msr_entries).map_err(|_| VcpuError::CpuidTable)?;
        let set = self.fd.set_msrs(&msrs).map_err(cfg("msrs"))?;
        if set != msr_entries.len() {
            return Err(VcpuError::Msrs {
                cpu: self.id,
                set,
                wanted: msr_entries.len(),
            });
        }
        self.fd.set_fpu(&regs::boot_fpu()).map_err(cfg("fpu"))?;
        let mut lapic = self.fd.get_lapic().map_err(cfg("get lapic"))?;
        regs::setup_lapic(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(cfg("set lapic"))?;

        if self.id == 0 {
            let mut sregs: kvm_sregs = self.fd.get_sregs().map_err(cfg("get sregs"))?;
            regs::setup_sregs(mem, &mut sregs)?;
            self.fd.set_sregs(&sregs).map_err(cfg("sregs"))?;
            self.fd
                .set_regs(&regs::boot_regs(entry))
                .map_err(cfg("regs"))?;
        }
        Ok(())
    }

    /// Runs the vCPU on a thread named `vcpu<N>` until the guest stops or fails.
    pub fn spawn(mut self, ctx: VcpuContext) -> Result<std::thread::JoinHandle<()>, VcpuError> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let event = self.run_loop(&ctx);
                let _ = ctx.events.send(event);
            })
            .map_err(|e| VcpuError::Spawn(id, e))
    }

    fn run_loop(&mut self, ctx: &VcpuContext) -> VmEvent {
        loop {
            match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoOut(port, data) => {
                        ctx.exits.io.fetch_add(1, Ordering::Relaxed);
                        // Writes to ports with no device (POST code 0x80, absent UARTs and
                        // PCI config) are dropped, as on real hardware.
                        ctx.pio.write(u64::from(port), data);
                    }
                    VcpuExit::IoIn(port, data) => {
                        ctx.exits.io.fetch_add(1, Ordering::Relaxed);
                        if !ctx.pio.read(u64::from(port), data) {
                            data.fill(0xff);
                        }
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        ctx.exits.mmio.fetch_add(1, Ordering::Relaxed);
                        if !ctx.mmio.read(addr, data) {
                            data.fill(0xff);
                        }
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        ctx.exits.mmio.fetch_add(1, Ordering::Relaxed);
                        ctx.mmio.write(addr, data);
                    }
                    VcpuExit::Shutdown => {
                        return VmEvent::TripleFault { cpu: self.id };
                    }
                    VcpuExit::SystemEvent(kind, _) => {
                        ctx.exits.other.fetch_add(1, Ordering::Relaxed);
                        return match kind {
                            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN
                            | kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmEvent::Reset,
                            other => VmEvent::Failed {
                                cpu: self.id,
                                reason: format!("unexpected KVM system event {other}"),
                            },
                        };
                    }
                    VcpuExit::Hlt => {
                        // Only seen without an in-kernel irqchip: a halted CPU with
                        // nothing to wake it.
                        return VmEvent::Failed {
                            cpu: self.id,
                            reason: "vCPU halted with interrupts off".into(),
                        };
                    }
                    VcpuExit::FailEntry(reason, cpu) => {
                        return VmEvent::Failed {
                            cpu: self.id,
                            reason: format!(
                                "KVM entry failed: hardware reason {reason:#x} on cpu {cpu}"
                            ),
                        };
                    }
                    VcpuExit::InternalError => {
                        return VmEvent::Failed {
                            cpu: self.id,
                            reason: "KVM internal error (emulation failure)".into(),
                        };
                    }
                    other => {
                        ctx.exits.other.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(cpu = self.id, "ignored vCPU exit {other:?}");
                    }
                },
                Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => {}
                Err(e) => {
                    return VmEvent::Failed {
                        cpu: self.id,
                        reason: format!("KVM_RUN failed: {e}"),
                    }
                }
            }
        }
    }
}
