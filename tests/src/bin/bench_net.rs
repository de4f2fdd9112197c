//! Network benchmark: TCP throughput host -> pod and pod -> host, and 1-byte
//! request/response latency, for a runc pod and a husk pod on the same CNI bridge
//! (`husk_tests::cni`: CNI bridge + host-local, each pod in its own namespace joined with
//! `ctr run --with-ns`), measured interleaved in one session. The host side is the
//! bridge's node namespace; both ends are `husk-net-probe` (a server in each pod).
//! Prints figures side by side and the ratio husk/runc; asserts nothing about time.
//!
//! Usage: husk-bench-net [--mib N] [--pings N] [--rounds N] [--runc-only]
//! (defaults: `NET_MIB` or 256, `NET_PINGS` or 10000, `NET_ROUNDS` or 3; `--runc-only`
//! checks the set-up where husk cannot boot)

use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_tests::cni::{probe_field, Network, Pod};
use husk_tests::containerd::{Containerd, HuskToml, RUNTIME};
use husk_tests::{kvm_unusable_reason, net_probe_bin, require_file};

const RUNC: &str = "io.containerd.runc.v2";
const PROBE: &str = "/bin/husk-net-probe";
const PORT: u16 = 5000;

fn arg(args: &[String], name: &str, env: &str, default: u64) -> Result<u64> {
    if let Some(i) = args.iter().position(|a| a == name) {
        return args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} needs a number"));
    }
    Ok(std::env::var(env)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default))
}

/// One runtime's pod with the probe's server running in it.
struct Side<'a> {
    runtime: &'static str,
    label: &'static str,
    id: &'static str,
    pod: Pod<'a>,
    put: Vec<f64>,
    get: Vec<f64>,
    median_us: Vec<f64>,
    p99_us: Vec<f64>,
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib = arg(&args, "--mib", "NET_MIB", 256)?;
    let pings = arg(&args, "--pings", "NET_PINGS", 10_000)?;
    let rounds = arg(&args, "--rounds", "NET_ROUNDS", 3)?;
    let runc_only = args.iter().any(|a| a == "--runc-only");
    if let Some(why) = kvm_unusable_reason().filter(|_| !runc_only) {
        bail!("husk cannot run here: {why} (`make bench-net` runs this in the test host)");
    }
    require_file(&net_probe_bin());
    let c = Containerd::start(&HuskToml::default())?;
    c.import_busybox_with(&[(net_probe_bin().as_path(), PROBE)])?;
    let net = Network::new(None)?;
    let mut sides = Vec::new();
    let runtimes = [
        (RUNC, "runc", "bench-runc"),
        (RUNTIME, "husk", "bench-husk"),
    ];
    for (runtime, label, id) in runtimes.into_iter().take(if runc_only { 1 } else { 2 }) {
        let pod = net.add_pod()?;
        let o = c.run_in_netns(
            runtime,
            &pod.netns,
            id,
            true,
            &[PROBE, "serve", &format!("0.0.0.0:{PORT}")],
        )?;
        if o.code() != Some(0) {
            bail!(
                "{label}: ctr run -d of the server failed: {}{}",
                o.stdout,
                o.stderr
            );
        }
        sides.push(Side {
            runtime,
            label,
            id,
            pod,
            put: Vec::new(),
            get: Vec::new(),
            median_us: Vec::new(),
            p99_us: Vec::new(),
        });
    }
    // The offloads the guest's virtio-net driver negotiated (sysfs `features`: one
    // character per feature bit), read in the husk pod.
    let husk_id = sides.iter().find(|s| s.runtime == RUNTIME).map(|s| s.id);
    let in_husk = |exec_id: &str, script: &str| -> Option<String> {
        let id = husk_id?;
        match c.ctr(&["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script]) {
            Ok(o) if o.code() == Some(0) => Some(o.stdout),
            Ok(o) => {
                println!("  husk pod: {script}: {}{}", o.stdout, o.stderr);
                None
            }
            Err(e) => {
                println!("  husk pod: {script}: {e:#}");
                None
            }
        }
    };
    // The guest's own view of its TCP and eth0 (retransmissions, drops), for the end.
    let guest_stats = || {
        in_husk(
            "stats",
            "grep -A1 '^Tcp:' /proc/net/snmp | awk '{print $11, $12, $13, $14}'; grep eth0 /proc/net/dev",
        )
    };
    let mut offloads = String::from("-");
    {
        let script = "for d in /sys/bus/virtio/devices/*; do \
                      [ \"$(cat $d/device)\" = 0x0001 ] && cat $d/features; done";
        if let Some(out) = in_husk("features", script) {
            {
                let bits = out.lines().next().unwrap_or("").trim();
                let features = bits
                    .bytes()
                    .enumerate()
                    .filter(|&(i, b)| b == b'1' && i < 64)
                    .fold(0u64, |f, (i, _)| f | 1 << i);
                offloads = husk_vmm::devices::virtio::net::feature_names(features);
            }
        }
    }
    let bytes = (mib << 20).to_string();
    let wait = husk_tests::boot_timeout().as_secs().to_string();
    let timeout = Duration::from_secs(1800);
    println!(
        "husk-bench-net: {mib} MiB per transfer, {pings} round trips, {rounds} rounds, \
         runc and husk interleaved (host side: the bridge's namespace)\n\
         husk's virtio-net features (as the guest negotiated them): {offloads}"
    );
    let mut failed = 0;
    for r in 0..rounds {
        for step in ["put", "get", "ping"] {
            for s in sides.iter_mut() {
                let to = format!("{}:{PORT}", s.pod.ip);
                let count = pings.to_string();
                let a: Vec<&str> = match step {
                    "ping" => vec!["ping", &to, &count, "--wait", &wait],
                    _ => vec![step, &to, &bytes, "--wait", &wait],
                };
                eprintln!("round {r}: {} {step} ...", s.label);
                let o = net.probe(&a, timeout);
                let out = match o {
                    Ok(o) if o.code() == Some(0) => o.stdout,
                    Ok(o) => {
                        println!("  FAILED {} {step}: {}{}", s.label, o.stdout, o.stderr);
                        failed += 1;
                        continue;
                    }
                    Err(e) => {
                        println!("  FAILED {} {step}: {e:#}", s.label);
                        failed += 1;
                        continue;
                    }
                };
                eprintln!("round {r}: {} {}", s.label, out.trim());
                let num = |k: &str| probe_field(&out, k).and_then(|v| v.parse::<f64>().ok());
                match step {
                    "put" => s.put.extend(num("mib_s")),
                    "get" => s.get.extend(num("mib_s")),
                    _ => {
                        s.median_us.extend(num("median_us"));
                        s.p99_us.extend(num("p99_us"));
                    }
                }
            }
        }
    }
    let show = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.1}"));
    println!(
        "\n{:<36} {:>12} {:>12} {:>12}",
        "medians over rounds", "runc", "husk", "husk/runc"
    );
    for (what, get) in [
        (
            "TCP host -> pod (MiB/s)",
            (|s: &Side| median(&s.put)) as fn(&Side) -> Option<f64>,
        ),
        ("TCP pod -> host (MiB/s)", |s: &Side| median(&s.get)),
        ("1-byte round trip, median (us)", |s: &Side| {
            median(&s.median_us)
        }),
        ("1-byte round trip, p99 (us)", |s: &Side| median(&s.p99_us)),
    ] {
        let (a, b) = (get(&sides[0]), sides.get(1).and_then(get));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
            _ => "-".into(),
        };
        println!("{what:<36} {:>12} {:>12} {ratio:>12}", show(a), show(b));
    }
    if let Some(stats) = guest_stats() {
        println!("\nhusk guest after the run (TCP InSegs OutSegs RetransSegs InErrs; /proc/net/dev eth0):\n{stats}");
    }
    for s in &sides {
        for a in [
            vec!["task", "rm", "-f", s.id],
            vec!["container", "rm", s.id],
        ] {
            if let Err(e) = c.ctr(&a) {
                println!("  {}: ctr {a:?}: {e:#}", s.runtime);
                failed += 1;
            }
        }
    }
    let left = c.wait_clean(Duration::from_secs(30));
    if !left.is_empty() {
        println!("left behind:\n{left}");
        failed += 1;
    }
    if failed > 0 {
        bail!("{failed} step(s) failed (above)");
    }
    Ok(())
}
