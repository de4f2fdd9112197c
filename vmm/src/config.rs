//! VM configuration: the `husk-vm-config` crate, the contract husk-vmm shares with the shim
//! and the tests.

pub use husk_vm_config::*;
