//! Architecture-specific boot-time set-up.

pub mod x86_64;
