//! One vCPU: its boot-time configuration (or a snapshot's state) and the thread that runs
//! it, which stops at a clean point when a snapshot asks (`pause`).

pub mod pause;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use kvm_bindings::{kvm_sregs, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use self::pause::PauseControl;
use crate::arch::x86_64::vcpu_state::{VcpuState, VcpuStateError};
use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::seccomp::{ThreadClass, ThreadStart};
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

/// Counts of the exits that reach the VMM (exits KVM handles itself are not seen here),
/// port I/O by the device behind the port (where a cold boot's time goes: issue 17).
#[derive(Default, Debug)]
pub struct ExitCounters {
    pub io: AtomicU64,
    pub io_by_class: [AtomicU64; PORT_CLASSES.len()],
    pub mmio: AtomicU64,
    pub other: AtomicU64,
}

/// The port classes counted apart, in `io_by_class` order (the last: every other port).
pub const PORT_CLASSES: [&str; 7] = [
    "serial",
    "i8042",
    "rtc",
    "pci_config",
    "post",
    "other_uarts",
    "other_ports",
];

/// The index in [`PORT_CLASSES`] of the device class of `port`.
pub fn port_class(port: u16) -> usize {
    match port {
        0x3f8..=0x3ff => 0,
        0x60 | 0x64 => 1,
        0x70..=0x71 => 2,
        0xcf8..=0xcff => 3,
        0x80 => 4,
        0x2f8..=0x2ff | 0x3e8..=0x3ef | 0x2e8..=0x2ef => 5,
        _ => 6,
    }
}

impl ExitCounters {
    pub fn total(&self) -> u64 {
        self.io.load(Ordering::Relaxed)
            + self.mmio.load(Ordering::Relaxed)
            + self.other.load(Ordering::Relaxed)
    }

    fn port(&self, port: u16) {
        self.io.fetch_add(1, Ordering::Relaxed);
        self.io_by_class[port_class(port)].fetch_add(1, Ordering::Relaxed);
    }

    /// `{"io":{"serial":N,...},"mmio":N,"other":N}`: the exits by kind, as JSON.
    pub fn breakdown_json(&self) -> String {
        let io: Vec<String> = PORT_CLASSES
            .iter()
            .zip(&self.io_by_class)
            .map(|(name, n)| format!("\"{name}\":{}", n.load(Ordering::Relaxed)))
            .collect();
        format!(
            "{{\"io\":{{{}}},\"mmio\":{},\"other\":{}}}",
            io.join(","),
            self.mmio.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed)
        )
    }
}

/// What a vCPU thread shares with the rest of the VM.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub events: Sender<VmEvent>,
    pub exits: Arc<ExitCounters>,
    pub pause: Arc<PauseControl>,
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
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        cpuid::patch(&mut entries, self.id, count, tsc_deadline);
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

    /// Puts a snapshot's state into this new vCPU (instead of [`Vcpu::configure`]).
    pub fn restore(&self, state: &VcpuState) -> Result<(), VcpuStateError> {
        state.restore(&self.fd, self.id)
    }

    /// On the vCPU thread, asked to pause: completes the access the vCPU last exited for
    /// (KVM_RUN with `immediate_exit` finishes that instruction and returns EINTR without
    /// entering the guest; finishing it may need one more port or MMIO access, served
    /// here), then saves the state and waits.
    fn pause(&mut self, ctx: &VcpuContext) {
        for _ in 0..16 {
            self.fd.set_kvm_immediate_exit(1);
            let done = match self.fd.run() {
                Ok(exit) => match handle_io(exit, ctx) {
                    Ok(()) => false,
                    Err(other) => {
                        tracing::warn!(cpu = self.id, "exit {other:?} while pausing");
                        true
                    }
                },
                Err(e) if e.errno() == libc::EINTR => true,
                Err(e) => {
                    tracing::warn!(cpu = self.id, "KVM_RUN while pausing: {e}");
                    true
                }
            };
            self.fd.set_kvm_immediate_exit(0);
            if done {
                break;
            }
        }
        let (id, fd) = (self.id, &self.fd);
        ctx.pause.park(id, |msrs| VcpuState::save(fd, id, msrs));
    }

    /// Runs the vCPU on a thread named `vcpu<N>` until the guest stops or fails; the
    /// thread installs the vCPU seccomp filter and waits at the start gate first.
    pub fn spawn(
        mut self,
        ctx: VcpuContext,
        start: ThreadStart,
    ) -> Result<std::thread::JoinHandle<()>, VcpuError> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                if !start.enter(ThreadClass::Vcpu) {
                    return;
                }
                let _kickable = crate::devices::state_dump::register_vcpu_thread(id);
                let event = self.run_loop(&ctx);
                let _ = ctx.events.send(event);
            })
            .map_err(|e| VcpuError::Spawn(id, e))
    }

    fn run_loop(&mut self, ctx: &VcpuContext) -> VmEvent {
        let mut dumped = crate::devices::state_dump::generation();
        // A kick that lands between this check and KVM_RUN is answered at the vCPU's next
        // exit (or the next SIGUSR1). Setting kvm_run.immediate_exit from the kick handler
        // would close that gap, but tried under the emulated test host it left vCPU 0
        // unanswered and the test host frozen; not understood yet, so not done.
        loop {
            let asked = crate::devices::state_dump::generation();
            if asked != dumped {
                dumped = asked;
                self.log_state();
            }
            if ctx.pause.is_requested() {
                self.pause(ctx);
            }
            match self.fd.run() {
                Ok(exit) => match handle_io(exit, ctx) {
                    Ok(()) => {}
                    Err(VcpuExit::Shutdown) => {
                        return VmEvent::TripleFault {
                            cpu: self.id,
                            at: self.registers_line(),
                        };
                    }
                    Err(VcpuExit::SystemEvent(kind, _)) => {
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
                    Err(VcpuExit::Hlt) => {
                        // Only seen without an in-kernel irqchip: a halted CPU with
                        // nothing to wake it.
                        return VmEvent::Failed {
                            cpu: self.id,
                            reason: "vCPU halted with interrupts off".into(),
                        };
                    }
                    Err(VcpuExit::FailEntry(reason, cpu)) => {
                        return VmEvent::Failed {
                            cpu: self.id,
                            reason: format!(
                                "KVM entry failed: hardware reason {reason:#x} on cpu {cpu}"
                            ),
                        };
                    }
                    Err(VcpuExit::InternalError) => {
                        return VmEvent::Failed {
                            cpu: self.id,
                            reason: "KVM internal error (emulation failure)".into(),
                        };
                    }
                    Err(other) => {
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

    /// Where the guest is, for a crash report and the state dump: instruction, stack,
    /// control registers (resolve `rip` with `nm -n` on the guest's vmlinux).
    fn registers_line(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            // KVM on AMD resets the vCPU when it sees the shutdown: nothing left to show.
            (Ok(r), Ok(s)) if r.rip == 0xfff0 && s.cr0 & 1 == 0 => {
                "registers not kept: KVM reset the vCPU".to_owned()
            }
            (Ok(r), Ok(s)) => format!(
                "rip={:#x} rsp={:#x} rflags={:#x} (IF={}) cs={:#x} cr0={:#x} cr2={:#x} \
                 cr3={:#x} efer={:#x} rax={:#x} rcx={:#x} rdi={:#x}",
                r.rip,
                r.rsp,
                r.rflags,
                (r.rflags >> 9) & 1,
                s.cs.selector,
                s.cr0,
                s.cr2,
                s.cr3,
                s.efer,
                r.rax,
                r.rcx,
                r.rdi
            ),
            (r, s) => format!("registers unreadable: {:?} / {:?}", r.err(), s.err()),
        }
    }

    /// Logs where the guest is and what interrupts it has (SIGUSR1, see `state_dump`):
    /// enough to tell a guest spinning with interrupts off from one whose timer never
    /// fires. Resolve `rip` with `nm -n` on the guest's vmlinux.
    fn log_state(&self) {
        let id = self.id;
        tracing::info!("vcpu{id} state: {}", self.registers_line());
        let mp = self.fd.get_mp_state().map(|m| m.mp_state);
        let mut msrs = Msrs::from_entries(&[
            kvm_bindings::kvm_msr_entry {
                index: MSR_IA32_TSC,
                ..Default::default()
            },
            kvm_bindings::kvm_msr_entry {
                index: MSR_IA32_TSC_DEADLINE,
                ..Default::default()
            },
        ])
        .ok();
        let tsc = msrs
            .as_mut()
            .and_then(|m| self.fd.get_msrs(m).ok().map(|_| m.as_slice().to_vec()))
            .map(|e| format!("tsc={} tsc_deadline={}", e[0].data, e[1].data))
            .unwrap_or_else(|| "tsc unreadable".into());
        let lapic = self
            .fd
            .get_lapic()
            .map(|l| describe_lapic(&l.regs))
            .unwrap_or_else(|e| format!("lapic unreadable: {e}"));
        tracing::info!("vcpu{id} state: mp_state={mp:?} {tsc} {lapic}");
    }
}

/// Serves a port or MMIO exit; any other exit is handed back.
fn handle_io<'a>(exit: VcpuExit<'a>, ctx: &VcpuContext) -> Result<(), VcpuExit<'a>> {
    match exit {
        VcpuExit::IoOut(port, data) => {
            ctx.exits.port(port);
            // Writes to ports with no device (POST code 0x80, absent UARTs and PCI config)
            // are dropped, as on real hardware.
            ctx.pio.write(u64::from(port), data);
        }
        VcpuExit::IoIn(port, data) => {
            ctx.exits.port(port);
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
        other => return Err(other),
    }
    Ok(())
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The LAPIC registers that say whether an interrupt is pending, in service or due.
fn describe_lapic(regs: &[std::os::raw::c_char]) -> String {
    let reg = |off: usize| -> u32 {
        regs.get(off..off + 4).map_or(0, |b| {
            u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
        })
    };
    // ISR and IRR: 8 32-bit words 16 bytes apart; the highest set vector is what matters.
    let highest = |base: usize| -> String {
        (0..8)
            .rev()
            .find_map(|i| {
                let w = reg(base + i * 0x10);
                (w != 0).then(|| format!("{:#x}", i * 32 + 31 - w.leading_zeros() as usize))
            })
            .unwrap_or_else(|| "none".into())
    };
    format!(
        "lapic: tpr={:#x} isr_top={} irr_top={} lvt_timer={:#x} tmict={} tmcct={} tdcr={:#x}",
        reg(0x80),
        highest(0x100),
        highest(0x200),
        reg(0x320),
        reg(0x380),
        reg(0x390),
        reg(0x3e0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapic_description_names_the_highest_pending_vectors() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        // IRR: vectors 0x31 and 0xec pending; ISR: 0x20 in service; timer LVT 0x400ec.
        let mut put = |off: usize, v: u32| {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                regs[off + i] = *b as std::os::raw::c_char;
            }
        };
        put(0x200 + 0x10, 1 << 17);
        put(0x200 + 7 * 0x10, 1 << 12);
        put(0x100 + 0x10, 1);
        put(0x320, 0x400ec);
        let d = describe_lapic(&regs);
        assert!(d.contains("isr_top=0x20"), "{d}");
        assert!(d.contains("irr_top=0xec"), "{d}");
        assert!(d.contains("lvt_timer=0x400ec"), "{d}");
    }

    #[test]
    fn exits_by_port_class() {
        let c = ExitCounters::default();
        for port in [0x3f8, 0x3fd, 0x64, 0x60, 0x70, 0xcfc, 0x80, 0x2f9, 0x1234] {
            c.port(port);
        }
        assert_eq!(c.total(), 9);
        assert_eq!(
            c.breakdown_json(),
            "{\"io\":{\"serial\":2,\"i8042\":2,\"rtc\":1,\"pci_config\":1,\"post\":1,\
             \"other_uarts\":1,\"other_ports\":1},\"mmio\":0,\"other\":0}"
        );
    }
}
