//! husk-vmm: a small KVM virtual machine monitor for husk's container sandboxes, built on
//! the rust-vmm crates.

pub mod arch;
pub mod boot;
pub mod config;
pub mod devices;
pub mod guest_ram;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

pub use config::{ConsoleConfig, VmConfig};
pub use vm::{RunStats, Vm, VmError, VmExit};
