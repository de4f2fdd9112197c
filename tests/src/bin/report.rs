//! `husk-report` (`make report`): the isolation-overhead report. Runs the sections'
//! workloads under runc, crun and husk, interleaved, and writes `report.md`,
//! `samples.csv` and one PNG per section into `--out` (default `build/report`). The
//! `make bench-*` targets run single sections of it. Asserts nothing about time; exits 1
//! (after writing the report) if any run failed.
//!
//! Usage: husk-report [--out DIR] [--quick] [--sections a,b,...] [--runs N]
//!        [--husk-unjailed] [--husk-template] [--timeout SECS] [--net-mib N] [--net-pings N]
//!        [--net-rounds N] [--dev-mib N] [--dev-files N]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_tests::report::sections::{self, Ctx, Sizes, SECTIONS};
use husk_tests::report::{system, write_report, ReportError, RunInfo};

const USAGE: &str = "usage: husk-report [--out DIR] [--quick] [--sections a,b,...] [--runs N] \
                     [--husk-unjailed] [--husk-template] [--timeout SECS] [--net-mib N] [--net-pings N] \
                     [--net-rounds N] [--dev-mib N] [--dev-files N]";

/// Every runtime the sections cover, in first-seen order.
fn runtimes_of(results: &[husk_tests::report::SectionResult]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in results {
        for rt in &r.runtimes {
            if !v.contains(rt) {
                v.push(rt.clone());
            }
        }
    }
    v
}

fn main() -> Result<()> {
    let mut out = husk_tests::workspace_root().join("build/report");
    let mut quick = false;
    let mut only: Option<Vec<String>> = None;
    let mut runs = None;
    let mut unjailed = false;
    let mut template = false;
    let mut timeout = Duration::from_secs(300);
    let mut sets: Vec<(String, u64)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--out" => out = PathBuf::from(value()?),
            "--quick" => quick = true,
            "--sections" => only = Some(value()?.split(',').map(str::to_owned).collect()),
            "--runs" => runs = Some(value()?.parse::<usize>().context("--runs")?),
            "--husk-unjailed" => unjailed = true,
            "--husk-template" => template = true,
            "--timeout" => timeout = Duration::from_secs(value()?.parse().context("--timeout")?),
            "--net-mib" | "--net-pings" | "--net-rounds" | "--dev-mib" | "--dev-files" => {
                let v = value()?;
                sets.push((a.clone(), v.parse().with_context(|| format!("{a} {v}"))?));
            }
            "-h" | "--help" => {
                println!("{USAGE}\nsections:");
                for (id, what) in SECTIONS {
                    println!("  {id:<10} {what}");
                }
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let mut sizes = if quick { Sizes::quick() } else { Sizes::full() };
    if let Some(r) = runs {
        anyhow::ensure!(r > 0, "--runs must be at least 1");
        sizes.start_runs = r;
        sizes.pod_runs = r;
        sizes.boot_runs = r;
    }
    for (k, v) in sets {
        match k.as_str() {
            "--net-mib" => sizes.net_mib = v,
            "--net-pings" => sizes.net_pings = v,
            "--net-rounds" => sizes.net_rounds = v as usize,
            "--dev-mib" => sizes.dev_mib = v,
            _ => sizes.dev_files = v,
        }
    }
    let ids: Vec<String> = match only {
        Some(ids) => {
            let known: Vec<&str> = SECTIONS.iter().map(|s| s.0).collect();
            for id in &ids {
                if !known.contains(&id.as_str()) {
                    return Err(ReportError::UnknownSection(id.clone(), known.join(", ")).into());
                }
            }
            ids
        }
        None => SECTIONS.iter().map(|s| s.0.to_owned()).collect(),
    };
    // Where the report goes must be writable before an hour of measuring.
    std::fs::create_dir_all(&out).map_err(|e| ReportError::Write(out.clone(), e))?;

    let started = Instant::now();
    let started_at =
        husk_tests::report::system::version_of("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]);
    let husk_version =
        system::version_of(&husk_tests::vmm_bin().display().to_string(), &["--version"]);
    let (facts, emulated) = system::facts(husk_version);
    eprintln!(
        "husk-report: sections {} ({} sizes) into {}",
        ids.join(","),
        if quick { "QUICK" } else { "default" },
        out.display()
    );
    let mut ctx = Ctx::new(sizes, timeout, unjailed, template);
    let mut results = Vec::new();
    let mut problems = Vec::new();
    for id in &ids {
        let t = Instant::now();
        eprintln!("husk-report: section {id} ...");
        let mut r = sections::run(id, &mut ctx).expect("checked above");
        r.notes.push(format!(
            "This section took {:.0} s.",
            t.elapsed().as_secs_f64()
        ));
        eprintln!(
            "husk-report: section {id} done in {:.0} s",
            t.elapsed().as_secs_f64()
        );
        results.push(r);
        // The report so far, after every section: a test host that freezes later (it
        // does, now and then, under emulation) loses only the section it froze in.
        let info = RunInfo {
            started: started_at.clone(),
            took_secs: started.elapsed().as_secs_f64(),
            quick,
            facts: facts.clone(),
            emulated,
        };
        problems = write_report(&out, &info, &runtimes_of(&results), &results)
            .map_err(|e| ReportError::Write(out.clone(), e))?;
    }
    drop(ctx); // containerd and whatever it left
    let md = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    println!("{md}");
    for p in &problems {
        eprintln!("husk-report: {p}");
    }
    let failed: usize = results.iter().map(|r| r.failures.len()).sum();
    eprintln!(
        "husk-report: wrote {} in {:.0} s; {failed} failed run(s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        // Not an Err: its backtrace says nothing; the failures are in the report.
        std::process::exit(1);
    }
    Ok(())
}
