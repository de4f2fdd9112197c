//! `husk-bench-pod` (`make bench-pod`): Kubernetes pod start and teardown through
//! containerd's CRI, handler runc against handler husk, interleaved run by run in one
//! node (one containerd with its CRI plugin): start is RunPodSandbox + CreateContainer +
//! StartContainer of a busybox container (the pod's sandbox with its CNI network, then
//! the container running), teardown is StopContainer + RemoveContainer +
//! StopPodSandbox + RemovePodSandbox. Prints medians side by side with the ratio
//! husk/runc; asserts nothing about time. A failed run is printed, left out of the
//! figures, and makes the exit status nonzero.
//!
//! Usage: husk-bench-pod [--runs N] (default 10)

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_cri::{container_config, pod_config};
use husk_tests::containerd::BUSYBOX_IMAGE;
use husk_tests::cri_node::Node;
use husk_tests::{median, ms};

const HANDLERS: [&str; 2] = ["runc", "husk"];

/// One pod's start and teardown.
fn cycle(node: &Node, handler: &str, run: usize) -> Result<(Duration, Duration)> {
    let name = format!("bench-{handler}-{run}");
    let log_dir = node.logs.path().join(&name);
    std::fs::create_dir_all(&log_dir)?;
    let pod_cfg = pod_config(&name, &format!("uid-{name}"), &log_dir);
    let app = container_config("app", BUSYBOX_IMAGE, &["sleep", "3600"]);
    let t0 = Instant::now();
    let pod = node
        .cri
        .run_pod_sandbox(&pod_cfg, handler)
        .context("RunPodSandbox")?;
    let id = node
        .cri
        .create_container(&pod, &app, &pod_cfg)
        .context("CreateContainer")?;
    node.cri.start_container(&id).context("StartContainer")?;
    let start = t0.elapsed();
    let t1 = Instant::now();
    node.cri.stop_container(&id, 0).context("StopContainer")?;
    node.cri.remove_container(&id).context("RemoveContainer")?;
    node.cri.stop_pod_sandbox(&pod).context("StopPodSandbox")?;
    node.cri
        .remove_pod_sandbox(&pod)
        .context("RemovePodSandbox")?;
    Ok((start, t1.elapsed()))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = match args.as_slice() {
        [] => 10,
        [flag, n] if flag == "--runs" => n.parse().context("--runs N")?,
        _ => bail!("usage: husk-bench-pod [--runs N]"),
    };
    if let Some(why) = husk_tests::kvm_unusable_reason() {
        bail!("husk cannot run here: {why} (`make bench-pod` runs this in the test host)");
    }
    let node = Node::start();
    println!("husk-bench-pod: {runs} runs per handler, interleaved, one containerd with CRI");
    let mut starts = [Vec::new(), Vec::new()];
    let mut teardowns = [Vec::new(), Vec::new()];
    let mut failed = 0;
    for run in 0..runs {
        for (h, handler) in HANDLERS.iter().enumerate() {
            match cycle(&node, handler, run) {
                Ok((s, t)) => {
                    eprintln!(
                        "run {run}: {handler} start {:.0} ms, teardown {:.0} ms",
                        ms(s),
                        ms(t)
                    );
                    starts[h].push(s);
                    teardowns[h].push(t);
                }
                Err(e) => {
                    println!("  FAILED run {run} {handler}: {e:#}\n{}", node.explain());
                    failed += 1;
                }
            }
        }
    }
    println!(
        "\n{:<44} {:>10} {:>10} {:>10}",
        "medians (ms)", "runc", "husk", "husk/runc"
    );
    for (what, v) in [
        ("pod start (RunPodSandbox..StartContainer)", &starts),
        ("pod teardown (StopContainer..RemovePod)", &teardowns),
    ] {
        let (a, b) = (median(&v[0]), median(&v[1]));
        let ratio = if v[0].is_empty() || v[1].is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2}", b.as_secs_f64() / a.as_secs_f64())
        };
        println!("{what:<44} {:>10.0} {:>10.0} {ratio:>10}", ms(a), ms(b));
    }
    let left = node.containerd.wait_clean(Duration::from_secs(30));
    if !left.is_empty() {
        println!("left behind:\n{left}");
        failed += 1;
    }
    if failed > 0 {
        bail!("{failed} run(s) failed (above)");
    }
    Ok(())
}
