//! A liveness beat for an accept loop.
//!
//! Every [`crate::serve::serve`] loop beats its [`Heartbeat`] at least every
//! [`BEAT_INTERVAL`] (a timer branch of the loop's own `select!`, and after
//! every accept). Whoever supervises the process (the appliance's systemd
//! watchdog pings) reads [`Heartbeat::age`]: a loop that is stuck — its
//! task never polled again, its runtime wedged — stops beating, so the
//! supervisor stops vouching for it. A side timer would keep beating for a
//! dead server; the beat comes from inside the loop on purpose.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a serving loop beats when it has nothing else to do.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The time of the last beat of one accept loop.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds after `origin` of the last beat; `u64::MAX` once the
    /// loop has ended (it never beats again).
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the loop ran now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        // Never overwrite the "ended" mark.
        let _ = self
            .last_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                (old != u64::MAX).then_some(ms)
            });
    }

    /// Marks the loop as ended: [`Heartbeat::age`] is `None` from now on.
    pub fn stop(&self) {
        self.last_ms.store(u64::MAX, Ordering::Relaxed);
    }

    /// How long ago the loop last beat; `None` once it has ended.
    pub fn age(&self) -> Option<Duration> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last == u64::MAX {
            return None;
        }
        Some(
            self.origin
                .elapsed()
                .saturating_sub(Duration::from_millis(last)),
        )
    }

    /// Whether the loop beat within `within` (and has not ended).
    pub fn is_fresh(&self, within: Duration) -> bool {
        self.age().is_some_and(|age| age <= within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_then_stale_then_ended() {
        let hb = Heartbeat::new();
        assert!(hb.is_fresh(Duration::from_millis(500)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!hb.is_fresh(Duration::from_millis(50)), "no beat for 60 ms");
        hb.beat();
        assert!(hb.is_fresh(Duration::from_millis(50)));
        hb.stop();
        assert_eq!(hb.age(), None);
        hb.beat();
        assert_eq!(hb.age(), None, "an ended loop stays ended");
        assert!(!hb.is_fresh(Duration::from_secs(3600)));
    }
}
