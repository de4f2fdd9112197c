//! CPUID as the guest sees it: what KVM supports, with the topology of this VM and the
//! hypervisor signature filled in. Without the hypervisor bit and the KVM leaves a guest
//! kernel under nested KVM cannot calibrate its TSC and hangs in `calibrate_delay`.

use kvm_bindings::kvm_cpuid_entry2;

/// KVM's paravirt signature leaf and its feature leaf.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// The LAPIC's TSC-deadline mode. KVM_GET_SUPPORTED_CPUID leaves it clear even where KVM
/// emulates it (KVM_CAP_TSC_DEADLINE_TIMER): the VMM sets it, as QEMU, Firecracker and
/// Cloud Hypervisor do. Without it the guest calibrates its LAPIC timer against the PIT
/// at every boot (about 100 ms of guest time spent waiting, more under emulation).
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;

/// Adjusts `entries` (from KVM_GET_SUPPORTED_CPUID) for vCPU `cpu_id` of `cpu_count`;
/// `tsc_deadline`: KVM emulates the LAPIC's TSC-deadline mode (KVM_CAP_TSC_DEADLINE_TIMER).
pub fn patch(entries: &mut Vec<kvm_cpuid_entry2>, cpu_id: u8, cpu_count: u8, tsc_deadline: bool) {
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                // EBX: initial APIC ID [31:24], logical processor count [23:16],
                // CLFLUSH line size in qwords [15:8].
                e.ebx = (u32::from(cpu_id) << 24) | (u32::from(cpu_count) << 16) | (8 << 8);
                if cpu_count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Extended topology: every subleaf reports the x2APIC ID in EDX.
            0xb | 0x1f => {
                e.edx = u32::from(cpu_id);
                match e.index {
                    // SMT level: one thread per core.
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    // Core level: all vCPUs in one package.
                    1 => {
                        e.eax = bits_for(cpu_count);
                        e.ebx = u32::from(cpu_count);
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            // Deterministic cache parameters: cores per package in EAX[31:26].
            0x4 if e.eax & 0x1f != 0 => {
                e.eax = (e.eax & 0x03ff_ffff) | (u32::from(cpu_count - 1) << 26);
            }
            KVM_CPUID_SIGNATURE => {
                e.eax = e.eax.max(KVM_CPUID_FEATURES);
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            _ => {}
        }
    }
    if !entries.iter().any(|e| e.function == KVM_CPUID_SIGNATURE) {
        entries.push(kvm_cpuid_entry2 {
            function: KVM_CPUID_SIGNATURE,
            eax: KVM_CPUID_FEATURES,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
    if !entries.iter().any(|e| e.function == KVM_CPUID_FEATURES) {
        entries.push(kvm_cpuid_entry2 {
            function: KVM_CPUID_FEATURES,
            ..Default::default()
        });
    }
    for e in entries.iter_mut() {
        if matches!(e.function, 0x4 | 0xb | 0xd | 0x1f) {
            e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        }
    }
}

/// Bits needed to hold an ID below `n` (the x2APIC ID shift for a level of `n` units).
fn bits_for(n: u8) -> u32 {
    if n <= 1 {
        0
    } else {
        u32::BITS - u32::from(n - 1).leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(e: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *e.iter().find(|x| x.function == f && x.index == i).unwrap()
    }

    #[test]
    fn hypervisor_bit_and_apic_id() {
        let mut e = vec![leaf(0x1, 0)];
        e[0].ebx = 0xffff_ffff;
        patch(&mut e, 3, 4, false);
        let l1 = find(&e, 1, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        let mut e = vec![leaf(0x1, 0)];
        e[0].edx = LEAF1_EDX_HTT;
        patch(&mut e, 0, 1, false);
        assert_eq!(find(&e, 1, 0).edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn tsc_deadline_bit_only_where_kvm_emulates_it() {
        let mut e = vec![leaf(0x1, 0)];
        patch(&mut e, 0, 1, false);
        assert_eq!(find(&e, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        patch(&mut e, 0, 1, true);
        assert_ne!(find(&e, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        // The hypervisor bit stays whatever the deadline timer says.
        assert_ne!(find(&e, 1, 0).ecx & LEAF1_ECX_HYPERVISOR, 0);
    }

    #[test]
    fn kvm_leaves_added_when_missing() {
        let mut e = vec![leaf(0x0, 0)];
        patch(&mut e, 0, 1, false);
        let sig = find(&e, KVM_CPUID_SIGNATURE, 0);
        let mut bytes = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            bytes.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&bytes, b"KVMKVMKVM\0\0\0");
        assert_eq!(sig.eax, KVM_CPUID_FEATURES);
        find(&e, KVM_CPUID_FEATURES, 0);
    }

    #[test]
    fn kvm_leaves_kept_when_present() {
        let mut e = vec![leaf(KVM_CPUID_SIGNATURE, 0), leaf(KVM_CPUID_FEATURES, 0)];
        e[1].eax = 0x1234;
        patch(&mut e, 0, 1, false);
        assert_eq!(e.len(), 2);
        assert_eq!(find(&e, KVM_CPUID_FEATURES, 0).eax, 0x1234);
        assert_eq!(find(&e, KVM_CPUID_SIGNATURE, 0).ebx, KVM_SIGNATURE[0]);
    }

    #[test]
    fn extended_topology() {
        let mut e = vec![leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)];
        patch(&mut e, 5, 6, false);
        for i in 0..3 {
            assert_eq!(find(&e, 0xb, i).edx, 5);
            assert_ne!(find(&e, 0xb, i).flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        }
        assert_eq!(find(&e, 0xb, 1).ebx, 6);
        assert_eq!(find(&e, 0xb, 1).eax, 3);
        assert_eq!(find(&e, 0xb, 2).ebx, 0);
    }

    #[test]
    fn bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
        assert_eq!(bits_for(32), 5);
    }
}
