//! The report's PNG plots, drawn with `plotters`' bitmap backend. Text is drawn with
//! DejaVu Sans from the `dejavu` crate through plotters' `ab_glyph` font backend, so
//! nothing depends on the fonts (or fontconfig) of the machine the report runs on.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::stats::ecdf;

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 600);

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("Cannot register the embedded DejaVu Sans font")]
    Font,
    #[error("Nothing to plot: {0}")]
    Empty(String),
    #[error("Cannot draw {path}: {msg}")]
    Draw { path: String, msg: String },
}

fn register_font() -> Result<(), PlotError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

fn draw_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError::Draw {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// A distinct colour per series.
pub fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

fn area(path: &Path) -> Result<DrawingArea<BitMapBackend<'_>, Shift>, PlotError> {
    register_font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err(path))?;
    Ok(root)
}

fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return None;
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.01).max(1e-9);
    Some(((lo - pad).max(0.0_f64.min(lo)), hi + pad))
}

/// Empirical CDFs, one step line per series (name, samples), of a latency in `unit`.
pub fn cdf(
    path: &Path,
    title: &str,
    x_desc: &str,
    series: &[(String, Vec<f64>)],
) -> Result<(), PlotError> {
    let series: Vec<&(String, Vec<f64>)> = series.iter().filter(|s| !s.1.is_empty()).collect();
    let (lo, hi) = range(series.iter().flat_map(|s| s.1.iter().copied()))
        .ok_or_else(|| PlotError::Empty(title.into()))?;
    let root = area(path)?;
    let e = draw_err(path);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, 0f64..1.05)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("fraction of runs at or below")
        .label_style((FONT, 14))
        .draw()
        .map_err(&e)?;
    for (i, (name, v)) in series.iter().enumerate() {
        let c = color(i);
        let mut pts = Vec::new();
        let mut prev = 0.0;
        for (x, f) in ecdf(v) {
            pts.push((x, prev));
            pts.push((x, f));
            prev = f;
        }
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(&e)?
            .label(format!("{name} (n={})", v.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

/// One bar group per metric, one bar per runtime: the median as a ratio to the
/// reference's median (the reference's bar is 1), whiskers from p10 to p90 on the same
/// scale. `groups`: (metric label, [(runtime index, median, p10, p90)]), already divided
/// by the reference median; `runtimes` names the colours.
pub type BarGroup = (String, Vec<(usize, f64, f64, f64)>);

pub fn ratio_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    runtimes: &[String],
    groups: &[BarGroup],
) -> Result<(), PlotError> {
    // A log scale with the bars drawn from 1 (the reference): ratios of 0.1 and 400 in
    // one section stay readable, and 0.5 and 2 look alike.
    let vals = || {
        groups
            .iter()
            .flat_map(|g| g.1.iter().flat_map(|b| [b.1, b.2, b.3]))
            .filter(|v| *v > 0.0 && v.is_finite())
    };
    let top = vals().fold(1.0_f64, f64::max);
    let bottom = vals().fold(1.0_f64, f64::min);
    if groups.is_empty() || vals().next().is_none() {
        return Err(PlotError::Empty(title.into()));
    }
    let root = area(path)?;
    let e = draw_err(path);
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, (bottom / 1.5..top * 1.5).log_scale())
        .map_err(&e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .draw()
        .map_err(&e)?;
    let k = runtimes.len().max(1) as f64;
    let w = 0.8 / k;
    for (gi, (_, bars)) in groups.iter().enumerate() {
        for &(ri, med, p10, p90) in bars {
            let x0 = gi as f64 + 0.1 + ri as f64 * w;
            let c = color(ri);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 1.0), (x0 + w * 0.9, med.max(bottom / 1.5))],
                    c.filled(),
                )))
                .map_err(&e)?;
            let xm = x0 + w * 0.45;
            let clamp = |v: f64| v.clamp(bottom / 1.5, top * 1.5);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(xm, clamp(p10)), (xm, clamp(p90))],
                    BLACK.stroke_width(1),
                )))
                .map_err(&e)?;
        }
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (n, 1.0)],
            BLACK.mix(0.6).stroke_width(1),
        )))
        .map_err(&e)?;
    for (ri, name) in runtimes.iter().enumerate() {
        let c = color(ri);
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
            .map_err(&e)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(&e)?;
    // The group labels under the axis, word-wrapped to the group's width.
    let style = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    let width = (SIZE.0 as usize - 100) / groups.len().max(1) / 7;
    for (gi, (label, _)) in groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, bottom / 1.5));
        for (j, line) in wrap(label, width.max(6)).iter().take(3).enumerate() {
            root.draw(&Text::new(
                line.clone(),
                (px, py + 6 + 16 * j as i32),
                style.clone(),
            ))
            .map_err(&e)?;
        }
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// `s` in lines of at most `width` characters, broken between words.
pub fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for w in s.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + w.chars().count() <= width => {
                l.push(' ');
                l.push_str(w);
            }
            _ => lines.push(w.to_owned()),
        }
    }
    lines
}

/// Lines with points: one series per runtime, (x, y) pairs (e.g. pods against MiB).
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), PlotError> {
    let pts = || series.iter().flat_map(|s| s.1.iter());
    let (_, xhi) = range(pts().map(|p| p.0)).ok_or_else(|| PlotError::Empty(title.into()))?;
    let (_, yhi) = range(pts().map(|p| p.1)).ok_or_else(|| PlotError::Empty(title.into()))?;
    let root = area(path)?;
    let e = draw_err(path);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xhi.max(1.0), 0f64..yhi.max(1e-9) * 1.1)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .draw()
        .map_err(&e)?;
    for (i, (name, v)) in series.iter().enumerate() {
        let c = color(i);
        let mut v = v.clone();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(v.clone(), c.stroke_width(2)))
            .map_err(&e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(v.iter().map(|p| Circle::new(*p, 4, c.filled())))
            .map_err(&e)?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

/// Decodes a PNG file: (width, height, RGB(A) pixels), for the tests that check what
/// the report wrote.
pub fn decode_png(path: &Path) -> Result<(u32, u32, Vec<u8>, usize), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut d = png::Decoder::new(std::io::BufReader::new(f))
        .read_info()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0; d.output_buffer_size()];
    let info = d
        .next_frame(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    buf.truncate(info.buffer_size());
    let channels = info.color_type.samples();
    Ok((info.width, info.height, buf, channels))
}

/// How many distinct colours a decoded image has (at most `cap` counted): a plot that
/// drew anything has more than the background's.
pub fn distinct_colors(pixels: &[u8], channels: usize, cap: usize) -> usize {
    let mut seen = std::collections::HashSet::new();
    for p in pixels.chunks_exact(channels.max(1)) {
        seen.insert(p[..channels.min(3)].to_vec());
        if seen.len() >= cap {
            break;
        }
    }
    seen.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("husk-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn dark_pixels_in_rows(px: &[u8], ch: usize, width: u32, rows: std::ops::Range<u32>) -> usize {
        rows.flat_map(|y| (0..width).map(move |x| (y * width + x) as usize * ch))
            .filter(|&i| px[i] < 100 && px[i + 1] < 100 && px[i + 2] < 100)
            .count()
    }

    #[test]
    fn cdf_png_decodes_with_lines_and_a_caption() {
        let p = tmp("cdf.png");
        let series = vec![
            ("runc".to_owned(), vec![100.0, 110.0, 120.0, 130.0]),
            ("husk".to_owned(), vec![400.0, 450.0, 500.0]),
        ];
        cdf(&p, "ctr run --rm true", "ms", &series).unwrap();
        let (w, h, px, ch) = decode_png(&p).unwrap();
        assert_eq!((w, h), SIZE);
        assert!(ch >= 3);
        assert!(distinct_colors(&px, ch, 50) > 5);
        // The caption's glyphs (black text) are in the top 40 rows: the font works.
        assert!(dark_pixels_in_rows(&px, ch, w, 0..40) > 50);
        // Both series colours are there.
        let has = |c: RGBColor| {
            px.chunks_exact(ch)
                .any(|p| p[0] == c.0 && p[1] == c.1 && p[2] == c.2)
        };
        assert!(has(color(0)) && has(color(1)));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn labels_wrap_between_words() {
        assert_eq!(
            wrap("rootfs seq. write (MiB/s)", 12),
            ["rootfs seq.", "write", "(MiB/s)"]
        );
        assert_eq!(wrap("getpid", 3), ["getpid"]);
        assert!(wrap("", 5).is_empty());
    }

    #[test]
    fn bars_and_lines_decode() {
        let p = tmp("bars.png");
        let rts = vec!["runc".to_owned(), "husk".to_owned()];
        let groups = vec![
            (
                "getpid (ns/call)".to_owned(),
                vec![(0, 1.0, 0.9, 1.1), (1, 1.5, 1.2, 1.9)],
            ),
            (
                "fork+exit".to_owned(),
                vec![(0, 1.0, 1.0, 1.0), (1, 3.0, 2.5, 3.5)],
            ),
        ];
        ratio_bars(&p, "syscalls", "ratio to runc", &rts, &groups).unwrap();
        let (w, h, px, ch) = decode_png(&p).unwrap();
        assert_eq!((w, h), SIZE);
        assert!(px
            .chunks_exact(ch)
            .any(|q| q[..3] == [color(1).0, color(1).1, color(1).2]));
        let l = tmp("lines.png");
        lines(
            &l,
            "density",
            "pods",
            "MiB",
            &[(
                "husk".into(),
                vec![(1.0, 50.0), (5.0, 240.0), (10.0, 480.0)],
            )],
        )
        .unwrap();
        let (w2, _, px2, ch2) = decode_png(&l).unwrap();
        assert_eq!(w2, SIZE.0);
        assert!(distinct_colors(&px2, ch2, 50) > 5);
        assert!(ratio_bars(&p, "empty", "r", &rts, &[]).is_err());
        assert!(cdf(&p, "empty", "ms", &[("x".into(), vec![])]).is_err());
        assert!(decode_png(&tmp("missing.png")).is_err());
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(&l);
    }
}
