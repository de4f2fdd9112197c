//! Pod start and teardown through containerd's CRI (one node: containerd with its CRI
//! plugin and a CNI bridge), handler by handler in turn, run by run: start is
//! RunPodSandbox + CreateContainer + StartContainer of a busybox container (the pod's
//! sandbox with its CNI network, then the container running), teardown is StopContainer
//! + RemoveContainer + StopPodSandbox + RemovePodSandbox.

use std::time::{Duration, Instant};

use anyhow::Context;
use husk_cri::{container_config, pod_config};

use super::{write_variant, Ctx, CTR_RUNTIMES, HUSK_BASE, HUSK_TEMPLATE};
use crate::containerd::{HuskToml, BUSYBOX_IMAGE};
use crate::cri_node::Node;
use crate::guest::TempDir;
use crate::report::ctr;
use crate::report::{Better, Metric, Plot, SectionResult};

const START: &str = "pod start (RunPodSandbox..StartContainer)";
const TEARDOWN: &str = "pod teardown (StopContainer..RemovePodSandbox)";

fn cycle(node: &Node, handler: &str, run: usize) -> anyhow::Result<(Duration, Duration)> {
    let name = format!("report-{handler}-{run}");
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

pub fn section(ctx: &mut Ctx) -> SectionResult {
    let runs = ctx.sizes.pod_runs;
    let mut s = SectionResult::new(
        "pod",
        "Pod start through CRI",
        "runc",
        Plot::Cdf,
        &format!(
            "Through containerd's CRI plugin (our CRI client, a CNI bridge with host-local IPAM, \
             our pause image): start = RunPodSandbox + CreateContainer + StartContainer of a \
             busybox `sleep`, teardown = StopContainer + RemoveContainer + StopPodSandbox + \
             RemovePodSandbox. {runs} pods per handler, interleaved. Handlers: `runc`, `crun` \
             (runc's shim with crun behind its wrapper as `BinaryName`) and `husk`."
        ),
    );
    let mut names: Vec<&str> = CTR_RUNTIMES.to_vec();
    if ctx.husk_template {
        names.push(HUSK_TEMPLATE);
        s.notes.push(
            "`husk-template` is the handler `husk` with `template = true` (pods restored \
             from a template VM; its uncounted warm-up pod built it); `husk` boots every \
             pod."
                .into(),
        );
    }
    // The ctr-based runtimes' checks (crun's and husk's warm-ups) say which can run.
    let Some(_) = ctx.begin(&mut s, &names) else {
        return s;
    };
    let crun_dir = match TempDir::new("report-crun") {
        Ok(d) => d,
        Err(e) => {
            s.fail(format!("scratch dir: {e:#}"));
            return s;
        }
    };
    let mut extra = String::new();
    if !s.skipped.contains_key("crun") {
        match ctr::crun(crun_dir.path()) {
            Ok(rt) => {
                let wrapper = rt.runc_binary.expect("crun has a wrapper");
                extra = format!(
                    "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun]\n  \
                     runtime_type = \"io.containerd.runc.v2\"\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun.options]\n  \
                     BinaryName = {:?}\n",
                    wrapper.display().to_string()
                );
            }
            Err(why) => {
                s.skipped.insert("crun".into(), why);
            }
        }
    }
    // The template handler's husk.toml: written once containerd (whose config names it)
    // made the base one, before any pod.
    let template_config = crun_dir.path().join("husk-template.toml");
    if names.contains(&HUSK_TEMPLATE) && !s.skipped.contains_key(HUSK_TEMPLATE) {
        extra.push_str(&format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{HUSK_TEMPLATE}]\n  \
             runtime_type = \"io.containerd.husk.v2\"\n  pod_annotations = []\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{HUSK_TEMPLATE}.options]\n  \
             ConfigPath = {:?}\n",
            template_config.display().to_string()
        ));
    }
    let husk = HuskToml {
        extra: HUSK_BASE.into(),
        ..HuskToml::default()
    };
    let node = match Node::try_start_with(&husk, &extra).and_then(|n| {
        if names.contains(&HUSK_TEMPLATE) {
            write_variant(
                &n.containerd.husk_config,
                &template_config,
                "template",
                "true",
            )
            .map_err(anyhow::Error::msg)?;
        }
        Ok(n)
    }) {
        Ok(n) => n,
        Err(e) => {
            for r in &names {
                s.skipped
                    .entry(r.to_string())
                    .or_insert(format!("the CRI node did not start: {e:#}"));
            }
            return s;
        }
    };
    let handlers: Vec<&str> = names
        .iter()
        .copied()
        .filter(|h| !s.skipped.contains_key(*h))
        .collect();
    // One uncounted warm-up per handler (the pause image's first snapshot, CNI's first
    // bridge); a handler whose warm-up fails is left out with the reason.
    let mut ok = Vec::new();
    for h in handlers {
        match cycle(&node, h, 0) {
            Ok(_) => ok.push(h),
            Err(e) => {
                let why = format!("warm-up pod failed: {e:#}");
                eprintln!("report: pod: {h} {why}\n{}", node.explain());
                s.skipped.insert(h.into(), why);
            }
        }
    }
    for run in 1..=runs {
        for h in &super::rotated(&ok, run) {
            match cycle(&node, h, run) {
                Ok((st, td)) => {
                    eprintln!(
                        "report: pod {run}/{runs} {h}: start {:.0} ms, teardown {:.0} ms",
                        st.as_secs_f64() * 1e3,
                        td.as_secs_f64() * 1e3
                    );
                    s.metric(START, None, || {
                        Metric::new(START, "ms", Better::Lower).headline()
                    })
                    .push(h, st.as_secs_f64() * 1e3);
                    s.metric(TEARDOWN, None, || {
                        Metric::new(TEARDOWN, "ms", Better::Lower)
                    })
                    .push(h, td.as_secs_f64() * 1e3);
                }
                Err(e) => {
                    eprintln!("{}", node.explain());
                    s.fail(format!("{h} pod {run}: {e:#}"));
                }
            }
        }
    }
    if ok.contains(&HUSK_TEMPLATE) {
        // As in the start section: a pod whose template failed boots cold. Only this
        // handler's pods can be restored (`husk` has `template = false`); its warm-up is
        // one of them.
        let restored = node
            .containerd
            .log()
            .lines()
            .filter(|l| l.contains(" ready after ") && l.contains("(restored)"))
            .count();
        let want = runs + 1;
        s.notes.push(format!(
            "{HUSK_TEMPLATE}: {restored} of its {want} pods (with the warm-up) were restored \
             from the template (the shim's log)."
        ));
        if restored < want {
            s.fail(format!(
                "{HUSK_TEMPLATE}: only {restored} of {want} pods were restored; the others \
                 booted cold"
            ));
        }
    }
    let left = node.containerd.wait_clean(Duration::from_secs(30));
    if !left.is_empty() {
        s.fail(format!("left behind: {}", left.replace('\n', "; ")));
    }
    s
}
