//! Latency percentiles. HTTP samples are kept whole (microseconds, a few hundred thousand per run) and
//! sorted once at the end; the feed's delays, one per watcher per stock change (tens of millions with
//! 10,000 watchers), go into fixed-width buckets instead.

use std::fmt;
use std::time::Duration;

/// Every sample of one kind of request, in microseconds.
#[derive(Default, Clone)]
pub struct Samples(Vec<u32>);

impl Samples {
    pub fn record(&mut self, took: Duration) {
        self.0
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn summary(mut self) -> Summary {
        self.0.sort_unstable();
        let at = |q: f64| -> Duration {
            if self.0.is_empty() {
                return Duration::ZERO;
            }
            // Nearest rank: the smallest sample with at least q of all samples at or below it.
            let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
            Duration::from_micros(u64::from(self.0[rank - 1]))
        };
        Summary {
            count: self.0.len() as u64,
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Delays counted in buckets of `WIDTH`, up to `SPAN` (anything later lands in the last bucket).
pub struct Buckets {
    counts: Vec<u64>,
    max: Duration,
}

impl Buckets {
    const WIDTH: Duration = Duration::from_micros(100);
    const SPAN: Duration = Duration::from_secs(60);

    pub fn new() -> Self {
        let buckets = (Self::SPAN.as_micros() / Self::WIDTH.as_micros()) as usize + 1;
        Buckets {
            counts: vec![0; buckets],
            max: Duration::ZERO,
        }
    }

    pub fn record(&mut self, delay: Duration) {
        let index =
            ((delay.as_micros() / Self::WIDTH.as_micros()) as usize).min(self.counts.len() - 1);
        self.counts[index] += 1;
        self.max = self.max.max(delay);
    }

    pub fn summary(&self) -> Summary {
        let count: u64 = self.counts.iter().sum();
        // The upper edge of the bucket holding the sample of nearest rank q: never optimistic.
        let at = |q: f64| -> Duration {
            if count == 0 {
                return Duration::ZERO;
            }
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (index, bucket) in self.counts.iter().enumerate() {
                seen += bucket;
                if seen >= rank {
                    return (Self::WIDTH * (index as u32 + 1)).min(self.max);
                }
            }
            self.max
        };
        Summary {
            count,
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: self.max,
        }
    }
}

impl Default for Buckets {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            millis(self.p50),
            millis(self.p95),
            millis(self.p99),
            millis(self.max),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples = Samples::default();
        for ms in 1..=100 {
            samples.record(Duration::from_millis(ms));
        }
        let summary = samples.summary();
        assert_eq!(summary.p50, Duration::from_millis(50));
        assert_eq!(summary.p99, Duration::from_millis(99));
        assert_eq!(summary.max, Duration::from_millis(100));
    }

    #[test]
    fn buckets_round_up_to_the_bucket_edge() {
        let mut buckets = Buckets::new();
        for _ in 0..99 {
            buckets.record(Duration::from_micros(1_050));
        }
        buckets.record(Duration::from_millis(250));
        let summary = buckets.summary();
        assert_eq!(summary.p50, Duration::from_micros(1_100));
        assert_eq!(summary.p99, Duration::from_micros(1_100));
        assert_eq!(summary.max, Duration::from_millis(250));
    }
}
