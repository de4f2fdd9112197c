pub mod agent;
pub mod busybox_bundle;
