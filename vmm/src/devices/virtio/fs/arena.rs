//! First-fit allocation of a range of window addresses, for the relay's request bytes.
//!
//! virtiofsd answers requests out of order (its thread pool), so space is freed out of
//! order too: free extents are kept sorted and merged with their neighbours. First fit
//! keeps a quiet device's requests at the start of the arena, so only the pages it needs
//! are ever touched.

/// Requests are placed at multiples of this (virtiofsd reads headers as structs).
const ALIGN: u64 = 64;

#[derive(Debug)]
pub struct Arena {
    start: u64,
    len: u64,
    /// Free extents (start, len), sorted by start, never adjacent.
    free: Vec<(u64, u64)>,
}

impl Arena {
    pub fn new(start: u64, len: u64) -> Self {
        Self {
            start,
            len,
            free: vec![(start, len)],
        }
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|&(_, len)| len).sum()
    }

    /// The start of `len` free bytes (`len > 0`), or `None` if no free extent is that long.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = len.checked_next_multiple_of(ALIGN)?;
        let i = self.free.iter().position(|&(_, l)| l >= len)?;
        let (at, l) = self.free[i];
        if l == len {
            self.free.remove(i);
        } else {
            self.free[i] = (at + len, l - len);
        }
        Some(at)
    }

    /// Gives back what `alloc(len)` returned at `at`.
    pub fn free(&mut self, at: u64, len: u64) {
        let Some(len) = len.checked_next_multiple_of(ALIGN) else {
            return;
        };
        debug_assert!(at >= self.start && at + len <= self.start + self.len);
        let i = self.free.partition_point(|&(s, _)| s < at);
        let joins_prev = i > 0 && {
            let (s, l) = self.free[i - 1];
            s + l == at
        };
        let joins_next = self.free.get(i).is_some_and(|&(s, _)| at + len == s);
        match (joins_prev, joins_next) {
            (true, true) => {
                let (_, next_len) = self.free.remove(i);
                self.free[i - 1].1 += len + next_len;
            }
            (true, false) => self.free[i - 1].1 += len,
            (false, true) => self.free[i] = (at, len + self.free[i].1),
            (false, false) => self.free.insert(i, (at, len)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_aligned_and_merged_back() {
        let mut a = Arena::new(0x1000, 0x1000);
        let x = a.alloc(10).unwrap();
        let y = a.alloc(100).unwrap();
        let z = a.alloc(64).unwrap();
        assert_eq!((x, y, z), (0x1000, 0x1040, 0x10c0));
        assert_eq!(a.free_bytes(), 0x1000 - 0x100);
        // Freed out of order, and the hole in the middle is reused first.
        a.free(y, 100);
        assert_eq!(a.alloc(128), Some(0x1040));
        a.free(0x1040, 128);
        a.free(x, 10);
        a.free(z, 64);
        assert_eq!(a.free, vec![(0x1000, 0x1000)]);
        assert_eq!(a.free_bytes(), a.len());
    }

    #[test]
    fn too_large_is_none_and_exact_fit_empties() {
        let mut a = Arena::new(0, 256);
        assert_eq!(a.alloc(257), None);
        assert_eq!(a.alloc(u64::MAX), None);
        assert_eq!(a.alloc(256), Some(0));
        assert_eq!(a.alloc(1), None);
        a.free(0, 256);
        assert_eq!(a.alloc(200), Some(0));
        // 56 bytes left, less than one aligned unit.
        assert_eq!(a.alloc(60), None);
    }

    #[test]
    fn fragmentation_then_merge() {
        let mut a = Arena::new(0, 64 * 8);
        let all: Vec<u64> = (0..8).map(|_| a.alloc(64).unwrap()).collect();
        for &at in all.iter().step_by(2) {
            a.free(at, 64);
        }
        // Four 64-byte holes: 128 does not fit anywhere.
        assert_eq!(a.alloc(128), None);
        for &at in all.iter().skip(1).step_by(2) {
            a.free(at, 64);
        }
        assert_eq!(a.free, vec![(0, 512)]);
    }
}
