//! Statistics of timed runs: the one median / percentile every benchmark (the `easel bench`
//! harness, the examples' micro-benchmarks) reports.

use candle_core::{bail, Result};

/// Statistics of timed runs, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// The median (mean of the two middle runs for an even count).
    pub median_ms: f64,
    /// The fastest run.
    pub min_ms: f64,
    /// The 90th percentile (nearest rank: the `⌈0.9·n⌉`-th fastest run).
    pub p90_ms: f64,
    /// The mean.
    pub mean_ms: f64,
}

impl Stats {
    /// The statistics of `samples_ms`; fails for no samples or a non-finite one.
    pub fn of(samples_ms: &[f64]) -> Result<Self> {
        if samples_ms.is_empty() {
            bail!("no timed runs (use at least one run)")
        }
        if let Some(bad) = samples_ms.iter().find(|v| !v.is_finite()) {
            bail!("a timed run lasted {bad} ms")
        }
        let mut sorted = samples_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median_ms = if !n.is_multiple_of(2) {
            sorted[n / 2]
        } else {
            0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
        };
        let rank = ((0.9 * n as f64).ceil() as usize).clamp(1, n);
        Ok(Self {
            median_ms,
            min_ms: sorted[0],
            p90_ms: sorted[rank - 1],
            mean_ms: sorted.iter().sum::<f64>() / n as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_follow_their_definitions() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(
            (s.median_ms, s.min_ms, s.p90_ms, s.mean_ms),
            (3.0, 1.0, 5.0, 3.0)
        );
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median_ms, s.p90_ms), (2.5, 4.0));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Stats::of(&ten).unwrap().p90_ms, 9.0);
        assert!(Stats::of(&[]).is_err());
        assert!(Stats::of(&[1.0, f64::NAN]).is_err());
    }
}
