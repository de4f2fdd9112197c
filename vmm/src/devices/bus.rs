//! An address-ranged bus (one for port I/O, one for MMIO) dispatching guest accesses to
//! devices, the shape Firecracker and Cloud Hypervisor use.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the device's range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors inserting devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("Device range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

/// A set of non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<Range, Arc<Mutex<dyn BusDevice>>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlaps = self
            .devices
            .keys()
            .any(|r| end.is_none_or(|end| base < r.base + r.len && r.base < end));
        if overlaps || end.is_none() {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(Range { base, len }, device);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (range, dev) = self
            .devices
            .range(
                ..=Range {
                    base: addr,
                    len: u64::MAX,
                },
            )
            .next_back()?;
        (addr - range.base < range.len).then(|| (addr - range.base, dev))
    }

    /// Dispatches a read; returns false (and leaves `data` untouched) if no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device that panicked on one access
/// has already taken the VMM down (panic = abort), so poisoning only happens in tests.
fn lock(dev: &Arc<Mutex<dyn BusDevice>>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_range() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fa, &mut d));
        assert_eq!(d, [2]);
        assert!(!bus.read(0x3f7, &mut d));
        assert!(!bus.read(0x400, &mut d));
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(a.lock().unwrap().last_write, Some((7, vec![9])));
    }

    #[test]
    fn rejects_overlaps() {
        let mut bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev(), 0x60, 5).unwrap();
        assert!(bus.insert(dev(), 0x64, 1).is_err());
        assert!(bus.insert(dev(), 0x5f, 2).is_err());
        assert!(bus.insert(dev(), 0x10, 0).is_err());
        assert!(bus.insert(dev(), u64::MAX, 2).is_err());
        bus.insert(dev(), 0x65, 1).unwrap();
        bus.insert(dev(), 0x5f, 1).unwrap();
    }
}
