//! What the state file's payload holds, and the checks that come before any of it is
//! given to KVM or to a device: counts and sizes within the VMM's own limits, every
//! device where the VMM places devices.

use serde::{Deserialize, Serialize};

use super::raw::Raw;
use crate::arch::x86_64::vcpu_state::{VcpuState, VcpuStateError};
use crate::arch::x86_64::vm_state::{VmState, VmStateError};
use crate::config::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use crate::devices::legacy::SerialSnapshot;
use crate::devices::manager;
use crate::devices::virtio::state::DeviceSnapshot;

/// Most queues a saved device may have (virtio-fs: the high-priority queue and 64 more).
const MAX_QUEUES: usize = 65;
/// The 8250's receive FIFO.
const SERIAL_FIFO: usize = 64;

/// Why a parsed state is refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("The state does not parse")]
    Json(#[source] serde_json::Error),
    #[error("Guest memory of {0} bytes is not a whole number of MiB in {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB")]
    Memory(u64),
    #[error("{0} vCPUs (1..={MAX_VCPUS})")]
    Vcpus(usize),
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    #[error(transparent)]
    Vm(#[from] VmStateError),
    #[error("Serial port receive buffer of {0} bytes (at most {SERIAL_FIFO})")]
    Serial(usize),
    #[error(
        "Device {index} is at {base:#x} irq {irq}; husk places it at {want_base:#x} irq {want_irq}"
    )]
    Placement {
        index: usize,
        base: u64,
        irq: u32,
        want_base: u64,
        want_irq: u32,
    },
    #[error("{0} devices: more than the interrupt controller has pins for")]
    Devices(usize),
    #[error("Device {index} has {queues} queues (at most {MAX_QUEUES})")]
    Queues { index: usize, queues: usize },
}

/// A whole VM.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshot {
    /// Shared with the memory file's header: the pair belongs together.
    pub id: Raw<[u8; 16]>,
    /// The husk-vmm that wrote it (`husk-vmm --version`), for the record.
    pub vmm_version: String,
    pub memory_bytes: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub serial: SerialSnapshot,
    /// The virtio devices in the order they were placed.
    pub devices: Vec<DeviceSnapshot>,
}

impl VmSnapshot {
    /// The JSON payload.
    pub fn to_payload(&self) -> Vec<u8> {
        // Serializing plain structs into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a payload (from a state file whose header and checksum held).
    pub fn from_payload(payload: &[u8]) -> Result<Self, StateError> {
        let s: Self = serde_json::from_slice(payload).map_err(StateError::Json)?;
        s.validate()?;
        Ok(s)
    }

    pub fn memory_mib(&self) -> u64 {
        self.memory_bytes >> 20
    }

    /// Everything checkable without KVM.
    pub fn validate(&self) -> Result<(), StateError> {
        let mib = self.memory_bytes >> 20;
        if self.memory_bytes & ((1 << 20) - 1) != 0
            || !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib)
        {
            return Err(StateError::Memory(self.memory_bytes));
        }
        if self.vcpus.is_empty() || self.vcpus.len() > usize::from(MAX_VCPUS) {
            return Err(StateError::Vcpus(self.vcpus.len()));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            v.validate(i as u8)?;
        }
        self.vm.validate()?;
        if self.serial.in_buffer.len() > SERIAL_FIFO {
            return Err(StateError::Serial(self.serial.in_buffer.len()));
        }
        if self.devices.len() > manager::MAX_VIRTIO_DEVICES {
            return Err(StateError::Devices(self.devices.len()));
        }
        for (index, d) in self.devices.iter().enumerate() {
            let (want_base, want_irq) = manager::placement(index);
            if (d.mmio_base, d.irq) != (want_base, want_irq) {
                return Err(StateError::Placement {
                    index,
                    base: d.mmio_base,
                    irq: d.irq,
                    want_base,
                    want_irq,
                });
            }
            if d.transport.queues.len() > MAX_QUEUES {
                return Err(StateError::Queues {
                    index,
                    queues: d.transport.queues.len(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use kvm_bindings::{
        kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_pit_state2, kvm_regs,
        kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVM_IRQCHIP_IOAPIC,
        KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    };

    use super::*;
    use crate::arch::x86_64::vcpu_state::{CpuidEntry, MsrValue};
    use crate::devices::virtio::state::{DeviceIdentity, QueueSnapshot, TransportSnapshot};

    fn vcpu() -> VcpuState {
        VcpuState {
            cpuid: vec![CpuidEntry {
                function: 0,
                index: 0,
                flags: 0,
                eax: 0xd,
                ebx: 0x6874_7541,
                ecx: 0x444d_4163,
                edx: 0x6974_6e65,
            }],
            msrs: vec![MsrValue {
                index: 0x10,
                data: 42,
            }],
            regs: Raw(kvm_regs {
                rip: 0xffff_ffff_8100_0000,
                ..Default::default()
            }),
            sregs: Raw(kvm_sregs::default()),
            xsave: Raw(kvm_xsave::default()),
            xcrs: Raw(kvm_xcrs::default()),
            debug_regs: Raw(kvm_debugregs::default()),
            lapic: Raw(kvm_lapic_state::default()),
            mp_state: 0,
            events: Raw(kvm_vcpu_events::default()),
            tsc_khz: Some(1_000_000),
        }
    }

    /// A small but complete snapshot (KVM values are plausible, not real).
    pub(crate) fn sample() -> VmSnapshot {
        let chip = |chip_id| {
            Raw(kvm_irqchip {
                chip_id,
                ..Default::default()
            })
        };
        let (base, irq) = manager::placement(0);
        VmSnapshot {
            id: Raw([5; 16]),
            vmm_version: "husk-vmm test".into(),
            memory_bytes: 256 << 20,
            vcpus: vec![vcpu(), vcpu()],
            vm: VmState {
                pic_master: chip(KVM_IRQCHIP_PIC_MASTER),
                pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE),
                ioapic: chip(KVM_IRQCHIP_IOAPIC),
                pit: Raw(kvm_pit_state2::default()),
                clock: Raw(kvm_clock_data::default()),
            },
            serial: SerialSnapshot {
                baud_divisor_low: 12,
                baud_divisor_high: 0,
                interrupt_enable: 0,
                interrupt_identification: 1,
                line_control: 3,
                line_status: 0x60,
                modem_control: 8,
                modem_status: 0xb0,
                scratch: 0,
                in_buffer: vec![],
            },
            devices: vec![DeviceSnapshot {
                identity: DeviceIdentity::Vsock { guest_cid: 3 },
                mmio_base: base,
                irq,
                transport: TransportSnapshot {
                    device_type: 19,
                    status: 0xf,
                    features_sel: 1,
                    acked_features_sel: 1,
                    acked_features: 1 << 32,
                    queue_sel: 2,
                    interrupt_status: 0,
                    activated: true,
                    queues: vec![
                        QueueSnapshot {
                            max_size: 256,
                            next_avail: 3,
                            next_used: 3,
                            event_idx: false,
                            size: 128,
                            ready: true,
                            desc_table: 0x10_0000,
                            avail_ring: 0x10_1000,
                            used_ring: 0x10_2000,
                        };
                        3
                    ],
                },
            }],
        }
    }

    #[test]
    fn payload_round_trip() {
        let s = sample();
        let payload = s.to_payload();
        let back = VmSnapshot::from_payload(&payload).unwrap();
        assert_eq!(back.id.0, [5; 16]);
        assert_eq!(back.vcpus.len(), 2);
        assert_eq!(back.devices, s.devices);
        assert_eq!(back.serial, s.serial);
        assert_eq!(back.memory_mib(), 256);
        // Re-encoding gives the same bytes: nothing is lost or reordered.
        assert_eq!(back.to_payload(), payload);
    }

    /// The fuzz target's seeds (written by `fuzz/seeds/make_seeds.py`, which builds the
    /// format independently, in Python) are what they claim to be.
    #[test]
    fn fuzz_seeds_decode_as_named() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/snapshot_state");
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        for name in ["valid_one_vcpu", "valid_two_devices"] {
            let file = read(name);
            let payload = crate::snapshot::format::decode_state(&file).unwrap();
            VmSnapshot::from_payload(payload).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let file = read("misplaced_device");
        let payload = crate::snapshot::format::decode_state(&file).unwrap();
        assert!(matches!(
            VmSnapshot::from_payload(payload),
            Err(StateError::Placement { .. })
        ));
        let mem = read("memory_header");
        crate::snapshot::format::check_memory_header(
            &mem,
            crate::snapshot::format::MEMORY_DATA_OFFSET + (256 << 20),
            &[5; 16],
            256 << 20,
        )
        .unwrap();
    }

    #[test]
    fn refusals() {
        let check = |f: &dyn Fn(&mut VmSnapshot)| {
            let mut s = sample();
            f(&mut s);
            VmSnapshot::from_payload(&s.to_payload()).unwrap_err()
        };
        assert!(matches!(
            check(&|s| s.memory_bytes += 1),
            StateError::Memory(_)
        ));
        assert!(matches!(
            check(&|s| s.memory_bytes = 1 << 20),
            StateError::Memory(_)
        ));
        assert!(matches!(check(&|s| s.vcpus.clear()), StateError::Vcpus(0)));
        assert!(matches!(
            check(&|s| s.vcpus[1].mp_state = 1000),
            StateError::Vcpu(_)
        ));
        assert!(matches!(
            check(&|s| s.devices[0].irq = 9),
            StateError::Placement { index: 0, .. }
        ));
        assert!(matches!(
            check(&|s| s.serial.in_buffer = vec![1; 65]),
            StateError::Serial(65)
        ));
        assert!(matches!(
            check(&|s| {
                let d = s.devices[0].clone();
                s.devices = (0..30).map(|_| d.clone()).collect();
            }),
            StateError::Devices(30)
        ));
        let e = check(&|s| s.vm.ioapic.0.chip_id = 0);
        assert!(matches!(e, StateError::Vm(_)), "{e}");
        // Not JSON, JSON of something else, and an unknown field.
        assert!(matches!(
            VmSnapshot::from_payload(b"\x00\x01garbage"),
            Err(StateError::Json(_))
        ));
        assert!(matches!(
            VmSnapshot::from_payload(b"{\"kernel\": \"/k\"}"),
            Err(StateError::Json(_))
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_payload()).unwrap();
        v["surprise"] = serde_json::json!(1);
        assert!(VmSnapshot::from_payload(&serde_json::to_vec(&v).unwrap()).is_err());
    }
}
