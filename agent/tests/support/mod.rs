pub mod agent;
pub mod api;
pub mod busybox_bundle;
pub mod engine;
