//! `husk-report` end to end: two QUICK-sized sections (start and syscalls) under runc,
//! crun and husk through a private containerd, and what it wrote: `report.md` with a
//! table row per runtime per section and the headline, `samples.csv` with samples of every
//! runtime that ran, and PNG plots that decode. Asserts nothing about any measured time.

use std::process::Command;
use std::time::Duration;

use husk_tests::guest::TempDir;
use husk_tests::report::plot::{decode_png, distinct_colors};
use husk_tests::{kvm_available, run_with_watchdog};

const SECTIONS: [(&str, &str); 2] = [
    ("start", "Start: ctr run --rm busybox true"),
    ("syscalls", "Syscalls: ns per call inside the container"),
];

/// The markdown table rows (`| ... |` lines) under the `## title` heading.
fn section_rows<'a>(md: &'a str, title: &str) -> Vec<Vec<&'a str>> {
    let Some(start) = md.find(&format!("\n## {title}\n")) else {
        panic!("no section {title:?} in report.md:\n{md}");
    };
    let body = &md[start + 4 + title.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    body.lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| ---") && !l.starts_with("| metric"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect()
}

#[test]
#[ignore = "boots guests on KVM: `make test` runs it, in the test host where needed"]
fn quick_report_writes_tables_csv_and_plots() {
    if !kvm_available("quick_report_writes_tables_csv_and_plots") {
        return;
    }
    let out = TempDir::new("report-test").unwrap();
    let o = run_with_watchdog(
        Command::new(env!("CARGO_BIN_EXE_husk-report"))
            .args([
                "--quick",
                "--runs",
                "2",
                "--sections",
                "start,syscalls",
                "--out",
            ])
            .arg(out.path()),
        Duration::from_secs(1500),
    )
    .unwrap();
    eprintln!("{}", o.stderr);
    assert_eq!(o.code(), Some(0), "husk-report failed:\n{}", o.stdout);
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        md.contains("## Headline: ratio of medians to the reference"),
        "{md}"
    );
    assert!(md.contains("| nested under emulation |"), "{md}");
    let crun_here = std::path::Path::new("/usr/bin/crun").is_file();
    for (id, title) in SECTIONS {
        let rows = section_rows(&md, title);
        // Metrics of husk's alone (the shim's phases) have no reference row and no ratio.
        let referenced: Vec<&str> = rows
            .iter()
            .filter(|r| r.get(1) == Some(&"runc"))
            .map(|r| r[0])
            .collect();
        if id == "start" {
            let phases = rows
                .iter()
                .filter(|r| r[0].starts_with("husk phase: ") && r[1] == "husk")
                .count();
            assert_eq!(phases, 5, "start: husk's five phases:\n{md}");
        }
        for rt in ["runc", "crun", "husk"] {
            let mine: Vec<&Vec<&str>> = rows.iter().filter(|r| r.get(1) == Some(&rt)).collect();
            assert!(!mine.is_empty(), "{id}: no row for {rt}:\n{md}");
            for r in mine {
                assert_eq!(r.len(), 8, "{id}: {r:?}");
                let ran = r[2] != "0";
                // runc is the reference and husk must run here (KVM is usable); crun
                // must run where it is installed, and otherwise say why not.
                if rt != "crun" || crun_here {
                    assert!(ran, "{id}: {rt} did not run: {r:?}\n{md}");
                    assert!(r[3].parse::<f64>().is_ok(), "{id}: median {r:?}");
                    if referenced.contains(&r[0]) {
                        assert!(r[7].parse::<f64>().is_ok(), "{id}: ratio {r:?}");
                    } else {
                        assert_eq!((rt, r[7]), ("husk", "-"), "{id}: husk's own {r:?}");
                    }
                } else {
                    assert!(r[7].starts_with("not run: "), "{id}: {r:?}");
                }
                if rt == "runc" {
                    assert_eq!(r[7], "1.00", "{id}: the reference's own ratio");
                }
            }
        }
        // The plot decodes, is the size drawn and has more than a background.
        let png = out.path().join(format!("{id}.png"));
        let (w, h, px, ch) = decode_png(&png).unwrap();
        assert!(w >= 400 && h >= 300, "{id}: {w}x{h}");
        assert!(distinct_colors(&px, ch, 20) > 5, "{id}: a blank plot");
        assert!(
            md.contains(&format!("]({id}.png)")),
            "{id}: plot not linked"
        );
    }
    let csv = std::fs::read_to_string(out.path().join("samples.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("section,metric,x,runtime,run,value,unit")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for (id, _) in SECTIONS {
        for rt in ["runc", "husk"] {
            let n = rows.iter().filter(|r| r[0] == id && r[3] == rt).count();
            assert!(n >= 2, "{id}: {n} samples of {rt} in samples.csv:\n{csv}");
        }
    }
    // Every sample is a number.
    for r in &rows {
        assert!(r[5].parse::<f64>().is_ok(), "{r:?}");
    }
}
