//! Network: one pod per runtime on one CNI bridge (`crate::cni`: bridge + host-local in
//! a private node namespace, each pod joined with `ctr run --with-ns`), a
//! `husk-net-probe` server in each; from the node namespace, round by round and runtime
//! by runtime: TCP throughput host -> pod and pod -> host, and 1-byte round trips.

use std::time::Duration;

use super::{Ctx, CTR_RUNTIMES};
use crate::cni::{probe_field, Network, Pod};
use crate::report::ctr::{self, Runtime};
use crate::report::{Better, Metric, Plot, SectionResult};

const PROBE: &str = "/bin/husk-net-probe";
const PORT: u16 = 5000;

pub fn section(ctx: &mut Ctx) -> SectionResult {
    let (mib, pings, rounds) = (ctx.sizes.net_mib, ctx.sizes.net_pings, ctx.sizes.net_rounds);
    let mut s = SectionResult::new(
        "network",
        "Network: TCP host <-> container",
        "runc",
        Plot::Bars,
        &format!(
            "One pod per runtime on one CNI bridge (Debian's `bridge` + `host-local` plugins, \
             the bridge in a private node namespace; husk joins the pod's veth to its tap with \
             tc redirect). From the node: {mib} MiB over TCP host -> pod (`put`) and pod -> host \
             (`get`), each end hashing what it sent or received, and {pings} 1-byte round \
             trips (`ping`: median and p99 per round). {rounds} rounds, runtimes interleaved \
             step by step; the table's samples are the rounds."
        ),
    );
    let Some(rts) = ctx.begin(&mut s, &CTR_RUNTIMES) else {
        return s;
    };
    let timeout = ctx.timeout;
    let Ok(c) = ctx.containerd() else { return s };
    let net = match Network::new(None) {
        Ok(n) => n,
        Err(e) => {
            for rt in &rts {
                s.skipped
                    .insert(rt.name.clone(), format!("no CNI network: {e:#}"));
            }
            return s;
        }
    };
    let mut sides: Vec<(Runtime, Pod, String)> = Vec::new();
    for rt in &rts {
        let id = format!("net-{}", rt.name);
        let pod = match net.add_pod() {
            Ok(p) => p,
            Err(e) => {
                s.fail(format!("{}: CNI ADD: {e:#}", rt.name));
                continue;
            }
        };
        let extra = vec![
            "--with-ns".to_owned(),
            format!("network:{}", pod.netns.display()),
        ];
        let serve = format!("0.0.0.0:{PORT}");
        match ctr::run(c, rt, &id, true, &extra, &[PROBE, "serve", &serve], timeout) {
            Ok(_) => sides.push((rt.clone(), pod, id)),
            Err(e) => s.fail(format!("{}: the server's ctr run -d: {e}", rt.name)),
        }
    }
    let bytes = (mib << 20).to_string();
    let wait = crate::boot_timeout().as_secs().to_string();
    let count = pings.to_string();
    for r in 1..=rounds {
        for step in ["put", "get", "ping"] {
            for (rt, pod, _) in sides.iter().cycle().skip(r).take(sides.len()) {
                let to = format!("{}:{PORT}", pod.ip);
                let a: Vec<&str> = match step {
                    "ping" => vec!["ping", &to, &count, "--wait", &wait],
                    _ => vec![step, &to, &bytes, "--wait", &wait],
                };
                let out = match net.probe(&a, Duration::from_secs(1800)) {
                    Ok(o) if o.code() == Some(0) => o.stdout,
                    Ok(o) => {
                        s.fail(format!(
                            "{} {step} round {r}: {}{}",
                            rt.name, o.stdout, o.stderr
                        ));
                        continue;
                    }
                    Err(e) => {
                        s.fail(format!("{} {step} round {r}: {e:#}", rt.name));
                        continue;
                    }
                };
                eprintln!("report: network round {r} {}: {}", rt.name, out.trim());
                let num = |k: &str| probe_field(&out, k).and_then(|v| v.parse::<f64>().ok());
                let fields: &[(&str, &str, &str, Better, bool)] = match step {
                    "put" => &[("mib_s", "TCP host -> pod", "MiB/s", Better::Higher, true)],
                    "get" => &[("mib_s", "TCP pod -> host", "MiB/s", Better::Higher, true)],
                    _ => &[
                        (
                            "median_us",
                            "1-byte round trip, median",
                            "us",
                            Better::Lower,
                            true,
                        ),
                        (
                            "p99_us",
                            "1-byte round trip, p99",
                            "us",
                            Better::Lower,
                            false,
                        ),
                    ],
                };
                for (k, name, unit, better, head) in fields {
                    match num(k) {
                        Some(v) => s
                            .metric(name, None, || {
                                Metric::new(name, unit, *better).headline_if(*head)
                            })
                            .push(&rt.name, v),
                        None => s.fail(format!("{} {step}: no {k} in {out:?}", rt.name)),
                    }
                }
            }
        }
    }
    for (rt, _, id) in &sides {
        if let Err(e) = ctr::remove(c, id) {
            s.fail(format!("{} teardown: {e}", rt.name));
            let _ = ctr::clean_up(c, id);
        }
    }
    drop(sides);
    s
}
