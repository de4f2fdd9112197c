//! Start: the wall time of `ctr run --rm IMAGE ID /bin/true` under each runtime, run by
//! run in turn (for husk: starting husk-vmm and virtiofsd, the guest's boot, and `--rm`'s
//! delete of task and container).

use super::{Ctx, CTR_RUNTIMES, HUSK_TEMPLATE};
use crate::report::{ctr, shim_log, Better, Metric, Plot, SectionResult};

pub const METRIC: &str = "ctr run --rm busybox true";
pub fn section(ctx: &mut Ctx) -> SectionResult {
    let runs = ctx.sizes.start_runs;
    let mut s = SectionResult::new(
        "start",
        "Start: ctr run --rm busybox true",
        "runc",
        Plot::Cdf,
        &format!(
            "The wall time of `ctr run --rm <busybox> <id> /bin/true` (image already imported), \
             {runs} runs per runtime, interleaved, after one uncounted warm-up each. For husk it \
             includes starting husk-vmm and virtiofsd, the guest's boot and the teardown."
        ),
    );
    let mut names: Vec<&str> = CTR_RUNTIMES.to_vec();
    if ctx.husk_template {
        names.push(HUSK_TEMPLATE);
        s.notes.push(
            "`husk-template` is husk restored from its template (`template = true`: a VM \
             booted once to \"agent ready\" and snapshotted; its uncounted warm-up run built \
             it); `husk` boots every pod (`template = false`): the ratio husk/husk-template \
             is what the template saves."
                .into(),
        );
    }
    if ctx.husk_unjailed {
        names.push("husk-nojail");
        s.notes.push(
            "`husk-nojail` is husk with `jail = false` (husk-vmm not jailed): the ratio \
             husk/husk-nojail is the jail's cost."
                .into(),
        );
    }
    let Some(rts) = ctx.begin(&mut s, &names) else {
        return s;
    };
    let timeout = ctx.timeout;
    let Ok(c) = ctx.containerd() else { return s };
    for i in 1..=runs {
        for rt in &super::rotated(&rts, i) {
            let id = format!("start-{}-{i}", rt.name);
            match ctr::run(c, rt, &id, false, &[], &["/bin/true"], timeout) {
                Ok((d, _)) => {
                    let ms = d.as_secs_f64() * 1e3;
                    eprintln!("report: start {i}/{runs} {}: {ms:.0} ms", rt.name);
                    s.metric(METRIC, None, || {
                        Metric::new(METRIC, "ms", Better::Lower).headline()
                    })
                    .push(&rt.name, ms);
                }
                Err(e) => s.fail(e),
            }
        }
    }
    // Where a husk pod's time goes, from the shim's log lines: the same phases for a
    // booted and a restored pod.
    let log = c.log();
    for rt in rts.iter().filter(|r| r.is_husk()) {
        for i in 1..=runs {
            let Some(p) = shim_log::phases(&log, &format!("start-{}-{i}", rt.name)) else {
                continue;
            };
            for (name, ms) in shim_log::PHASES.iter().zip(p) {
                let metric = format!("husk phase: {name}");
                s.metric(&metric, None, || {
                    Metric::new(&metric, "ms", Better::Lower).husk_only()
                })
                .push(&rt.name, ms);
            }
        }
    }
    if rts.iter().any(|r| r.name == HUSK_TEMPLATE) {
        // The shim boots a pod cold when its template cannot be built or used: then this
        // series would be boots under another name. Its log says which pods it restored.
        let prefix = format!("pod start-{HUSK_TEMPLATE}-");
        let restored = log
            .lines()
            .filter(|l| {
                l.contains(&prefix) && l.contains(" ready after ") && l.contains("(restored)")
            })
            .count();
        s.notes
            .push(format!("{HUSK_TEMPLATE}: {restored} of {runs} timed pods were restored from the template (the shim's log)."));
        if restored < runs {
            s.fail(format!(
                "{HUSK_TEMPLATE}: only {restored} of {runs} pods were restored; the others booted cold"
            ));
        }
    }
    s
}
