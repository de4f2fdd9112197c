//! The isolation-overhead report (`make report`): each workload under runc, crun and
//! husk, interleaved, in one session; `report.md` (tables of median, p10/p90 and the
//! ratio to the reference runtime, and the machine it ran on), one PNG plot per section
//! and `samples.csv` with every sample. The statistics, tables and plots of every husk
//! benchmark live here: `make bench-*` run sections of this report.

pub mod ctr;
pub mod plot;
pub mod sections;
pub mod shim_log;
pub mod stats;
pub mod system;
pub mod write;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use stats::Summary;

/// Which way a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// The kind of plot a section gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plot {
    /// Latencies: the CDF of every sample.
    Cdf,
    /// Throughputs and costs per call: medians as ratios to the reference.
    Bars,
    /// Scaling: medians against the metric's x value.
    Lines,
}

/// One measured quantity of a section, with its samples per runtime.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub unit: String,
    pub better: Better,
    /// The scaling variable (e.g. the number of pods), for line plots.
    pub x: Option<f64>,
    /// Shown in the report's headline table.
    pub headline: bool,
    /// Applies to husk's series only (`husk`, `husk-template`, `husk-nojail`: guest RAM, the
    /// shim's own timings); other runtimes get no row for it.
    pub husk_only: bool,
    /// (runtime, samples), in the order runtimes were first seen.
    pub samples: Vec<(String, Vec<f64>)>,
}

impl Metric {
    pub fn new(name: &str, unit: &str, better: Better) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            better,
            x: None,
            headline: false,
            husk_only: false,
            samples: Vec::new(),
        }
    }

    /// Applies to husk's series only.
    pub fn husk_only(mut self) -> Self {
        self.husk_only = true;
        self
    }

    /// Whether the metric has a row for `runtime`.
    pub fn applies_to(&self, runtime: &str) -> bool {
        !self.husk_only || runtime == "husk" || runtime.starts_with("husk-")
    }

    pub fn headline(self) -> Self {
        self.headline_if(true)
    }

    /// In the headline table if `h`.
    pub fn headline_if(mut self, h: bool) -> Self {
        self.headline = h;
        self
    }

    pub fn at(mut self, x: f64) -> Self {
        self.x = Some(x);
        self
    }

    pub fn push(&mut self, runtime: &str, v: f64) {
        match self.samples.iter_mut().find(|(r, _)| r == runtime) {
            Some((_, s)) => s.push(v),
            None => self.samples.push((runtime.into(), vec![v])),
        }
    }

    pub fn values(&self, runtime: &str) -> &[f64] {
        self.samples
            .iter()
            .find(|(r, _)| r == runtime)
            .map_or(&[], |(_, v)| v.as_slice())
    }

    pub fn summary(&self, runtime: &str) -> Option<Summary> {
        Summary::of(self.values(runtime))
    }

    /// The name with its x value, e.g. `host PSS (5 pods)`.
    pub fn label(&self, x_label: &str) -> String {
        match self.x {
            Some(x) => format!("{} ({x} {x_label})", self.name),
            None => self.name.clone(),
        }
    }
}

/// What one section measured.
#[derive(Debug, Clone)]
pub struct SectionResult {
    pub id: String,
    pub title: String,
    /// The runtime the ratios are taken to (runc, or the host / QEMU where husk is
    /// compared with something else).
    pub reference: String,
    pub plot: Plot,
    pub x_label: String,
    /// What was run and how, for the report.
    pub description: String,
    pub notes: Vec<String>,
    /// Every runtime the section covers, in table order.
    pub runtimes: Vec<String>,
    /// Runtimes that could not run at all, with the reason.
    pub skipped: BTreeMap<String, String>,
    /// Runs or steps that failed (left out of the figures), with the reason.
    pub failures: Vec<String>,
    pub metrics: Vec<Metric>,
}

impl SectionResult {
    pub fn new(id: &str, title: &str, reference: &str, plot: Plot, description: &str) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            reference: reference.into(),
            plot,
            x_label: String::new(),
            description: description.into(),
            notes: Vec::new(),
            runtimes: Vec::new(),
            skipped: BTreeMap::new(),
            failures: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// The metric called `name` at `x`, made by `make` the first time.
    pub fn metric(
        &mut self,
        name: &str,
        x: Option<f64>,
        make: impl FnOnce() -> Metric,
    ) -> &mut Metric {
        let i = match self.metrics.iter().position(|m| m.name == name && m.x == x) {
            Some(i) => i,
            None => {
                let mut m = make();
                m.name = name.into();
                m.x = x;
                self.metrics.push(m);
                self.metrics.len() - 1
            }
        };
        &mut self.metrics[i]
    }

    /// Records a failed run (printed now, listed in the report).
    pub fn fail(&mut self, what: String) {
        eprintln!("report: {}: FAILED {what}", self.id);
        self.failures.push(what);
    }

    fn plot_file(&self) -> String {
        format!("{}.png", self.id)
    }

    /// Draws the section's plot into `dir`; the error says why not.
    pub fn draw(&self, dir: &Path) -> Result<PathBuf, plot::PlotError> {
        let path = dir.join(self.plot_file());
        let ran: Vec<&String> = self
            .runtimes
            .iter()
            .filter(|r| !self.skipped.contains_key(*r))
            .collect();
        match self.plot {
            Plot::Cdf => {
                let unit = self.metrics.first().map_or("", |m| m.unit.as_str());
                // One axis: the metrics in the first one's unit (a section's counts, such
                // as the boot's KVM exits, are in its tables and CSV, not on a time axis).
                let plotted: Vec<&Metric> =
                    self.metrics.iter().filter(|m| m.unit == unit).collect();
                let mut series = Vec::new();
                for m in &plotted {
                    for rt in &ran {
                        let name = if plotted.len() == 1 {
                            rt.to_string()
                        } else {
                            format!("{rt}: {}", m.label(&self.x_label))
                        };
                        series.push((name, m.values(rt).to_vec()));
                    }
                }
                plot::cdf(&path, &self.title, unit, &series)?;
            }
            Plot::Bars => {
                let names: Vec<String> = ran.iter().map(|r| r.to_string()).collect();
                let mut groups = Vec::new();
                for m in &self.metrics {
                    let Some(reference) = m.summary(&self.reference).map(|s| s.median) else {
                        continue;
                    };
                    if reference == 0.0 {
                        continue;
                    }
                    let bars = names
                        .iter()
                        .enumerate()
                        .filter_map(|(i, rt)| {
                            let s = m.summary(rt)?;
                            Some((
                                i,
                                s.median / reference,
                                s.p10 / reference,
                                s.p90 / reference,
                            ))
                        })
                        .collect();
                    groups.push((format!("{} ({})", m.label(&self.x_label), m.unit), bars));
                }
                let y = format!(
                    "median / {} median (log scale; bars from 1)",
                    self.reference
                );
                plot::ratio_bars(&path, &self.title, &y, &names, &groups)?;
            }
            Plot::Lines => {
                // One line per (runtime, metric name), points at each x.
                let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
                for m in &self.metrics {
                    let Some(x) = m.x else { continue };
                    for rt in &ran {
                        let Some(s) = m.summary(rt) else { continue };
                        let name = format!("{rt}: {} ({})", m.name, m.unit);
                        match series.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, v)) => v.push((x, s.median)),
                            None => series.push((name, vec![(x, s.median)])),
                        }
                    }
                }
                let unit = self.metrics.first().map_or("", |m| m.unit.as_str());
                plot::lines(&path, &self.title, &self.x_label, unit, &series)?;
            }
        }
        Ok(path)
    }
}

/// Where and how the report ran.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    pub started: String,
    pub took_secs: f64,
    pub quick: bool,
    /// (what, value) lines: machine, kernel, versions, emulation.
    pub facts: Vec<(String, String)>,
    pub emulated: bool,
}

/// Writes `report.md`, `samples.csv` and one PNG per section into `dir`; returns the
/// problems met while writing the plots (a section with no samples has no plot).
pub fn write_report(
    dir: &Path,
    info: &RunInfo,
    runtimes: &[String],
    sections: &[SectionResult],
) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut problems = Vec::new();
    let mut plots = BTreeMap::new();
    for s in sections {
        match s.draw(dir) {
            Ok(p) => {
                plots.insert(s.id.clone(), p);
            }
            Err(e) => problems.push(format!("{}: no plot: {e}", s.id)),
        }
    }
    std::fs::write(dir.join("samples.csv"), write::csv(sections))?;
    std::fs::write(
        dir.join("report.md"),
        markdown(info, runtimes, sections, &plots),
    )?;
    Ok(problems)
}

/// The whole `report.md`.
pub fn markdown(
    info: &RunInfo,
    runtimes: &[String],
    sections: &[SectionResult],
    plots: &BTreeMap<String, PathBuf>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# husk isolation-overhead report\n");
    let _ = writeln!(
        o,
        "Started {}, took {:.0} s{}. Every workload ran under each runtime in turn (interleaved), \
         in one session on one machine; `samples.csv` has every sample.\n",
        info.started,
        info.took_secs,
        if info.quick { ", QUICK sizes" } else { "" }
    );
    if info.emulated {
        let _ = writeln!(
            o,
            "**Emulated.** This run was nested under software emulation (the test host: QEMU TCG \
             with an emulated AMD-V CPU, because this machine's KVM cannot boot a standard guest). \
             Absolute times there are about 50-100x those of hardware and say nothing about real \
             speed; read the ratios to the reference runtime, measured in the same run. Memory \
             figures do not depend on the CPU's speed.\n"
        );
    } else {
        let _ = writeln!(
            o,
            "Ran directly on this machine's KVM (not nested under emulation).\n"
        );
    }
    let _ = writeln!(o, "## Headline: ratio of medians to the reference\n");
    let _ = writeln!(
        o,
        "Each cell is a runtime's median divided by the reference runtime's median of the same \
         section (1.00 = the same; `better` says which way is good).\n"
    );
    // One headline table per set of runtimes compared (runc, crun, husk; the boot's
    // VMMs; the devices' host and husk), so no table is mostly "n/a".
    let mut groups: Vec<(Vec<String>, Vec<SectionResult>)> = Vec::new();
    for s in sections {
        match groups.iter_mut().find(|(r, _)| *r == s.runtimes) {
            Some((_, v)) => v.push(s.clone()),
            None => groups.push((s.runtimes.clone(), vec![s.clone()])),
        }
    }
    let _ = runtimes;
    for (i, (rts, secs)) in groups.iter().enumerate() {
        if i > 0 {
            o.push('\n');
        }
        o.push_str(&write::headline_table(secs, rts));
    }
    let _ = writeln!(o, "\n## Machine\n");
    let rows: Vec<Vec<String>> = info
        .facts
        .iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect();
    o.push_str(&write::md_table(&["what", "value"], &rows));
    for s in sections {
        let _ = writeln!(o, "\n## {}\n", s.title);
        if !s.description.is_empty() {
            let _ = writeln!(o, "{}\n", s.description);
        }
        o.push_str(&write::section_table(s));
        for n in &s.notes {
            let _ = writeln!(o, "\n{n}");
        }
        if !s.failures.is_empty() {
            let _ = writeln!(
                o,
                "\n{} failed run(s), left out of the figures:\n",
                s.failures.len()
            );
            for f in &s.failures {
                let first = f.lines().next().unwrap_or("");
                let _ = writeln!(o, "- {}", write::md_cell(first));
            }
        }
        match plots.get(&s.id) {
            Some(p) => {
                let file = p
                    .file_name()
                    .map_or(String::new(), |f| f.to_string_lossy().into_owned());
                let _ = writeln!(
                    o,
                    "\n![{}]({file})\n\n({})",
                    s.title,
                    write::plot_words(s.plot)
                );
            }
            None => {
                let _ = writeln!(o, "\n(no plot: no samples)");
            }
        }
    }
    o
}

/// Why the report could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("Unknown section {0:?}; the sections are {1}")]
    UnknownSection(String, String),
    #[error("Cannot write the report into {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_report_writes_markdown_csv_and_plots() {
        let dir = std::env::temp_dir().join(format!("husk-report-test-{}", std::process::id()));
        let mut s = SectionResult::new("cpu", "CPU", "runc", Plot::Bars, "hash 1 GiB");
        s.runtimes = vec!["runc".into(), "husk".into()];
        let m = s.metric("hash", None, || {
            Metric::new("x", "s", Better::Lower).headline()
        });
        for (rt, v) in [("runc", 2.0), ("runc", 4.0), ("husk", 5.0), ("husk", 7.0)] {
            m.push(rt, v);
        }
        s.fail("husk cpu-husk-3: watchdog\nlong context".into());
        let mut d = SectionResult::new("density", "Density", "runc", Plot::Lines, "");
        d.x_label = "pods".into();
        d.runtimes = vec!["runc".into(), "husk".into()];
        d.skipped
            .insert("husk".into(), "KVM cannot boot a guest here".into());
        for n in [1.0, 5.0] {
            d.metric("PSS", Some(n), || Metric::new("PSS", "MiB", Better::Lower))
                .push("runc", 10.0 * n);
        }
        let empty = SectionResult::new("network", "Network", "runc", Plot::Bars, "");
        let info = RunInfo {
            started: "now".into(),
            took_secs: 12.0,
            quick: true,
            facts: vec![("kernel".into(), "Linux 6.1".into())],
            emulated: true,
        };
        let rts = vec!["runc".to_owned(), "husk".to_owned()];
        let problems = write_report(&dir, &info, &rts, &[s, d, empty]).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("network: no plot"), "{problems:?}");
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains("**Emulated.**"), "{md}");
        assert!(md.contains("| kernel | Linux 6.1 |"), "{md}");
        // Headline: husk/runc = 6/3.
        assert!(
            md.contains("| CPU | hash | runc | 1.00 | 2.00 | lower |"),
            "{md}"
        );
        assert!(md.contains("- husk cpu-husk-3: watchdog\n"), "{md}");
        assert!(!md.contains("long context"), "{md}");
        assert!(md.contains("| PSS (5 pods) | runc | 1 | 50.0 |"), "{md}");
        assert!(md.contains("not run: KVM cannot boot a guest here"), "{md}");
        assert!(md.contains("![CPU](cpu.png)") && md.contains("![Density](density.png)"));
        assert!(md.contains("(no plot: no samples)"), "{md}");
        for p in ["cpu.png", "density.png"] {
            let (w, _, px, ch) = plot::decode_png(&dir.join(p)).unwrap();
            assert!(w > 0 && plot::distinct_colors(&px, ch, 10) > 3, "{p}");
        }
        assert!(!dir.join("network.png").exists());
        let csv = std::fs::read_to_string(dir.join("samples.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + 4 + 2, "{csv}");
        assert!(csv.contains("density,PSS,5,runc,1,50,MiB"), "{csv}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
