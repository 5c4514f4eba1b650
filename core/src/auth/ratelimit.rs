//! Per-client-IP rate limiting for the auth endpoints. (Finding the client
//! IP behind trusted reverse proxies is `crate::net::client`.)
//!
//! # Algorithm
//!
//! GCRA (the generic cell rate algorithm), which behaves exactly like a
//! token bucket of `burst` tokens refilled one every `refill_every`, but
//! stores a single [`Instant`] per client: the *theoretical arrival time*
//! (TAT) at which the bucket would be full again. A request at `now` is
//! allowed when `TAT − now ≤ (burst − 1) · refill_every`, and then moves
//! TAT forward by one interval; refused requests change nothing, so
//! hammering while limited does not extend the wait.
//!
//! # Keys
//!
//! Clients are grouped by [`bucket_key`]: an IPv4 address as is (IPv4-mapped
//! IPv6 addresses count as IPv4), an IPv6 address by its /64 prefix, since
//! one host usually holds a whole /64 and could otherwise rotate through
//! 2⁶⁴ addresses. The cost is that a /64 shared by many hosts shares one
//! bucket, as hosts behind one IPv4 NAT do.
//!
//! # Memory
//!
//! The map holds at most `max_entries` clients (default 100 000, about
//! 5 MB). An entry whose TAT has passed is indistinguishable from a fresh
//! one, so it is dropped first. When the map is still full, the tenth with
//! the *earliest* TAT is evicted in one batch (amortised O(1) per insert):
//! those are the clients closest to a full bucket anyway, while clients
//! currently throttled (late TATs) stay throttled even when an attacker
//! floods the map with fresh addresses. Call [`RateLimiter::sweep`] from a
//! timer to free memory between bursts.
//!
//! # Threads
//!
//! One `Mutex<HashMap>`: each check holds it for a hash lookup and insert,
//! which is far cheaper than the argon2 verification it protects. A
//! poisoned lock is recovered, because every update leaves the map valid.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How a [`RateLimiter`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests a client may make at once after being idle.
    pub burst: u32,
    /// One request is refilled every this long (the sustained rate).
    pub refill_every: Duration,
    /// Most clients remembered at once.
    pub max_entries: usize,
}

impl Default for RateLimitConfig {
    /// 10 requests at once, then one every 6 s (10 a minute), 100 000
    /// clients.
    fn default() -> Self {
        RateLimitConfig {
            burst: 10,
            refill_every: Duration::from_secs(6),
            max_entries: 100_000,
        }
    }
}

impl RateLimitConfig {
    /// `per_minute` sustained requests a minute, `burst` at once.
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        let refill_every = match per_minute {
            0 => Duration::ZERO, // refused by RateLimiter::new
            n => Duration::from_secs(60) / n,
        };
        RateLimitConfig {
            burst,
            refill_every,
            ..RateLimitConfig::default()
        }
    }
}

/// A configuration [`RateLimiter::new`] refuses.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitConfigError {
    #[error("rate limit burst must be at least 1")]
    ZeroBurst,
    #[error("rate limit refill interval must be between 1 µs and 1 day")]
    BadInterval,
    #[error("rate limit must remember at least one client")]
    ZeroCapacity,
}

/// A refused request: the client may try again after this long. Answer 429
/// with `Retry-After: `[`RetryAfter::as_secs_ceil`].
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("too many requests; retry after {} s", self.as_secs_ceil())]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for a `Retry-After` header, rounded up and at least 1.
    pub fn as_secs_ceil(&self) -> u64 {
        let d = self.0;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// A thread-safe per-IP rate limiter; see the module docs.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    /// `(burst − 1) · refill_every`: how far ahead of now TAT may run.
    tolerance: Duration,
    tats: Mutex<HashMap<IpAddr, Instant>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Result<Self, RateLimitConfigError> {
        if config.burst == 0 {
            return Err(RateLimitConfigError::ZeroBurst);
        }
        if config.refill_every < Duration::from_micros(1)
            || config.refill_every > Duration::from_secs(86_400)
        {
            return Err(RateLimitConfigError::BadInterval);
        }
        if config.max_entries == 0 {
            return Err(RateLimitConfigError::ZeroCapacity);
        }
        // At most 1 day × (2³² − 1): no overflow in Duration.
        let tolerance = config.refill_every * (config.burst - 1);
        Ok(RateLimiter {
            config,
            tolerance,
            tats: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Counts one request from `ip` at `now`, or refuses it with how long
    /// to wait. A refused request is not counted.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), RetryAfter> {
        let key = bucket_key(ip);
        let mut tats = self.lock();
        let tat = tats.get(&key).map_or(now, |&t| t.max(now));
        let ahead = tat.saturating_duration_since(now);
        if ahead > self.tolerance {
            return Err(RetryAfter(ahead - self.tolerance));
        }
        let Some(next) = tat.checked_add(self.config.refill_every) else {
            // Only reachable with an Instant near the end of time.
            return Err(RetryAfter(self.config.refill_every));
        };
        if !tats.contains_key(&key) && tats.len() >= self.config.max_entries {
            self.make_room(&mut tats, now);
        }
        tats.insert(key, next);
        Ok(())
    }

    /// The same step on a bucket kept elsewhere (the store shares it
    /// between processes: `auth::state`), in unix microseconds: the new
    /// theoretical arrival time to keep, or how long to wait (the bucket
    /// stays as it was).
    pub fn step(&self, tat: Option<u64>, now_us: u64) -> Result<u64, RetryAfter> {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let tat = tat.unwrap_or(now_us).max(now_us);
        let ahead = tat - now_us;
        let tolerance = micros(self.tolerance);
        if ahead > tolerance {
            return Err(RetryAfter(Duration::from_micros(ahead - tolerance)));
        }
        Ok(tat.saturating_add(micros(self.config.refill_every)))
    }

    /// Drops every client whose bucket is full again; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut tats = self.lock();
        let before = tats.len();
        tats.retain(|_, tat| *tat > now);
        before - tats.len()
    }

    /// Clients currently remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.tats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn make_room(&self, tats: &mut HashMap<IpAddr, Instant>, now: Instant) {
        tats.retain(|_, tat| *tat > now);
        let cap = self.config.max_entries;
        if tats.len() < cap {
            return;
        }
        let batch = (cap / 10).max(1).min(tats.len());
        let mut by_age: Vec<(Instant, IpAddr)> = tats.iter().map(|(k, t)| (*t, *k)).collect();
        by_age.select_nth_unstable_by_key(batch - 1, |(t, _)| *t);
        for (_, key) in &by_age[..batch] {
            tats.remove(key);
        }
    }
}

/// The bucket a client address falls in: IPv4 as is (IPv4-mapped IPv6
/// turned back into IPv4), IPv6 truncated to its /64.
pub fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !(u128::from(u64::MAX));
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(burst: u32, every_ms: u64, cap: usize) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            burst,
            refill_every: Duration::from_millis(every_ms),
            max_entries: cap,
        })
        .unwrap()
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn burst_then_refused_with_retry_after() {
        let l = limiter(5, 1000, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(l.check(a, t0).is_ok());
        }
        assert_eq!(l.check(a, t0), Err(RetryAfter(SEC)));
        assert_eq!(l.check(a, t0 + SEC / 4), Err(RetryAfter(SEC * 3 / 4)));
        // Exactly when told, one request (and only one) gets through.
        assert!(l.check(a, t0 + SEC).is_ok());
        assert!(l.check(a, t0 + SEC).is_err());
    }

    #[test]
    fn refused_requests_do_not_extend_the_wait() {
        let l = limiter(3, 1000, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            l.check(a, t0).unwrap();
        }
        for i in 0..1000 {
            assert!(l.check(a, t0 + Duration::from_micros(i)).is_err());
        }
        assert!(l.check(a, t0 + SEC).is_ok());
    }

    #[test]
    fn full_burst_returns_after_idle() {
        let l = limiter(4, 500, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.9");
        for _ in 0..4 {
            l.check(a, t0).unwrap();
        }
        let later = t0 + SEC * 10;
        for _ in 0..4 {
            assert!(l.check(a, later).is_ok());
        }
        assert!(l.check(a, later).is_err());
    }

    #[test]
    fn sustained_rate_never_exceeds_burst_plus_refill() {
        // Property: over any run, allowed ≤ burst + elapsed / interval, and
        // a client that waits as told is never refused.
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..200 {
            let burst = rng.gen_range(1..20);
            let every = rng.gen_range(1..2000u64);
            let l = limiter(burst, every, 10);
            let t0 = Instant::now();
            let mut t = t0;
            let mut allowed = 0u64;
            for _ in 0..500 {
                t += Duration::from_millis(rng.gen_range(0..every * 2));
                match l.check(ip("198.51.100.7"), t) {
                    Ok(()) => allowed += 1,
                    Err(RetryAfter(wait)) => {
                        assert!(wait > Duration::ZERO);
                        assert!(wait <= Duration::from_millis(every));
                        assert!(l.check(ip("198.51.100.7"), t + wait).is_ok());
                        allowed += 1;
                        t += wait;
                    }
                }
                let elapsed = (t - t0).as_millis() as u64;
                assert!(
                    allowed <= u64::from(burst) + elapsed / every,
                    "{burst} {every}"
                );
            }
        }
    }

    #[test]
    fn clients_are_independent() {
        let l = limiter(2, 1000, 100);
        let t0 = Instant::now();
        l.check(ip("192.0.2.1"), t0).unwrap();
        l.check(ip("192.0.2.1"), t0).unwrap();
        assert!(l.check(ip("192.0.2.1"), t0).is_err());
        assert!(l.check(ip("192.0.2.2"), t0).is_ok());
        assert!(l.check(ip("2001:db8::1"), t0).is_ok());
    }

    #[test]
    fn ipv6_rotation_within_a_64_does_not_help() {
        // Attack: rotate through addresses of one /64.
        let l = limiter(3, 60_000, 1000);
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let prefix: u128 = 0x2001_0db8_0001_0002 << 64;
        let mut ok = 0;
        for _ in 0..100 {
            let addr = Ipv6Addr::from(prefix | u128::from(rng.r#gen::<u64>()));
            ok += usize::from(l.check(IpAddr::V6(addr), t0).is_ok());
        }
        assert_eq!(ok, 3);
        assert_eq!(l.len(), 1);
        assert!(
            l.check(ip("2001:db8:1:3::1"), t0).is_ok(),
            "next /64 is separate"
        );
    }

    #[test]
    fn bucket_keys() {
        assert_eq!(bucket_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(bucket_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(
            bucket_key(ip("2001:db8:aa:bb:1:2:3:4")),
            ip("2001:db8:aa:bb::")
        );
        assert_eq!(bucket_key(ip("::1")), ip("::"));
    }

    #[test]
    fn mapped_and_plain_ipv4_share_a_bucket() {
        let l = limiter(1, 1000, 100);
        let t0 = Instant::now();
        l.check(ip("192.0.2.1"), t0).unwrap();
        assert!(l.check(ip("::ffff:192.0.2.1"), t0).is_err());
    }

    #[test]
    fn memory_stays_bounded_under_address_flood() {
        let l = limiter(5, 1000, 100);
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(3);
        for i in 0..10_000u32 {
            let a = IpAddr::V4(Ipv4Addr::from(rng.r#gen::<u32>()));
            let _ = l.check(a, t0 + Duration::from_micros(u64::from(i)));
            assert!(l.len() <= 100);
        }
    }

    #[test]
    fn throttled_client_stays_throttled_through_a_flood() {
        // Attack: exhaust the budget, then flood the map with fresh
        // addresses hoping to get the throttled entry evicted.
        let l = limiter(5, 60_000, 50);
        let t0 = Instant::now();
        let attacker = ip("203.0.113.66");
        while l.check(attacker, t0).is_ok() {}
        for i in 0..5_000u32 {
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.check(a, t0);
        }
        assert!(l.check(attacker, t0).is_err());
    }

    #[test]
    fn sweep_drops_only_full_buckets() {
        let l = limiter(2, 1000, 100);
        let t0 = Instant::now();
        l.check(ip("192.0.2.1"), t0).unwrap();
        l.check(ip("192.0.2.2"), t0 + SEC * 5).unwrap();
        assert_eq!(l.sweep(t0 + SEC * 2), 1);
        assert_eq!(l.len(), 1);
        assert_eq!(l.sweep(t0 + SEC * 10), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn concurrent_checks_allow_exactly_the_burst() {
        let l = Arc::new(limiter(50, 60_000, 100));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| l.check(ip("192.0.2.77"), t0).is_ok())
                        .count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 50);
    }

    #[test]
    fn config_is_validated() {
        let bad = |c: RateLimitConfig| RateLimiter::new(c).unwrap_err();
        let ok = RateLimitConfig::default();
        assert_eq!(
            bad(RateLimitConfig { burst: 0, ..ok }),
            RateLimitConfigError::ZeroBurst
        );
        assert_eq!(
            bad(RateLimitConfig {
                refill_every: Duration::ZERO,
                ..ok
            }),
            RateLimitConfigError::BadInterval
        );
        assert_eq!(
            bad(RateLimitConfig {
                refill_every: Duration::from_secs(86_401),
                ..ok
            }),
            RateLimitConfigError::BadInterval
        );
        assert_eq!(
            bad(RateLimitConfig {
                max_entries: 0,
                ..ok
            }),
            RateLimitConfigError::ZeroCapacity
        );
        assert_eq!(
            bad(RateLimitConfig::per_minute(0, 5)),
            RateLimitConfigError::BadInterval
        );
        let c = RateLimitConfig::per_minute(30, 5);
        assert_eq!(c.refill_every, Duration::from_secs(2));
        assert!(RateLimiter::new(c).is_ok());
        assert!(
            RateLimiter::new(RateLimitConfig {
                burst: u32::MAX,
                refill_every: Duration::from_secs(86_400),
                max_entries: 1
            })
            .is_ok()
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).as_secs_ceil(), 1);
        assert_eq!(RetryAfter(Duration::ZERO).as_secs_ceil(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(2001)).as_secs_ceil(), 3);
        assert_eq!(RetryAfter(Duration::from_secs(2)).as_secs_ceil(), 2);
        assert!(RetryAfter(SEC).to_string().contains("1 s"));
    }
}
