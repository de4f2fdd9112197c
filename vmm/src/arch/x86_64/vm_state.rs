//! The VM-wide KVM state for snapshots: the in-kernel interrupt controllers (the two PICs
//! and the IOAPIC), the PIT and the kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use crate::snapshot::raw::Raw;

/// Errors saving or restoring the VM's KVM state.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    #[error("Cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("The saved {0} is for another interrupt controller")]
    WrongChip(&'static str),
}

/// What KVM holds for the whole VM.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    pub pic_master: Raw<kvm_irqchip>,
    pub pic_slave: Raw<kvm_irqchip>,
    pub ioapic: Raw<kvm_irqchip>,
    pub pit: Raw<kvm_pit_state2>,
    pub clock: Raw<kvm_clock_data>,
}

impl VmState {
    /// Reads the state of a VM whose vCPUs are all stopped.
    pub fn save(vm: &VmFd) -> Result<Self, VmStateError> {
        let chip = |chip_id, what| {
            let mut c = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut c)
                .map(|()| Raw(c))
                .map_err(|e| VmStateError::Kvm(what, e))
        };
        Ok(Self {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER, "get the master PIC")?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE, "get the slave PIC")?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC, "get the IOAPIC")?,
            pit: Raw(vm
                .get_pit2()
                .map_err(|e| VmStateError::Kvm("get the PIT", e))?),
            clock: Raw(vm
                .get_clock()
                .map_err(|e| VmStateError::Kvm("get the kvmclock", e))?),
        })
    }

    /// The chips name themselves; a state whose chips are swapped or unknown is refused.
    pub fn validate(&self) -> Result<(), VmStateError> {
        for (chip, id, what) in [
            (&self.pic_master, KVM_IRQCHIP_PIC_MASTER, "master PIC"),
            (&self.pic_slave, KVM_IRQCHIP_PIC_SLAVE, "slave PIC"),
            (&self.ioapic, KVM_IRQCHIP_IOAPIC, "IOAPIC"),
        ] {
            if chip.0.chip_id != id {
                return Err(VmStateError::WrongChip(what));
            }
        }
        Ok(())
    }

    /// Puts the interrupt controllers and the PIT into a VM that has its irqchip and PIT.
    pub fn restore_devices(&self, vm: &VmFd) -> Result<(), VmStateError> {
        self.validate()?;
        for (chip, what) in [
            (&self.pic_master, "set the master PIC"),
            (&self.pic_slave, "set the slave PIC"),
            (&self.ioapic, "set the IOAPIC"),
        ] {
            vm.set_irqchip(&chip.0)
                .map_err(|e| VmStateError::Kvm(what, e))?;
        }
        vm.set_pit2(&self.pit.0)
            .map_err(|e| VmStateError::Kvm("set the PIT", e))
    }

    /// Sets the kvmclock to its saved value, as late as possible before the vCPUs run: the
    /// guest's monotonic time goes on from the snapshot as if the VM had been paused.
    /// The flags are not restored: KVM_CLOCK_REALTIME would advance the clock by the host
    /// time since the snapshot (a template restored days later would see its timers all
    /// expire at once), and the others are read-only. The guest's wall clock is the
    /// agent's to correct.
    pub fn restore_clock(&self, vm: &VmFd) -> Result<(), VmStateError> {
        let clock = kvm_clock_data {
            clock: self.clock.0.clock,
            ..Default::default()
        };
        vm.set_clock(&clock)
            .map_err(|e| VmStateError::Kvm("set the kvmclock", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> VmState {
        let chip = |chip_id| {
            Raw(kvm_irqchip {
                chip_id,
                ..Default::default()
            })
        };
        VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER),
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE),
            ioapic: chip(KVM_IRQCHIP_IOAPIC),
            pit: Raw(kvm_pit_state2::default()),
            clock: Raw(kvm_clock_data {
                clock: 123_456_789,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn round_trip_and_chip_ids() {
        let s = state();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: VmState = serde_json::from_str(&json).unwrap();
        back.validate().unwrap();
        assert_eq!(back.clock.0.clock, 123_456_789);
        let mut swapped = state();
        std::mem::swap(&mut swapped.pic_master, &mut swapped.ioapic);
        assert!(matches!(
            swapped.validate(),
            Err(VmStateError::WrongChip("master PIC"))
        ));
    }
}
