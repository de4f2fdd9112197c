//! `husk-demo-pod` (`make demo-pod`): a Kubernetes pod of two containers under husk,
//! driven through containerd's CRI as a kubelet drives it (RuntimeClass handler `husk`,
//! `--handler runc` for the reference): a web server and a sidecar that writes the page
//! it serves into an emptyDir they share; the node fetches the page by pod IP, twice (the
//! sidecar changed it between), then the pod is stopped and removed.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_cri::{api, container_config, pod_config};
use husk_tests::containerd::BUSYBOX_IMAGE;
use husk_tests::cri_node::{http_get, wait_for, Node};
use husk_tests::guest::TempDir;

/// Errors print as their chain of causes on one line (`{e:#}`), what to do included,
/// never as a backtrace.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-demo-pod: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let handler = match args.as_slice() {
        [] => "husk".to_owned(),
        [flag, h] if flag == "--handler" => h.clone(),
        _ => bail!("usage: husk-demo-pod [--handler husk|runc]"),
    };
    let node = Node::start();
    eprintln!("demo-pod: containerd with its CRI plugin up; handler {handler}");
    let log_dir = node.logs.path().join("demo");
    std::fs::create_dir_all(&log_dir)?;
    let pod_cfg = pod_config("demo-pod", "uid-demo", &log_dir);
    let pod = node
        .cri
        .run_pod_sandbox(&pod_cfg, &handler)
        .with_context(|| format!("RunPodSandbox\n{}", node.explain()))?;
    let status = node.cri.pod_sandbox_status(&pod)?;
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    eprintln!("demo-pod: pod {} READY, IP {ip}", &pod[..12.min(pod.len())]);

    let html = TempDir::new("demo-pod-html")?;
    let volume = api::Mount {
        container_path: "/www".into(),
        host_path: html.path().display().to_string(),
        ..Default::default()
    };
    let mut web = container_config(
        "web",
        BUSYBOX_IMAGE,
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    web.mounts = vec![volume.clone()];
    let mut sidecar = container_config(
        "sidecar",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "n=0; while :; do n=$((n+1)); echo \"hello from pod $(hostname), kernel $(uname -r), page $n\" > /www/index.html; sleep 2; done",
        ],
    );
    sidecar.mounts = vec![volume];
    let mut ids = Vec::new();
    for c in [&web, &sidecar] {
        let name = c
            .metadata
            .as_ref()
            .map_or("", |m| m.name.as_str())
            .to_owned();
        let id = node
            .cri
            .create_container(&pod, c, &pod_cfg)
            .with_context(|| format!("CreateContainer {name}\n{}", node.explain()))?;
        node.cri
            .start_container(&id)
            .with_context(|| format!("StartContainer {name}"))?;
        eprintln!("demo-pod: container {name} running");
        ids.push(id);
    }
    let mut pages = Vec::new();
    for _ in 0..2 {
        let mut body = String::new();
        wait_for(
            "the page from the pod IP",
            Duration::from_secs(120),
            || match http_get(&ip, 8080, "/index.html") {
                // The sidecar's page (not httpd's 404 before its first write), a new one.
                Ok(b) if b.starts_with("hello from pod") && !pages.contains(&b) => {
                    body = b;
                    true
                }
                _ => false,
            },
        );
        println!("GET http://{ip}:8080/ -> {}", body.trim());
        pages.push(body);
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!("(the node's kernel: {})", host.trim());
    for id in &ids {
        node.cri.stop_container(id, 5)?;
        node.cri.remove_container(id)?;
    }
    node.cri.stop_pod_sandbox(&pod)?;
    node.cri.remove_pod_sandbox(&pod)?;
    let left = node.containerd.wait_clean(Duration::from_secs(30));
    if !left.is_empty() {
        bail!("left behind:\n{left}");
    }
    eprintln!("demo-pod: pod stopped and removed, nothing left behind");
    Ok(())
}
