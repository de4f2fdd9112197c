//! A vCPU's KVM state for snapshots: what to save, in which order, and how to put it back
//! (the orders are KVM's constraints, as Firecracker and QEMU document them).
//!
//! Saved: CPUID, MSRs (every index KVM_GET_MSR_INDEX_LIST names that KVM_GET_MSRS reads
//! on this vCPU), general and special registers, the FPU/SSE/AVX area (KVM_GET_XSAVE),
//! XCR0, debug registers, the local APIC, the MP state, pending events and the TSC
//! frequency.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::snapshot::raw::Raw;

/// MSRs whose value depends on another's: restored after all the others. The TSC deadline
/// is armed relative to the TSC, so it goes after MSR_IA32_TSC (or the timer it arms is
/// lost or fires at the wrong time).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// The x2APIC registers: their state is the LAPIC's (saved with KVM_GET_LAPIC).
const X2APIC_MSRS: std::ops::Range<u32> = 0x800..0xc00;

/// Most MSRs a snapshot may carry (KVM lists a few hundred at most).
pub const MAX_MSRS: usize = 4 * KVM_MAX_MSR_ENTRIES;
/// TSC frequencies within this many parts per million need no scaling (QEMU's and
/// Firecracker's tolerance: calibration differs a little from boot to boot).
const TSC_TOLERANCE_PPM: u64 = 250;
/// Highest KVM_MP_STATE_* value (KVM_MP_STATE_AP_RESET_HOLD).
const MAX_MP_STATE: u32 = 10;

/// Errors saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("Cannot {op} of vCPU {cpu}")]
    Kvm {
        cpu: u8,
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM took {set} of {wanted} MSRs of vCPU {cpu}; the first refused is {index:#x}")]
    MsrsRefused {
        cpu: u8,
        set: usize,
        wanted: usize,
        index: u32,
    },
    #[error("vCPU {cpu}'s saved state is invalid: {what}")]
    Invalid { cpu: u8, what: String },
    #[error(
        "vCPU {cpu} ran at {saved} kHz, this host's TSC is {host} kHz and KVM cannot scale it"
    )]
    TscScaling {
        cpu: u8,
        saved: u32,
        host: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// One CPUID leaf as KVM takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// One MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrValue {
    pub index: u32,
    pub data: u64,
}

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    pub cpuid: Vec<CpuidEntry>,
    pub msrs: Vec<MsrValue>,
    pub regs: Raw<kvm_regs>,
    pub sregs: Raw<kvm_sregs>,
    pub xsave: Raw<kvm_xsave>,
    pub xcrs: Raw<kvm_xcrs>,
    pub debug_regs: Raw<kvm_debugregs>,
    pub lapic: Raw<kvm_lapic_state>,
    pub mp_state: u32,
    pub events: Raw<kvm_vcpu_events>,
    /// None where KVM could not tell (an unstable host TSC).
    pub tsc_khz: Option<u32>,
}

impl VcpuState {
    /// Reads the state of a vCPU that is not running (its thread is out of KVM_RUN, with
    /// any port or MMIO access it exited for completed) while every other vCPU is also
    /// stopped. `msr_list` is KVM_GET_MSR_INDEX_LIST.
    pub fn save(fd: &VcpuFd, cpu: u8, msr_list: &[u32]) -> Result<Self, VcpuStateError> {
        let kvm = |op| move |source| VcpuStateError::Kvm { cpu, op, source };
        // KVM_GET_MP_STATE first: it accepts pending INIT/SIPI events, which changes the
        // LAPIC and the registers read next. KVM_GET_VCPU_EVENTS last: other reads may
        // still change the pending-event state it reports.
        let mp_state = fd.get_mp_state().map_err(kvm("get the MP state"))?;
        let regs = fd.get_regs().map_err(kvm("get the registers"))?;
        let sregs = fd.get_sregs().map_err(kvm("get the special registers"))?;
        let xsave = fd.get_xsave().map_err(kvm("get the XSAVE area"))?;
        let xcrs = fd.get_xcrs().map_err(kvm("get the XCRs"))?;
        let debug_regs = fd
            .get_debug_regs()
            .map_err(kvm("get the debug registers"))?;
        let lapic = fd.get_lapic().map_err(kvm("get the LAPIC"))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        let mut cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("get the CPUID"))?;
        // KVM_GET_CPUID2 leaves unused entries zeroed at the end.
        cpuid.retain(|e| !(e.function == 0 && e.index == 0 && e.flags == 0 && e.eax == 0));
        let mut msrs = read_msrs(fd, cpu, msr_list)?;
        fix_zero_tsc_deadline(&mut msrs);
        let events = fd
            .get_vcpu_events()
            .map_err(kvm("get the pending events"))?;
        Ok(Self {
            cpuid: cpuid
                .as_slice()
                .iter()
                .map(|e| CpuidEntry {
                    function: e.function,
                    index: e.index,
                    flags: e.flags,
                    eax: e.eax,
                    ebx: e.ebx,
                    ecx: e.ecx,
                    edx: e.edx,
                })
                .collect(),
            msrs,
            regs: Raw(regs),
            sregs: Raw(sregs),
            xsave: Raw(xsave),
            xcrs: Raw(xcrs),
            debug_regs: Raw(debug_regs),
            lapic: Raw(lapic),
            mp_state: mp_state.mp_state,
            events: Raw(events),
            tsc_khz,
        })
    }

    /// What can be checked without KVM: counts within KVM's bounds, a known MP state, no
    /// MSR twice.
    pub fn validate(&self, cpu: u8) -> Result<(), VcpuStateError> {
        let invalid = |what: String| Err(VcpuStateError::Invalid { cpu, what });
        if self.cpuid.is_empty() || self.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
            return invalid(format!("{} CPUID entries", self.cpuid.len()));
        }
        if self.msrs.len() > MAX_MSRS {
            return invalid(format!("{} MSRs (at most {MAX_MSRS})", self.msrs.len()));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(m) = self.msrs.iter().find(|m| !seen.insert(m.index)) {
            return invalid(format!("MSR {:#x} appears twice", m.index));
        }
        if self.mp_state > MAX_MP_STATE {
            return invalid(format!("unknown MP state {}", self.mp_state));
        }
        if self.tsc_khz == Some(0) {
            return invalid("TSC frequency 0".into());
        }
        Ok(())
    }

    /// Puts the state into a new vCPU of a VM whose irqchip exists. Order: TSC frequency;
    /// CPUID and the MP state (other calls depend on them); registers before events
    /// (KVM_SET_REGS clears pending exceptions); special registers before the LAPIC (they
    /// carry the APIC base); the LAPIC before the MSRs (the TSC deadline only takes with the
    /// LAPIC set up); the TSC before the TSC deadline; the events last.
    pub fn restore(&self, fd: &VcpuFd, cpu: u8) -> Result<(), VcpuStateError> {
        self.validate(cpu)?;
        let kvm = |op| move |source| VcpuStateError::Kvm { cpu, op, source };
        if let Some(saved) = self.tsc_khz {
            let host = fd.get_tsc_khz().map_err(kvm("get the TSC frequency"))?;
            if needs_tsc_scaling(saved, host) {
                fd.set_tsc_khz(saved)
                    .map_err(|source| VcpuStateError::TscScaling {
                        cpu,
                        saved,
                        host,
                        source,
                    })?;
            }
        }
        let entries: Vec<kvm_cpuid_entry2> = self
            .cpuid
            .iter()
            .map(|e| kvm_cpuid_entry2 {
                function: e.function,
                index: e.index,
                flags: e.flags,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
                ..Default::default()
            })
            .collect();
        let cpuid = CpuId::from_entries(&entries).map_err(|_| VcpuStateError::Invalid {
            cpu,
            what: "CPUID table".into(),
        })?;
        fd.set_cpuid2(&cpuid).map_err(kvm("set the CPUID"))?;
        fd.set_mp_state(kvm_mp_state {
            mp_state: self.mp_state,
        })
        .map_err(kvm("set the MP state"))?;
        fd.set_regs(&self.regs.0)
            .map_err(kvm("set the registers"))?;
        fd.set_sregs(&self.sregs.0)
            .map_err(kvm("set the special registers"))?;
        // The restore checked KVM_CAP_XSAVE2's size against `kvm_xsave` before creating any
        // vCPU (`vm::build::check_xsave_size`).
        // SAFETY: KVM_SET_XSAVE reads at most that size, within the 4096 bytes of `kvm_xsave`.
        unsafe { fd.set_xsave(&self.xsave.0) }.map_err(kvm("set the XSAVE area"))?;
        fd.set_xcrs(&self.xcrs.0).map_err(kvm("set the XCRs"))?;
        fd.set_debug_regs(&self.debug_regs.0)
            .map_err(kvm("set the debug registers"))?;
        fd.set_lapic(&self.lapic.0).map_err(kvm("set the LAPIC"))?;
        let (first, deferred): (Vec<_>, Vec<_>) = self
            .msrs
            .iter()
            .partition(|m| m.index != MSR_IA32_TSC_DEADLINE);
        write_msrs(fd, cpu, &first)?;
        write_msrs(fd, cpu, &deferred)?;
        fd.set_vcpu_events(&self.events.0)
            .map_err(kvm("set the pending events"))?;
        // Tells the guest's kvmclock the vCPU was stopped, so its soft-lockup watchdog does
        // not bark at the gap. EINVAL only means the guest does not use kvmclock.
        if let Err(e) = fd.kvmclock_ctrl() {
            tracing::debug!(cpu, "KVM_KVMCLOCK_CTRL: {e}");
        }
        Ok(())
    }
}

/// Whether a TSC saved at `saved` kHz must be scaled on a host running at `host` kHz.
pub fn needs_tsc_scaling(saved: u32, host: u32) -> bool {
    u64::from(saved.abs_diff(host)) * 1_000_000 > u64::from(saved) * TSC_TOLERANCE_PPM
}

/// The MSRs of `list` this vCPU has, read in chunks of KVM_MAX_MSR_ENTRIES. KVM's index
/// list names MSRs a given vCPU may not have (its CPUID hides the feature); KVM_GET_MSRS
/// stops at the first such one, which is left out, and the read goes on after it.
fn read_msrs(fd: &VcpuFd, cpu: u8, list: &[u32]) -> Result<Vec<MsrValue>, VcpuStateError> {
    let mut wanted: Vec<u32> = list
        .iter()
        .copied()
        .filter(|i| !X2APIC_MSRS.contains(i))
        .collect();
    wanted.truncate(MAX_MSRS);
    let mut out = Vec::with_capacity(wanted.len());
    let mut rest = &wanted[..];
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::Invalid {
            cpu,
            what: "MSR list".into(),
        })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Kvm {
                cpu,
                op: "get the MSRs",
                source,
            })?;
        let got = &msrs.as_slice()[..n.min(chunk.len())];
        out.extend(got.iter().map(|e| MsrValue {
            index: e.index,
            data: e.data,
        }));
        if n < chunk.len() {
            tracing::debug!(cpu, "MSR {:#x} is not readable; not saved", chunk[n]);
            rest = &rest[n + 1..];
        } else {
            rest = &rest[chunk.len()..];
        }
    }
    Ok(out)
}

fn write_msrs(fd: &VcpuFd, cpu: u8, msrs: &[&MsrValue]) -> Result<(), VcpuStateError> {
    for chunk in msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let kvm_msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::Invalid {
            cpu,
            what: "MSR list".into(),
        })?;
        let set = fd
            .set_msrs(&kvm_msrs)
            .map_err(|source| VcpuStateError::Kvm {
                cpu,
                op: "set the MSRs",
                source,
            })?;
        if set != chunk.len() {
            return Err(VcpuStateError::MsrsRefused {
                cpu,
                set,
                wanted: chunk.len(),
                index: chunk[set].index,
            });
        }
    }
    Ok(())
}

/// A TSC deadline of 0 with the LAPIC timer in deadline mode can mean KVM had just fired
/// the timer when the vCPU stopped, with the interrupt not yet visible: restored as 0, the
/// vCPU would never get another tick (Firecracker saw this). The TSC's own value instead
/// fires at once after the restore, and one early tick is harmless to Linux.
fn fix_zero_tsc_deadline(msrs: &mut [MsrValue]) {
    let Some(tsc) = msrs
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .map(|m| m.data)
    else {
        return;
    };
    for m in msrs
        .iter_mut()
        .filter(|m| m.index == MSR_IA32_TSC_DEADLINE && m.data == 0)
    {
        m.data = tsc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> VcpuState {
        VcpuState {
            cpuid: vec![CpuidEntry {
                function: 0,
                index: 0,
                flags: 0,
                eax: 0xd,
                ebx: 1,
                ecx: 2,
                edx: 3,
            }],
            msrs: vec![
                MsrValue {
                    index: MSR_IA32_TSC,
                    data: 1000,
                },
                MsrValue {
                    index: MSR_IA32_TSC_DEADLINE,
                    data: 0,
                },
            ],
            regs: Raw(kvm_regs {
                rip: 0xffff_ffff_8100_1234,
                ..Default::default()
            }),
            sregs: Raw(kvm_sregs::default()),
            xsave: Raw(kvm_xsave::default()),
            xcrs: Raw(kvm_xcrs::default()),
            debug_regs: Raw(kvm_debugregs::default()),
            lapic: Raw(kvm_lapic_state::default()),
            mp_state: 0,
            events: Raw(kvm_vcpu_events::default()),
            tsc_khz: Some(2_000_000),
        }
    }

    #[test]
    fn json_round_trip() {
        let s = state();
        let json = serde_json::to_string(&s).unwrap();
        let back: VcpuState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.cpuid, s.cpuid);
        assert_eq!(back.msrs, s.msrs);
        assert_eq!(back.regs.0.rip, s.regs.0.rip);
        assert_eq!(back.tsc_khz, Some(2_000_000));
        back.validate(0).unwrap();
        // Unknown fields are refused.
        let extra = json.replacen('{', "{\"extra\":1,", 1);
        assert!(serde_json::from_str::<VcpuState>(&extra).is_err());
    }

    #[test]
    fn validation() {
        let mut s = state();
        s.msrs.push(s.msrs[0]);
        assert!(s.validate(1).unwrap_err().to_string().contains("twice"));
        let mut s = state();
        s.mp_state = 99;
        assert!(s.validate(0).is_err());
        let mut s = state();
        s.cpuid.clear();
        assert!(s.validate(0).is_err());
        let mut s = state();
        s.cpuid = vec![s.cpuid[0]; KVM_MAX_CPUID_ENTRIES + 1];
        assert!(s.validate(0).is_err());
        let mut s = state();
        s.tsc_khz = Some(0);
        assert!(s.validate(0).is_err());
    }

    #[test]
    fn zero_tsc_deadline_becomes_the_tsc() {
        let mut s = state();
        fix_zero_tsc_deadline(&mut s.msrs);
        assert_eq!(s.msrs[1].data, 1000);
        // A deadline that is set stays.
        s.msrs[1].data = 5000;
        fix_zero_tsc_deadline(&mut s.msrs);
        assert_eq!(s.msrs[1].data, 5000);
    }

    #[test]
    fn tsc_tolerance() {
        assert!(!needs_tsc_scaling(2_000_000, 2_000_000));
        assert!(!needs_tsc_scaling(2_000_000, 2_000_400));
        assert!(needs_tsc_scaling(2_000_000, 2_001_000));
        assert!(needs_tsc_scaling(2_000_000, 1_000_000));
        assert!(needs_tsc_scaling(u32::MAX, 0));
    }
}
