//! Per-key request rates: `proxy.key_rpm`, or a key's own
//! `requests_per_minute`, counted in fixed windows of one UTC minute.
//!
//! The hot path ([`KeyLimiter::check_with`]) only touches memory: one
//! short lock, no I/O. With several replicas sharing a store, each one
//! also learns what the others admitted: every [`SYNC_EVERY`] a background
//! task ([`KeyLimiter::sync`]) adds the requests this replica admitted
//! since its last sync to the key's shared row (one write transaction,
//! serialized across replicas, so no count is lost or counted twice) and
//! reads every key's total for the current minute. A request is admitted
//! while this replica's own count plus the others' last known count is
//! under the limit.
//!
//! The bound (see `docs/SCALE.md`): what one replica admits becomes known
//! to the others within two sync intervals (its next sync publishes it,
//! theirs reads it), so in one minute a key gets at most
//! `rpm + (N − 1) × a` requests through N replicas, where `a` is the most
//! one replica admits for that key in two sync intervals (at most `rpm`:
//! a burst reaching every replica in the same half second).
//!
//! Windows are UTC minutes (not minutes since this process started), so
//! every replica counts the same window; the wall clock is read once, at
//! start, and the monotonic clock carries it on.
//!
//! Shared rows live in the table [`RATE_WINDOWS`]: key = the API key's id
//! (UTF-8), value = the minute (u64 LE, unix seconds / 60) and the count
//! admitted in it across replicas (u32 LE). Rows of past minutes are
//! deleted by the next write. On a store no other process shares, the sync
//! task does not run and nothing is written.

use super::ProxyError;
use crate::store::{Store, StoreError, Table};
use rustc_hash::FxHashMap as HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The table of shared per-key counts (only written when the store is
/// shared).
pub const RATE_WINDOWS: &str = "proxy_rate_windows";
/// How often a replica publishes its counts and reads the others'.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);

const MINUTE_MS: u64 = 60_000;

/// One key's count in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Window {
    /// The UTC minute (unix seconds / 60).
    minute: u64,
    /// Requests this replica admitted in it.
    local: u32,
    /// Of `local`, how many are already in the shared row.
    published: u32,
    /// The shared row's total when last read (every replica's published
    /// requests, this one's included).
    shared: u32,
}

impl Window {
    fn new(minute: u64) -> Window {
        Window {
            minute,
            ..Window::default()
        }
    }

    /// What the other replicas admitted, as last read.
    fn others(&self) -> u32 {
        self.shared.saturating_sub(self.published)
    }
}

/// Per-key request rates, counted in memory (see the module docs).
#[derive(Debug)]
pub struct KeyLimiter {
    rpm: u32,
    start: Instant,
    /// Unix time in milliseconds at `start`.
    start_unix_ms: u64,
    /// Keyed by API key ids (made here, never by a client), so the fast
    /// non-keyed hash is safe: no one can choose colliding keys.
    windows: Mutex<HashMap<String, Window>>,
    /// Held by a sync from taking its deltas until it has marked them
    /// published: two syncs at once would publish the same requests twice.
    syncing: Mutex<()>,
}

/// What one [`KeyLimiter::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Keys whose new requests were added to their shared rows.
    pub published: usize,
    /// Shared rows of the current minute read.
    pub read: usize,
}

fn unix_ms_now() -> u64 {
    let now = time::OffsetDateTime::now_utc();
    u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn encode(minute: u64, count: u32) -> [u8; 12] {
    let mut out = [0; 12];
    out[..8].copy_from_slice(&minute.to_le_bytes());
    out[8..].copy_from_slice(&count.to_le_bytes());
    out
}

/// `None` for a value that is not 12 bytes (skipped, then overwritten).
fn decode(v: &[u8]) -> Option<(u64, u32)> {
    let minute = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let count = u32::from_le_bytes(v.get(8..12)?.try_into().ok()?);
    (v.len() == 12).then_some((minute, count))
}

/// Every shared row of `minute`: (key id, count).
fn rows_of(table: &Table<'_>, minute: u64) -> Result<Vec<(String, u32)>, StoreError> {
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        if let (Ok(key), Some((m, n))) = (std::str::from_utf8(k.value()), decode(v.value()))
            && m == minute
        {
            out.push((key.to_owned(), n));
        }
    }
    Ok(out)
}

fn lock(m: &Mutex<HashMap<String, Window>>) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
    // Every critical section leaves the map consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KeyLimiter {
    pub fn new(rpm: u32) -> Self {
        Self::with_clock(rpm, Instant::now(), unix_ms_now())
    }

    /// A limiter whose monotonic `start` is `start_unix_ms` on the wall
    /// clock (tests pick window boundaries with it).
    pub fn with_clock(rpm: u32, start: Instant, start_unix_ms: u64) -> Self {
        KeyLimiter {
            rpm,
            start,
            start_unix_ms,
            windows: Mutex::new(HashMap::default()),
            syncing: Mutex::new(()),
        }
    }

    /// `proxy.key_rpm` (0: none).
    pub fn default_rpm(&self) -> u32 {
        self.rpm
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_millis();
        self.start_unix_ms
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    /// One request for `key_id` at `now` under `proxy.key_rpm`.
    pub fn check(&self, key_id: &str, now: Instant) -> Result<(), ProxyError> {
        self.check_with(key_id, self.rpm, now)
    }

    /// One request for `key_id` at `now` under `rpm` (the key's own limit,
    /// or the default; 0: none); 429 with `Retry-After` (the end of the
    /// minute) when the key has used up this minute, here and on the
    /// other replicas as far as known.
    pub fn check_with(&self, key_id: &str, rpm: u32, now: Instant) -> Result<(), ProxyError> {
        if rpm == 0 {
            return Ok(());
        }
        let ms = self.unix_ms(now);
        let minute = ms / MINUTE_MS;
        let mut w = lock(&self.windows);
        // Looked up before inserting: a key seen before costs no clone.
        let entry = match w.get_mut(key_id) {
            Some(e) => e,
            None => w.entry(key_id.to_owned()).or_insert(Window::new(minute)),
        };
        if entry.minute != minute {
            *entry = Window::new(minute);
        }
        if entry.local.saturating_add(entry.others()) >= rpm {
            let next = (minute + 1) * MINUTE_MS;
            return Err(ProxyError::KeyRateLimited {
                rpm,
                retry_after: Duration::from_millis(next.saturating_sub(ms)),
            });
        }
        entry.local += 1;
        Ok(())
    }

    /// Publishes the requests admitted since the last sync and reads the
    /// other replicas' counts (blocking: one write transaction when there
    /// is something to publish, else one read). Windows of past minutes
    /// are forgotten, here and in the table.
    pub fn sync(&self, store: &Store, now: Instant) -> Result<Synced, StoreError> {
        let _one = self
            .syncing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let minute = self.unix_ms(now) / MINUTE_MS;
        let deltas: Vec<(String, u32)> = {
            let mut w = lock(&self.windows);
            w.retain(|_, e| e.minute >= minute);
            w.iter()
                .filter(|(_, e)| e.minute == minute && e.local > e.published)
                .map(|(k, e)| (k.clone(), e.local - e.published))
                .collect()
        };
        let rows = if deltas.is_empty() {
            let txn = store.begin_read()?;
            let table = txn.open_named(RATE_WINDOWS)?;
            rows_of(&table, minute)?
        } else {
            let txn = store.begin_write()?;
            let rows = {
                let mut table = txn.open_named(RATE_WINDOWS)?;
                for (key, delta) in &deltas {
                    let total = match table.get(key.as_bytes())?.and_then(|v| decode(v.value())) {
                        Some((m, n)) if m == minute => n.saturating_add(*delta),
                        // A replica whose clock is ahead has started the
                        // next minute; this one's count would be the
                        // next minute's if written, so it is not.
                        Some((m, _)) if m > minute => continue,
                        _ => *delta,
                    };
                    table.insert(key.as_bytes(), &encode(minute, total))?;
                }
                table.retain(|_, v| decode(v).is_some_and(|(m, _)| m >= minute))?;
                rows_of(&table, minute)?
            };
            txn.commit()?;
            rows
        };
        let mut w = lock(&self.windows);
        let mut published = 0;
        for (key, delta) in &deltas {
            if let Some(e) = w.get_mut(key)
                && e.minute == minute
                && rows.iter().any(|(k, _)| k == key)
            {
                e.published = e.published.saturating_add(*delta);
                published += 1;
            }
        }
        for (key, total) in &rows {
            let entry = match w.get_mut(key) {
                Some(e) => e,
                None => w.entry(key.clone()).or_insert(Window::new(minute)),
            };
            if entry.minute == minute {
                entry.shared = *total;
            }
        }
        Ok(Synced {
            published,
            read: rows.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A wall-clock time on a minute boundary.
    const T0_MS: u64 = 29_000_000 * MINUTE_MS;

    #[test]
    fn key_rpm_window() {
        let start = Instant::now();
        let l = KeyLimiter::with_clock(2, start, T0_MS);
        let t = start;
        assert!(l.check("a", t).is_ok());
        assert!(l.check("a", t).is_ok());
        let err = l.check("a", t + Duration::from_secs(10));
        assert!(
            matches!(err, Err(ProxyError::KeyRateLimited { retry_after, .. }) if retry_after == Duration::from_secs(50))
        );
        assert!(l.check("b", t).is_ok());
        assert!(l.check("a", t + Duration::from_secs(61)).is_ok());
        assert!(KeyLimiter::new(0).check("a", t).is_ok());
        // A key's own limit replaces the default, for that key only.
        assert!(l.check_with("c", 1, t).is_ok());
        assert!(l.check_with("c", 1, t).is_err());
        assert!(l.check_with("d", 0, t).is_ok());
    }

    #[test]
    fn windows_are_utc_minutes() {
        // Started 45 s into a minute: the window ends 15 s later, not 60.
        let start = Instant::now();
        let l = KeyLimiter::with_clock(1, start, T0_MS + 45_000);
        assert!(l.check("a", start).is_ok());
        let err = l.check("a", start + Duration::from_secs(5));
        assert!(
            matches!(err, Err(ProxyError::KeyRateLimited { retry_after, .. }) if retry_after == Duration::from_secs(10))
        );
        assert!(l.check("a", start + Duration::from_secs(15)).is_ok());
    }

    #[test]
    fn encoding_round_trips_and_refuses_other_lengths() {
        assert_eq!(decode(&encode(7, 9)), Some((7, 9)));
        assert_eq!(decode(&[0; 11]), None);
        assert_eq!(decode(&[0; 13]), None);
    }

    /// Limiters over one store stand for replicas: the sync goes through
    /// the store's table and write transactions alone.
    fn replicas(rpm: u32, n: usize) -> (tempfile::TempDir, Arc<Store>, Vec<KeyLimiter>, Instant) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("store");
        let start = Instant::now();
        let ls = (0..n)
            .map(|_| KeyLimiter::with_clock(rpm, start, T0_MS))
            .collect();
        (dir, store, ls, start)
    }

    fn admitted(l: &KeyLimiter, key: &str, n: usize, t: Instant) -> usize {
        (0..n).filter(|_| l.check(key, t).is_ok()).count()
    }

    fn shared_total(store: &Store, key: &str) -> Option<(u64, u32)> {
        let txn = store.begin_read().expect("read");
        let table = txn.open_named(RATE_WINDOWS).expect("table");
        table
            .get(key.as_bytes())
            .expect("get")
            .and_then(|v| decode(v.value()))
    }

    #[test]
    fn replicas_learn_each_others_counts_at_their_next_sync() {
        let (_dir, store, ls, t) = replicas(10, 3);
        assert_eq!(admitted(&ls[0], "k", 4, t), 4);
        assert_eq!(admitted(&ls[1], "k", 3, t), 3);
        for l in ls.iter().chain([&ls[0]]) {
            l.sync(&store, t).expect("sync");
        }
        assert_eq!(shared_total(&store, "k"), Some((T0_MS / MINUTE_MS, 7)));
        // Everyone knows of 7: 3 more anywhere, then refusals.
        assert_eq!(admitted(&ls[2], "k", 1, t), 1);
        assert_eq!(admitted(&ls[0], "k", 1, t), 1);
        assert_eq!(admitted(&ls[1], "k", 1, t), 1);
        // Replica 2 has not heard of the last two yet: two more there
        // (the over-admission the bound allows), then it refuses too.
        assert_eq!(admitted(&ls[2], "k", 5, t), 2);
        for l in ls.iter().chain(ls.iter()) {
            l.sync(&store, t).expect("sync");
        }
        assert_eq!(shared_total(&store, "k"), Some((T0_MS / MINUTE_MS, 12)));
        for l in &ls {
            assert_eq!(admitted(l, "k", 3, t), 0, "every replica refuses now");
            // Another key is not affected.
            assert_eq!(admitted(l, "other", 1, t), 1);
        }
        // The next minute starts from zero everywhere, and the old rows go.
        let next = t + Duration::from_secs(60);
        assert_eq!(admitted(&ls[0], "k", 1, next), 1);
        for l in &ls {
            l.sync(&store, next).expect("sync");
        }
        assert_eq!(shared_total(&store, "k"), Some((T0_MS / MINUTE_MS + 1, 1)));
        assert_eq!(
            shared_total(&store, "other"),
            None,
            "last minute's row deleted"
        );
    }

    #[test]
    fn over_admission_stays_within_the_stated_bound() {
        // 3 replicas, each getting `per_interval` requests between syncs:
        // the key gets at most rpm + (N − 1) × per_interval, where counting
        // per replica alone would let 3 × rpm through. Each round every
        // replica syncs twice, so all know every count at its end.
        let (rpm, n, per_interval) = (100u32, 3usize, 5usize);
        let (_dir, store, ls, t) = replicas(rpm, n);
        let mut total = 0;
        for _round in 0..40 {
            for l in &ls {
                total += admitted(l, "k", per_interval, t);
            }
            for l in ls.iter().chain(ls.iter()) {
                l.sync(&store, t).expect("sync");
            }
        }
        let bound = rpm as usize + (n - 1) * per_interval;
        assert!(total >= rpm as usize, "under-admitted: {total}");
        assert!(total <= bound, "{total} admitted, bound {bound}");
        let stored = shared_total(&store, "k").expect("row").1;
        assert_eq!(stored as usize, total, "every admission counted once");
    }

    #[test]
    fn concurrent_syncs_lose_and_double_no_count() {
        let (_dir, store, ls, t) = replicas(1_000_000, 3);
        let ls: Vec<Arc<KeyLimiter>> = ls.into_iter().map(Arc::new).collect();
        let mut threads = Vec::new();
        for l in &ls {
            for _ in 0..2 {
                let (l, store) = (Arc::clone(l), Arc::clone(&store));
                threads.push(std::thread::spawn(move || {
                    let mut n = 0;
                    for i in 0..500 {
                        n += admitted(&l, "k", 1, t);
                        if i % 50 == 0 {
                            l.sync(&store, t).expect("sync");
                        }
                    }
                    n
                }));
            }
        }
        let total: usize = threads.into_iter().map(|h| h.join().expect("thread")).sum();
        // Twice: the first to sync learns of the last ones' counts only in
        // the second round.
        for l in ls.iter().chain(ls.iter()) {
            l.sync(&store, t).expect("final sync");
        }
        assert_eq!(total, 3_000);
        assert_eq!(shared_total(&store, "k").expect("row").1, 3_000);
        for l in &ls {
            let w = lock(&l.windows)["k"];
            assert_eq!(w.shared, 3_000);
            assert_eq!(w.local, w.published);
        }
    }
}
