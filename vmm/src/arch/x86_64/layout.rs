//! Fixed guest-physical addresses used at boot (the same low-memory layout Firecracker and
//! vmm-reference use, so the kernel finds things where it expects them).

/// Global descriptor table.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty; the kernel installs its own).
pub const IDT_START: u64 = 0x520;
/// The Linux "zero page" (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT and one PD of 2 MiB pages (1 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we pass (the kernel's COMMAND_LINE_SIZE is 2048 on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area: RAM ends here in the low 640 KiB, and the MP table
/// lives in the last KiB below it where the kernel scans for it.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy hole; the kernel loads here.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole below 4 GiB: RAM stops here and resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Where the in-kernel IOAPIC and local APICs sit.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS needs three pages just below the identity map page the BIOS area doesn't use.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Number of IOAPIC pins (the in-kernel IOAPIC has 24).
pub const IOAPIC_PINS: u8 = 24;
/// COM1 IRQ line.
pub const SERIAL_IRQ: u32 = 4;
