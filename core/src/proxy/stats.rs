//! Per-provider counters for `/metrics`: atomics only, so the hot path
//! takes no lock to count (rendered by `crate::http::metrics`).

use crate::net::histogram::{self, BUCKETS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Answers by status class; slot 0 counts requests that got no answer
/// (unreachable upstream, timeout).
pub const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// One provider's counters.
#[derive(Debug, Default)]
pub struct ProviderStats {
    pub by_class: [AtomicU64; 6],
    /// Time to the upstream's response head: non-cumulative bucket counts
    /// (last slot +Inf), sum in microseconds, count.
    pub latency: [AtomicU64; BUCKETS.len() + 1],
    pub latency_sum_us: AtomicU64,
    pub latency_count: AtomicU64,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    /// Requests refused by a key's requests-per-minute limit.
    pub refused_rpm: AtomicU64,
    /// Requests refused by a key's exhausted token budget.
    pub refused_budget: AtomicU64,
}

impl ProviderStats {
    /// An answer with `status`, its head `after` the request was sent.
    pub fn answered(&self, status: u16, after: Duration) {
        let class = usize::from(status / 100).clamp(1, 5);
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.latency[histogram::slot(after.as_secs_f64())].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(after.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// No answer at all (502/504 from the proxy).
    pub fn failed(&self) {
        self.by_class[0].fetch_add(1, Ordering::Relaxed);
    }

    pub fn tokens(&self, input: u64, output: u64) {
        self.input_tokens.fetch_add(input, Ordering::Relaxed);
        self.output_tokens.fetch_add(output, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_class_and_bucket() {
        let s = ProviderStats::default();
        s.answered(200, Duration::from_micros(800));
        s.answered(503, Duration::from_secs(30));
        s.answered(99, Duration::ZERO);
        s.failed();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(load(&s.by_class[0]), 1);
        assert_eq!(load(&s.by_class[1]), 1);
        assert_eq!(load(&s.by_class[2]), 1);
        assert_eq!(load(&s.by_class[5]), 1);
        assert_eq!(load(&s.latency[0]), 2);
        assert_eq!(load(&s.latency[BUCKETS.len()]), 1);
        assert_eq!(load(&s.latency_count), 3);
        assert_eq!(load(&s.latency_sum_us), 30_000_800);
    }
}
