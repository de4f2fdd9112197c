//! Snapshots of a running VM and restoring them: see `format` for the files, `state` for
//! what they hold.

pub mod format;
pub mod raw;
