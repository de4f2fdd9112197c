//! x86_64: guest memory map, CPUID, MSRs, registers, page tables and the MP table.

pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod regs;
