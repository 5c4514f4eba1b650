//! The latency buckets of `/metrics`: the HTTP layer's request histograms
//! and the proxy's per-provider upstream histograms share them, so they
//! can be compared.

/// Upper bounds in seconds; one more slot counts everything above
/// (`+Inf`).
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The slot of a latency in seconds: the first bucket it fits, else the
/// last (`BUCKETS.len()`, `+Inf`).
pub fn slot(secs: f64) -> usize {
    BUCKETS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(BUCKETS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots() {
        assert_eq!(slot(0.0), 0);
        assert_eq!(slot(0.001), 0);
        assert_eq!(slot(0.001_001), 1);
        assert_eq!(slot(10.0), BUCKETS.len() - 1);
        assert_eq!(slot(11.0), BUCKETS.len());
    }
}
