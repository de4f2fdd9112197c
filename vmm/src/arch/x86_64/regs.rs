//! Boot-time vCPU state for the 64-bit Linux boot protocol: long mode with an identity map
//! of the first GiB, a flat GDT, `rsi` pointing at the zero page.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START,
};

/// Errors setting up boot-time CPU state in guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("Cannot write boot page tables to guest memory")]
    PageTables(#[source] vm_memory::GuestMemoryError),
    #[error("Cannot write the GDT or IDT to guest memory")]
    Descriptors(#[source] vm_memory::GuestMemoryError),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// MSR indices set at boot.
pub mod msr {
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
}
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

/// The MSR values every vCPU starts with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(msr::IA32_SYSENTER_CS, 0),
        e(msr::IA32_SYSENTER_ESP, 0),
        e(msr::IA32_SYSENTER_EIP, 0),
        e(msr::STAR, 0),
        e(msr::CSTAR, 0),
        e(msr::KERNEL_GS_BASE, 0),
        e(msr::SYSCALL_MASK, 0),
        e(msr::LSTAR, 0),
        e(msr::IA32_TSC, 0),
        e(msr::IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        e(msr::MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// A GDT entry from flags, base and limit (the layout in the Intel SDM 3.4.5).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The `kvm_segment` a GDT entry describes when loaded with selector `index * 8`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let g = (entry >> 55) & 1;
    let limit = ((entry >> 32) & 0xf_0000) | (entry & 0xffff);
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        // With granularity the limit counts 4 KiB pages.
        limit: if g == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: g as u8,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((entry >> 47) & 1) == 0),
    }
}

/// Writes the GDT, an empty IDT and identity page tables for the first GiB, and sets the
/// special registers for long mode.
pub fn setup_sregs(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + (i as u64) * 8))
            .map_err(RegsError::Descriptors)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(RegsError::Descriptors)?;
    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    write_page_tables(mem)?;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] = 2 MiB page at i * 2 MiB (present, rw, PS).
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(RegsError::PageTables)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(RegsError::PageTables)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(RegsError::PageTables)?;
    }
    Ok(())
}

/// General registers for the boot CPU entering the kernel at `entry`.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// FPU state after reset: x87 control word and MXCSR defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| state.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *b as _;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 delivers the legacy PIC's ExtINT, LINT1 delivers NMIs (what the MP table says).
pub fn setup_lapic(state: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(state, APIC_LVT0);
    set_lapic_reg(state, APIC_LVT0, set_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(state, APIC_LVT1);
    set_lapic_reg(state, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn gdt_entries_decode() {
        let code = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(code.selector, 8);
        assert_eq!(code.l, 1, "64-bit code segment");
        assert_eq!(code.db, 0);
        assert_eq!(code.present, 1);
        assert_eq!(code.type_, 0xb);
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(data.selector, 16);
        assert_eq!(data.db, 1);
        assert_eq!(data.type_, 0x3);
        let null = segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn sregs_and_page_tables() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pde511: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(pde511, (511 << 21) | 0x83);
        let gdt1: u64 = mem.read_obj(GuestAddress(GDT_START + 8)).unwrap();
        assert_eq!(gdt1, BOOT_GDT[1]);
        assert_eq!(sregs.gdt.limit, 31);
    }

    #[test]
    fn lapic_lint_modes() {
        let mut s = kvm_lapic_state::default();
        set_lapic_reg(&mut s, APIC_LVT0, 0x0001_0700);
        setup_lapic(&mut s);
        assert_eq!(lapic_reg(&s, APIC_LVT0), 0x0001_0700);
        assert_eq!((lapic_reg(&s, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
        set_lapic_reg(&mut s, APIC_LVT0, 0);
        setup_lapic(&mut s);
        assert_eq!((lapic_reg(&s, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
    }

    #[test]
    fn boot_registers() {
        let r = boot_regs(0x100200);
        assert_eq!(r.rip, 0x100200);
        assert_eq!(r.rsi, ZERO_PAGE_START);
        assert_eq!(r.rflags, 2);
        assert_eq!(boot_msr_entries().len(), 11);
    }
}
