pub mod busybox_bundle;
