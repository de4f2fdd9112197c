//! Guest RAM ranges and the e820 map the kernel sees.

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The host-backed RAM ranges `(guest address, size)` for `mem_size` bytes of guest memory:
/// one range below the 32-bit MMIO gap, and the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// The e820 map: low RAM up to the EBDA, the BIOS area reserved, then RAM from 1 MiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_ranges(mem_size) {
        let start = start.max(HIMEM_START);
        let end = if start == HIMEM_START {
            size
        } else {
            start + size
        };
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// End of the RAM range that starts at 0 (where low-memory boot data like the initramfs go).
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        let map = e820_map(256 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(
            map[2],
            E820Entry {
                addr: HIMEM_START,
                size: (256 << 20) - HIMEM_START,
                kind: E820_RAM
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (256 << 20) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let size = 4u64 << 30;
        assert_eq!(
            ram_ranges(size),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
        );
        let map = e820_map(size);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: MMIO_GAP_END,
                size: 1 << 30,
                kind: E820_RAM
            }
        );
        // No entry overlaps the gap.
        for e in &map {
            assert!(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
        }
        assert_eq!(low_ram_end(size), MMIO_GAP_START);
        assert_eq!(low_ram_end(1 << 28), 1 << 28);
    }

    #[test]
    fn exactly_at_gap() {
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }
}
