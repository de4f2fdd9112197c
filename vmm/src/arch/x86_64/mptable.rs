//! The Intel MultiProcessor Specification 1.4 table. Without ACPI this is how the guest
//! kernel (CONFIG_X86_MPPARSE) finds its CPUs, the IOAPIC and how ISA IRQs are wired.
//! Serialized by hand into bytes: no `unsafe`, and unit-tested against the spec's layout.

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IOAPIC_PINS};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;
const BUS_ISA: u8 = 0;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;

/// Size of the floating pointer structure.
const FLOATING_POINTER_SIZE: usize = 16;
/// Size of the configuration table header.
const HEADER_SIZE: usize = 44;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    #[error("Too many vCPUs for the MP table: {0}")]
    TooManyCpus(u8),
    #[error("MP table of {0} bytes does not fit below 640 KiB")]
    TooLarge(usize),
}

/// Where the table is written: the last KiB of base memory, scanned by the kernel.
pub const MPTABLE_START: u64 = EBDA_START;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer followed by the configuration table, to be written at
/// [`MPTABLE_START`].
pub fn build(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    // APIC IDs 0..num_cpus for CPUs, then one for the IOAPIC; 0xff means "all".
    if num_cpus == 0 || num_cpus >= 0xfe {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;

    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        // CPU signature (family 6) and feature flags (FPU, APIC): informational only.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, BUS_ISA]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // ISA IRQ n is wired to IOAPIC pin n, conforming polarity and trigger.
    for irq in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0]);
        entries.extend_from_slice(&[BUS_ISA, irq, ioapic_id, irq]);
        count += 1;
    }
    // The legacy PIC's ExtINT on LINT0 of the BSP, NMI on LINT1 of every CPU.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0]);
    entries.extend_from_slice(&[BUS_ISA, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0]);
    entries.extend_from_slice(&[BUS_ISA, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_SIZE + entries.len();
    let total = FLOATING_POINTER_SIZE + table_len;
    if MPTABLE_START as usize + total > 0xa0000 {
        return Err(MptableError::TooLarge(total));
    }

    let mut header = Vec::with_capacity(table_len);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(SPEC_REV);
    header.push(0); // checksum, patched below
    header.extend_from_slice(b"HUSK    ");
    header.extend_from_slice(b"HUSK-VMM    ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&APIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    header.push(0); // extended table checksum
    header.push(0); // reserved
    debug_assert_eq!(header.len(), HEADER_SIZE);
    header.extend_from_slice(&entries);
    header[7] = checksum(&header);

    let table_addr = (MPTABLE_START as usize + FLOATING_POINTER_SIZE) as u32;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&table_addr.to_le_bytes());
    out.push(1); // length in 16-byte paragraphs
    out.push(SPEC_REV);
    out.push(0); // checksum, patched below
    out.extend_from_slice(&[0u8; 5]); // feature bytes: 0 = a configuration table follows
    out[10] = checksum(&out);
    out.extend_from_slice(&header);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointers() {
        for cpus in [1u8, 2, 8, crate::config::MAX_VCPUS] {
            let t = build(cpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE_START + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes(table[4..6].try_into().unwrap()) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "config table checksum");
            let count = u16::from_le_bytes(table[34..36].try_into().unwrap()) as usize;
            assert_eq!(count, cpus as usize + 2 + IOAPIC_PINS as usize + 2);
            assert_eq!(
                len,
                44 + cpus as usize * 20 + (2 + IOAPIC_PINS as usize + 2) * 8
            );
        }
    }

    #[test]
    fn processors_and_ioapic() {
        let t = build(2).unwrap();
        let entries = &t[16 + 44..];
        assert_eq!(
            &entries[0..4],
            &[ENTRY_PROCESSOR, 0, APIC_VERSION, CPU_ENABLED | CPU_BSP]
        );
        assert_eq!(
            &entries[20..24],
            &[ENTRY_PROCESSOR, 1, APIC_VERSION, CPU_ENABLED]
        );
        assert_eq!(&entries[40..48], b"\x01\x00ISA   ");
        assert_eq!(entries[48], ENTRY_IOAPIC);
        assert_eq!(entries[49], 2, "IOAPIC id follows the CPUs");
        assert_eq!(
            u32::from_le_bytes(entries[52..56].try_into().unwrap()),
            IOAPIC_ADDR
        );
        // IRQ 4 (COM1) goes to pin 4.
        let irq4 = &entries[56 + 4 * 8..56 + 5 * 8];
        assert_eq!(
            irq4,
            &[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, BUS_ISA, 4, 2, 4]
        );
    }

    #[test]
    fn bounds() {
        assert_eq!(build(0), Err(MptableError::TooManyCpus(0)));
        assert_eq!(build(0xfe), Err(MptableError::TooManyCpus(0xfe)));
        // 253 CPUs would not fit in the last KiB of base memory.
        assert!(matches!(build(200), Err(MptableError::TooLarge(_))));
    }
}
