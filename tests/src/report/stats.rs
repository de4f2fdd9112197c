//! Summary statistics of a series of samples: median, p10/p90 (linear interpolation
//! between closest ranks, the definition numpy and R's default use), min, max, and the
//! ratio of two medians. Every benchmark and report section computes its figures here.

use std::time::Duration;

/// What a series of samples comes to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// The `q`-quantile (0..=1) of sorted `v`: linear interpolation between the closest
/// ranks (`(n-1)q`), so the median of an even count is the mean of the middle two.
/// `None` for an empty series or a NaN in it.
pub fn quantile_sorted(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let pos = (v.len() - 1) as f64 * q;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(v[lo] + (v[hi] - v[lo]) * frac)
}

fn sorted(v: &[f64]) -> Option<Vec<f64>> {
    if v.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v)
}

/// The `q`-quantile of unsorted `v` (see [`quantile_sorted`]).
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    quantile_sorted(&sorted(v)?, q)
}

/// The median of `v`, `None` if it is empty.
pub fn median_f64(v: &[f64]) -> Option<f64> {
    quantile(v, 0.5)
}

/// The median of some durations (the mean of the middle two for an even count; zero for
/// none): the host-side benchmarks' helper.
pub fn median(v: &[Duration]) -> Duration {
    let secs: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    median_f64(&secs).map_or(Duration::ZERO, Duration::from_secs_f64)
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Summary {
    /// The summary of `v`; `None` if it is empty or holds a NaN.
    pub fn of(v: &[f64]) -> Option<Summary> {
        let s = sorted(v)?;
        let q = |q| quantile_sorted(&s, q);
        Some(Summary {
            n: s.len(),
            median: q(0.5)?,
            p10: q(0.1)?,
            p90: q(0.9)?,
            min: *s.first()?,
            max: *s.last()?,
            mean: s.iter().sum::<f64>() / s.len() as f64,
        })
    }
}

/// `a / b` of two medians; `None` when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// The least-squares line through `(x, y)` points: (slope, intercept); `None` for fewer
/// than two distinct x.
pub fn linear_fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

/// The empirical CDF of `v`: sorted values with the fraction of samples at or below each.
pub fn ecdf(v: &[f64]) -> Vec<(f64, f64)> {
    let Some(s) = sorted(v) else {
        return Vec::new();
    };
    let n = s.len() as f64;
    s.iter()
        .enumerate()
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_samples_give_known_figures() {
        // 1..=10: median 5.5; p10 at rank 0.9 -> 1.9; p90 at rank 8.1 -> 9.1.
        let v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!(s.n, 10);
        assert!((s.median - 5.5).abs() < 1e-12);
        assert!((s.p10 - 1.9).abs() < 1e-12, "{}", s.p10);
        assert!((s.p90 - 9.1).abs() < 1e-12, "{}", s.p90);
        assert_eq!((s.min, s.max), (1.0, 10.0));
        assert!((s.mean - 5.5).abs() < 1e-12);
        // Odd count: the middle one.
        let s = Summary::of(&[30.0, 10.0, 20.0]).unwrap();
        assert_eq!(s.median, 20.0);
        assert_eq!(s.p10, 12.0);
        assert_eq!(s.p90, 28.0);
        // One sample: every quantile is it.
        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!((s.median, s.p10, s.p90), (7.0, 7.0, 7.0));
    }

    #[test]
    fn empty_or_nan_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
        assert_eq!(quantile(&[1.0, 2.0], 1.5), None);
    }

    #[test]
    fn ratios_of_medians() {
        assert_eq!(ratio(Some(30.0), Some(10.0)), Some(3.0));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        let runc = median_f64(&[100.0, 120.0, 110.0]).unwrap();
        let husk = median_f64(&[500.0, 440.0, 460.0, 480.0]).unwrap();
        assert_eq!(ratio(Some(husk), Some(runc)), Some(470.0 / 110.0));
    }

    #[test]
    fn durations_median() {
        let d = Duration::from_millis;
        assert_eq!(median(&[d(30), d(10), d(20)]), d(20));
        assert_eq!(median(&[d(40), d(10), d(20), d(30)]), d(25));
        assert_eq!(median(&[]), Duration::ZERO);
        assert_eq!(ms(d(1500)), 1500.0);
    }

    #[test]
    fn slope_of_a_line_and_the_cdf() {
        let (m, b) = linear_fit(&[(1.0, 12.0), (5.0, 52.0), (10.0, 102.0)]).unwrap();
        assert!((m - 10.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9, "{m} {b}");
        assert_eq!(linear_fit(&[(1.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(linear_fit(&[(1.0, 1.0)]), None);
        assert_eq!(
            ecdf(&[3.0, 1.0, 2.0, 4.0]),
            vec![(1.0, 0.25), (2.0, 0.5), (3.0, 0.75), (4.0, 1.0)]
        );
    }
}
