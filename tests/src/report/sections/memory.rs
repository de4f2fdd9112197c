//! Density and memory: host memory of N idle pods (`sleep 3600`) per runtime, for each N
//! of the sizes (1, 5, 10 by default): PSS and USS summed over every process the runtime
//! added (shims, husk-vmm, virtiofsd, and the containers' own processes under runc and
//! crun), plus the guest RAM husk's guests actually touched; and the per-pod slope.
//! One runtime at a time (pods of two runtimes would share pages and blur PSS).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Ctx, CTR_RUNTIMES, HUSK_TEMPLATE};
use crate::containerd::Containerd;
use crate::report::ctr::{self, Runtime};
use crate::report::stats::linear_fit;
use crate::report::{Better, Metric, Plot, SectionResult};

const PSS: &str = "host PSS";
const USS: &str = "host USS";
const GUEST: &str = "guest RAM touched";
const SLOPE: &str = "PSS per added pod (slope)";

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One measurement: (PSS KiB, USS KiB, guest RAM touched KiB, PSS KiB by command).
fn measure(c: &Containerd) -> (u64, u64, u64, BTreeMap<String, u64>) {
    let (mut pss, mut uss, mut guest) = (0, 0, 0);
    let mut by = BTreeMap::new();
    for (pid, comm) in ctr::runtime_processes(c, c.pid()) {
        let Some((p, u)) = ctr::pss_uss(pid) else {
            continue; // gone meanwhile (a short-lived helper)
        };
        pss += p;
        uss += u;
        *by.entry(comm.clone()).or_insert(0) += p;
        if comm == "husk-vmm" {
            let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
            guest += ctr::guest_ram_field(&smaps, "Rss").unwrap_or(0);
        }
    }
    (pss, uss, guest, by)
}

pub fn section(ctx: &mut Ctx) -> SectionResult {
    let counts = ctx.sizes.density_pods.clone();
    let settle = Duration::from_secs(5);
    let mut s = SectionResult::new(
        "density",
        "Density and memory: idle pods",
        "runc",
        Plot::Lines,
        &format!(
            "For N = {counts:?} idle pods (`ctr run -d ... sleep 3600`, measured {} s after the \
             last is RUNNING): PSS and USS (private clean + dirty) from /proc/PID/smaps_rollup, \
             summed over every process the runtime added (the shims, husk-vmm and virtiofsd, \
             and the containers' processes under runc and crun); for husk also the guest RAM \
             the guests touched (the resident pages of husk-vmm's guest RAM mapping, the memfd \
             of a booted VM or the snapshot's memory file of a restored one, already inside \
             its PSS). One runtime at a time; the slope is the least-squares \
             line through the N points.",
            settle.as_secs()
        ),
    );
    s.x_label = "pod(s)".into();
    let mut names: Vec<&str> = CTR_RUNTIMES.to_vec();
    if ctx.husk_template {
        names.push(HUSK_TEMPLATE);
        s.notes.push(format!(
            "`{HUSK_TEMPLATE}`: pods restored from the shim's template. Their guest RAM is \
             the template's memory file mapped copy-on-write (virtiofsd never maps guest \
             RAM: husk-vmm relays its requests): the template's pages a pod only reads are \
             one copy in the page cache for all of them (in PSS by their share), what a pod \
             writes is its own. Guest RAM touched counts the shared pages in every pod. \
             USS (pages only one process maps) counts a booted pod's guest RAM in full \
             since virtiofsd no longer maps it too; PSS is the figure to compare.",
        ));
    }
    let Some(rts) = ctx.begin(&mut s, &names) else {
        return s;
    };
    let timeout = ctx.timeout;
    let Ok(c) = ctx.containerd() else { return s };
    for rt in &rts {
        let mut ids: Vec<String> = Vec::new();
        let mut points = Vec::new();
        let mut breakdown = String::new();
        'counts: for &n in &counts {
            while ids.len() < n {
                let id = format!("idle-{}-{}", rt.name, ids.len() + 1);
                match start_idle(c, rt, &id, timeout) {
                    Ok(()) => ids.push(id),
                    Err(e) => {
                        s.fail(e);
                        break 'counts;
                    }
                }
            }
            std::thread::sleep(settle);
            let (pss, uss, guest, by) = measure(c);
            eprintln!(
                "report: density {} x{n}: PSS {:.1} MiB, USS {:.1} MiB, guest touched {:.1} MiB",
                rt.name,
                mib(pss),
                mib(uss),
                mib(guest)
            );
            let x = Some(n as f64);
            s.metric(PSS, x, || Metric::new(PSS, "MiB", Better::Lower))
                .push(&rt.name, mib(pss));
            s.metric(USS, x, || Metric::new(USS, "MiB", Better::Lower))
                .push(&rt.name, mib(uss));
            if rt.is_husk() {
                s.metric(GUEST, x, || {
                    Metric::new(GUEST, "MiB", Better::Lower).husk_only()
                })
                .push(&rt.name, mib(guest));
            }
            points.push((n as f64, mib(pss)));
            breakdown = by
                .iter()
                .map(|(k, v)| format!("{k} {:.1}", mib(*v)))
                .collect::<Vec<_>>()
                .join(", ");
            breakdown = format!(
                "{} with {n} pod(s), PSS MiB by process name: {breakdown}",
                rt.name
            );
        }
        if let Some((slope, _)) = linear_fit(&points) {
            s.metric(SLOPE, None, || {
                Metric::new(SLOPE, "MiB/pod", Better::Lower).headline()
            })
            .push(&rt.name, slope);
        }
        if !breakdown.is_empty() {
            s.notes.push(breakdown);
        }
        for id in &ids {
            if let Err(e) = ctr::remove(c, id) {
                s.fail(format!("{} teardown of {id}: {e}", rt.name));
                let _ = ctr::clean_up(c, id);
            }
        }
        let left = c.wait_clean(Duration::from_secs(60));
        if !left.is_empty() {
            s.fail(format!(
                "{} left behind after its idle pods: {}",
                rt.name,
                left.replace('\n', "; ")
            ));
        }
    }
    s
}

fn start_idle(c: &Containerd, rt: &Runtime, id: &str, timeout: Duration) -> Result<(), String> {
    ctr::run(c, rt, id, true, &[], &["sleep", "3600"], timeout)?;
    ctr::wait_status(c, id, "RUNNING", Duration::from_secs(120)).inspect_err(|_| {
        let _ = ctr::clean_up(c, id);
    })
}
