//! `husk-demo`: the README's main job. Starts a private containerd with the husk runtime,
//! imports a busybox image built here, and runs a container under husk that prints the
//! guest kernel's version next to the host's: proof that it ran in a VM; then a second
//! container, whose pod starts from the pod template the first one built.

use anyhow::{bail, Result};
use husk_tests::containerd::{Containerd, HuskToml};
use husk_tests::Outcome;

/// Errors print as their chain of causes on one line (`{e:#}`), what to do included,
/// never as a backtrace.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    // `husk-demo --busybox-archive DIR`: only write the image archive (for scripts that
    // import it into another containerd) and print its path.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir] = args.as_slice() {
        if flag == "--busybox-archive" {
            let p = husk_tests::containerd::build_busybox_archive(std::path::Path::new(dir))?;
            println!("{}", p.display());
            return Ok(());
        }
    }
    let c = Containerd::start(&HuskToml::default())?;
    eprintln!("demo: private containerd up at {}", c.socket.display());
    c.import_busybox()?;
    eprintln!("demo: busybox image imported; ctr run --rm --runtime io.containerd.husk.v2 ...");
    let o = run_ok(
        &c,
        "husk-demo",
        &[
            "sh",
            "-c",
            "echo \"guest kernel: $(uname -r) ($(uname -v))\"",
        ],
    )?;
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let hostv = std::fs::read_to_string("/proc/sys/kernel/version")?;
    print!("{}", o.stdout);
    println!("host kernel:  {} ({})", host.trim(), hostv.trim());
    // The first pod of its size builds the pod template (a VM booted once and
    // snapshotted) and is restored from it; a second pod is only restored.
    eprintln!(
        "demo: the container ran in {:.1?} (ctr run; {})",
        o.elapsed,
        how_started(&c, "husk-demo")
    );
    let again = run_ok(&c, "husk-demo-2", &["true"])?;
    eprintln!(
        "demo: a second container ran in {:.1?} (ctr run; {})",
        again.elapsed,
        how_started(&c, "husk-demo-2")
    );
    let left = c.wait_clean(std::time::Duration::from_secs(30));
    if !left.is_empty() {
        bail!("left behind after the run:\n{left}");
    }
    Ok(())
}

/// `ctr run --rm` of the busybox image under husk; an error unless it exited 0.
fn run_ok(c: &Containerd, id: &str, args: &[&str]) -> Result<Outcome> {
    let o = c.run_rm(id, args)?;
    if o.code() != Some(0) {
        bail!(
            "ctr run {id} failed ({}):\n{}{}\n{}",
            o.status,
            o.stdout,
            o.stderr,
            c.log()
        );
    }
    Ok(o)
}

/// How pod `id` started, from the shim's log.
fn how_started(c: &Containerd, id: &str) -> &'static str {
    match c.pod_restored(id) {
        Some(true) => "restored from the pod template, which the first pod of its size builds",
        Some(false) => "its VM booted",
        None => "VM start included",
    }
}
