//! containerd-shim-husk-v2: the containerd shim (Task API v2) that runs each pod's
//! containers in a husk VM. containerd starts it as `containerd-shim-husk-v2 -namespace
//! … -id … start|delete` or to serve; see `shim.rs` for those entry points.

mod agent;
mod config;
mod jail;
mod metrics;
mod mounts;
mod network;
mod persist;
mod pod;
mod port_forward;
mod process;
mod sandbox;
mod service;
mod shim;
mod spec;
mod stdio;
mod template;

/// The runtime name containerd knows us by.
const RUNTIME_ID: &str = "io.containerd.husk.v2";

fn main() {
    // containerd-shim parses -v/-version but does nothing with them.
    if let Some(a) = std::env::args().nth(1) {
        if ["--version", "-version", "-v"].contains(&a.as_str()) {
            println!("{}", husk_version::line("containerd-shim-husk-v2"));
            return;
        }
    }
    // The log level is known before any request: from $HUSK_CONFIG or the default file.
    // (A config named in runtime options applies from Create on; its errors are
    // reported there.)
    let level = config::Config::load(None)
        .map(|(c, _)| c.log_level)
        .unwrap_or_else(|_| "info".into());
    let opts = containerd_shim::Config {
        default_log_level: level,
        ..Default::default()
    };
    containerd_shim::run::<shim::HuskShim>(RUNTIME_ID, Some(opts));
}
