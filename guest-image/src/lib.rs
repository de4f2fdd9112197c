//! Builds the husk guest initramfs: a newc cpio archive with husk-agent as
//! `/init`.
//!
//! - [`cpio`]: a small deterministic newc cpio writer.
//! - [`initramfs`]: what goes into the image, and checks on the agent binary.

pub mod cpio;
pub mod initramfs;
