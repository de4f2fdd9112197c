//! x86_64: guest memory map, CPUID, MSRs, registers, page tables and the MP table, and
//! the KVM state of vCPUs and the VM that snapshots save.

pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod regs;
pub mod vcpu_state;
pub mod vm_state;
