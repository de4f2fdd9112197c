//! containerd-shim-husk-v2. The Task service lands with the shim issue; until then the
//! binary refuses to run rather than pretend to.

fn main() {
    eprintln!("containerd-shim-husk-v2: the containerd Task service is not implemented yet");
    std::process::exit(1);
}
