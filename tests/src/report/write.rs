//! The report's text outputs: the CSV of every sample and markdown tables.

use std::fmt::Write as _;

use super::stats::{ratio, Summary};
use super::{Better, Metric, Plot, SectionResult};

/// One CSV field: quoted (with doubled quotes) when it holds a comma, quote or newline.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Every sample of every section, one line each, with a header line.
pub fn csv(sections: &[SectionResult]) -> String {
    let mut out = String::from("section,metric,x,runtime,run,value,unit\n");
    for s in sections {
        for m in &s.metrics {
            for (rt, values) in &m.samples {
                for (run, v) in values.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{},{},{},{},{},{},{}",
                        csv_field(&s.id),
                        csv_field(&m.name),
                        m.x.map_or(String::new(), |x| x.to_string()),
                        csv_field(rt),
                        run + 1,
                        v,
                        csv_field(&m.unit)
                    );
                }
            }
        }
    }
    out
}

/// A markdown table cell: no newline, `|` escaped.
pub fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A markdown table; every row must have as many cells as `header`.
pub fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let mut l = String::from("|");
        for c in cells {
            let _ = write!(l, " {} |", md_cell(&c));
        }
        l.push('\n');
        l
    };
    out.push_str(&line(&mut header.iter().map(|h| h.to_string())));
    out.push_str(&line(&mut header.iter().map(|_| "---".to_owned())));
    for r in rows {
        debug_assert_eq!(r.len(), header.len());
        out.push_str(&line(&mut r.iter().cloned()));
    }
    out
}

/// A figure with about three significant digits (no exponent for everyday sizes).
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A ratio to the reference, with what it means for this metric.
pub fn ratio_cell(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}"))
}

/// A section's table: one row per metric and runtime (a runtime that could not run has
/// a row saying so), with n, median, p10, p90, the unit and the ratio of the medians to
/// the section's reference runtime.
pub fn section_table(s: &SectionResult) -> String {
    let mut rows = Vec::new();
    // Grouped by metric name (in first-seen order), then by x.
    let mut order: Vec<&Metric> = s.metrics.iter().collect();
    let first = |name: &str| s.metrics.iter().position(|m| m.name == name);
    order.sort_by(|a, b| {
        first(&a.name)
            .cmp(&first(&b.name))
            .then(a.x.unwrap_or(0.0).total_cmp(&b.x.unwrap_or(0.0)))
    });
    for m in order {
        let reference = m.summary(&s.reference).map(|x| x.median);
        for rt in s.runtimes.iter().filter(|rt| m.applies_to(rt)) {
            let label = m.label(&s.x_label);
            if let Some(why) = s.skipped.get(rt) {
                rows.push(vec![
                    label,
                    rt.clone(),
                    "0".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    m.unit.clone(),
                    format!("not run: {why}"),
                ]);
                continue;
            }
            let (n, med, p10, p90) = match m.summary(rt) {
                Some(Summary {
                    n,
                    median,
                    p10,
                    p90,
                    ..
                }) => (n.to_string(), num(median), num(p10), num(p90)),
                None => ("0".into(), "-".into(), "-".into(), "-".into()),
            };
            let r = ratio(m.summary(rt).map(|x| x.median), reference);
            rows.push(vec![
                label,
                rt.clone(),
                n,
                med,
                p10,
                p90,
                m.unit.clone(),
                ratio_cell(r),
            ]);
        }
    }
    let ratio_head = format!("ratio to {}", s.reference);
    md_table(
        &[
            "metric",
            "runtime",
            "n",
            "median",
            "p10",
            "p90",
            "unit",
            &ratio_head,
        ],
        &rows,
    )
}

/// The headline: each section's first metric (or the ones it marks), the ratio of every
/// runtime's median to the reference's, and which way is better.
pub fn headline_table(sections: &[SectionResult], runtimes: &[String]) -> String {
    let mut header: Vec<String> = vec!["section".into(), "metric".into(), "reference".into()];
    header.extend(runtimes.iter().cloned());
    header.push("better".into());
    let mut rows = Vec::new();
    for s in sections {
        for m in s.metrics.iter().filter(|m| m.headline) {
            let reference = m.summary(&s.reference).map(|x| x.median);
            let mut row = vec![s.title.clone(), m.label(&s.x_label), s.reference.clone()];
            for rt in runtimes {
                let cell = if !s.runtimes.contains(rt) {
                    "n/a".to_owned()
                } else if s.skipped.contains_key(rt) {
                    "not run".to_owned()
                } else {
                    match (ratio(m.summary(rt).map(|x| x.median), reference), reference) {
                        (Some(r), _) => format!("{r:.2}"),
                        _ => "-".to_owned(),
                    }
                };
                row.push(cell);
            }
            row.push(
                match m.better {
                    Better::Lower => "lower",
                    Better::Higher => "higher",
                }
                .into(),
            );
            rows.push(row);
        }
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    md_table(&header, &rows)
}

/// What kind of plot a section draws, in words for the report.
pub fn plot_words(p: Plot) -> &'static str {
    match p {
        Plot::Cdf => "CDF of every sample",
        Plot::Bars => "medians as a ratio to the reference on a log scale, bars drawn from 1, p10-p90 as whiskers",
        Plot::Lines => "medians against the x value, one line per runtime",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> SectionResult {
        let mut s = SectionResult::new("start", "Start", "runc", Plot::Cdf, "");
        s.runtimes = vec!["runc".into(), "crun".into(), "husk".into()];
        let mut m = Metric::new("ctr run --rm true", "ms", Better::Lower);
        m.headline = true;
        m.push("runc", 100.0);
        m.push("runc", 120.0);
        m.push("runc", 110.0);
        m.push("husk", 440.0);
        m.push("husk", 480.0);
        m.push("husk", 460.0);
        m.push("husk", 500.0);
        s.metrics.push(m);
        s.skipped
            .insert("crun".into(), "crun is not installed, a, b".into());
        s
    }

    #[test]
    fn csv_has_every_sample_and_quotes_commas() {
        let c = csv(&[section()]);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines[0], "section,metric,x,runtime,run,value,unit");
        assert_eq!(lines.len(), 1 + 7);
        assert!(
            lines.contains(&"start,ctr run --rm true,,runc,3,110,ms"),
            "{c}"
        );
        assert!(
            lines.contains(&"start,ctr run --rm true,,husk,4,500,ms"),
            "{c}"
        );
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn section_table_has_a_row_per_runtime_with_ratios() {
        let t = section_table(&section());
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 2 + 3, "{t}");
        assert_eq!(
            rows[0],
            "| metric | runtime | n | median | p10 | p90 | unit | ratio to runc |"
        );
        // runc: 100 110 120 -> median 110, p10 102, p90 118.
        assert_eq!(
            rows[2],
            "| ctr run --rm true | runc | 3 | 110 | 102 | 118 | ms | 1.00 |"
        );
        assert!(rows[3].contains("not run: crun is not installed"), "{t}");
        // husk: 440 460 480 500 -> median 470, p10 446, p90 494; 470/110 = 4.27.
        assert_eq!(
            rows[4],
            "| ctr run --rm true | husk | 4 | 470 | 446 | 494 | ms | 4.27 |"
        );
    }

    #[test]
    fn rows_grouped_by_metric_then_x_and_only_where_they_apply() {
        let mut s = SectionResult::new("density", "D", "runc", Plot::Lines, "");
        s.x_label = "pods".into();
        s.runtimes = vec!["runc".into(), "husk".into()];
        for x in [5.0, 1.0] {
            s.metric("PSS", Some(x), || Metric::new("PSS", "MiB", Better::Lower))
                .push("runc", x);
            s.metric("guest", Some(x), || {
                Metric::new("guest", "MiB", Better::Lower).husk_only()
            })
            .push("husk", x);
        }
        let t = section_table(&s);
        let labels: Vec<String> = t
            .lines()
            .skip(2)
            .map(|l| l.split(" | ").take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            labels,
            [
                "| PSS (1 pods) runc",
                "| PSS (1 pods) husk",
                "| PSS (5 pods) runc",
                "| PSS (5 pods) husk",
                "| guest (1 pods) husk",
                "| guest (5 pods) husk"
            ],
            "{t}"
        );
    }

    #[test]
    fn headline_has_ratio_columns() {
        let t = headline_table(&[section()], &["runc".into(), "crun".into(), "husk".into()]);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(
            rows[0],
            "| section | metric | reference | runc | crun | husk | better |"
        );
        assert_eq!(
            rows[2],
            "| Start | ctr run --rm true | runc | 1.00 | not run | 4.27 | lower |"
        );
    }

    #[test]
    fn cells_and_numbers() {
        assert_eq!(md_cell("a|b\nc"), "a\\|b c");
        assert_eq!(num(1234.56), "1235");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.01234), "0.012");
        assert_eq!(num(0.0), "0");
    }
}
