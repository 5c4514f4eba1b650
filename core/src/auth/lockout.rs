//! Account lockout after repeated failed sign-ins.
//!
//! `max_failures` consecutive failures (default 5) lock an account for
//! `lock_for` (default 15 minutes). Every failed credential counts —
//! password, TOTP code, recovery code — and any success resets the count.
//! When a lock expires the count starts again from zero; a streak that has
//! been quiet for `forget_after` (default 24 h) is forgotten, so a typo a
//! week ago does not count towards today's lock.
//!
//! # How to use it
//!
//! Call [`Lockout::reserve`] *before* verifying any credential, and refuse
//! (429 or 423 with `Retry-After`) without verifying when locked. The
//! reservation counts the attempt as a failure at once, in the same
//! critical section as the check: of concurrent attempts, at most
//! `max_failures` are ever verified (a separate check, then a record after
//! the slow verification, let every attempt that started together through).
//! Then [`Lockout::record_success`] on success, [`Lockout::release`] when
//! the attempt proved nothing either way, and nothing on failure. Key the
//! lockout by the normalised username **whether or not the user exists**,
//! so an attacker cannot tell real accounts by which ones lock.
//!
//! A failure while locked neither extends nor restarts the lock: otherwise
//! anyone could keep a victim locked out by guessing now and then.
//!
//! # Memory and persistence
//!
//! State is in memory behind one `Mutex<HashMap>`, at most `max_entries`
//! accounts (default 100 000; keys longer than 128 bytes are stored as
//! their SHA-256). When full, expired entries go first, then unlocked
//! streaks with the oldest last failure, and locked accounts only when
//! nothing else is left — spraying random usernames therefore cannot evict
//! a victim's lock. [`Lockout::snapshot`] and [`Lockout::restore`] let the
//! owner persist the state across restarts.
//!
//! Time is `now: u64` unix seconds, passed in. If the clock steps back, a
//! lock never lasts longer than `lock_for` from the current time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use thiserror::Error;

/// Keys longer than this are stored as `sha256:<hex>` to bound memory.
pub const MAX_KEY_LEN: usize = 128;
/// The snapshot format [`Lockout::snapshot`] writes.
pub const SNAPSHOT_VERSION: u32 = 1;

/// How a [`Lockout`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutConfig {
    /// Consecutive failures that lock an account.
    pub max_failures: u32,
    /// How long a lock lasts.
    pub lock_for: Duration,
    /// A failure streak this quiet is forgotten.
    pub forget_after: Duration,
    /// Most accounts remembered at once.
    pub max_entries: usize,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        LockoutConfig {
            max_failures: 5,
            lock_for: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(24 * 60 * 60),
            max_entries: 100_000,
        }
    }
}

/// Errors of this module.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LockoutError {
    #[error("lockout needs at least one failure to lock")]
    ZeroFailures,
    #[error("lockout duration must be at least one second")]
    ZeroLock,
    #[error("lockout must remember at least one account")]
    ZeroCapacity,
    #[error("lockout snapshot version {0} is not supported (expected {SNAPSHOT_VERSION})")]
    UnsupportedSnapshot(u32),
}

/// An attempt refused because the account is locked. Carries no detail
/// beyond the wait, and looks the same for unknown usernames.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("too many failed attempts; try again in {} s", self.retry_after.as_secs().max(1))]
pub struct Locked {
    pub retry_after: Duration,
}

/// Where an account stands after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Not locked: `failures` so far, `remaining` before the lock.
    Open { failures: u32, remaining: u32 },
    /// Locked for `retry_after`; `just_locked` is true for the failure that
    /// caused the lock (audit a lockout once, not on every later attempt).
    Locked {
        retry_after: Duration,
        just_locked: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    failures: u32,
    last_failure: u64,
    locked_until: Option<u64>,
}

/// Persistable lockout state; see [`Lockout::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockoutSnapshot {
    pub version: u32,
    pub entries: Vec<SnapshotEntry>,
}

/// One account in a [`LockoutSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub key: String,
    pub failures: u32,
    pub last_failure: u64,
    pub locked_until: Option<u64>,
}

/// Thread-safe lockout bookkeeping; see the module docs.
pub struct Lockout {
    config: LockoutConfig,
    entries: Mutex<HashMap<String, Entry>>,
}

impl fmt::Debug for Lockout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lockout")
            .field("config", &self.config)
            .field("entries", &self.len())
            .finish()
    }
}

impl Lockout {
    pub fn new(config: LockoutConfig) -> Result<Self, LockoutError> {
        if config.max_failures == 0 {
            return Err(LockoutError::ZeroFailures);
        }
        if config.lock_for.as_secs() == 0 {
            return Err(LockoutError::ZeroLock);
        }
        if config.max_entries == 0 {
            return Err(LockoutError::ZeroCapacity);
        }
        Ok(Lockout {
            config,
            entries: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &LockoutConfig {
        &self.config
    }

    /// Refuses an attempt on a locked account. Call before verifying.
    pub fn check(&self, user_key: &str, now: u64) -> Result<(), Locked> {
        let key = normalize_key(user_key);
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(key.as_str()) else {
            return Ok(());
        };
        if let Some(retry_after) = self.locked_for(entry, now) {
            return Err(Locked { retry_after });
        }
        if self.is_stale(entry, now) {
            entries.remove(key.as_str());
        }
        Ok(())
    }

    /// Checks and counts an attempt in one step: refused while locked,
    /// else counted as a failure until [`Lockout::record_success`] or
    /// [`Lockout::release`]. The attempt that reaches `max_failures` is
    /// still let through (it locks the key for every later one).
    pub fn reserve(&self, user_key: &str, now: u64) -> Result<LockState, Locked> {
        let key = normalize_key(user_key);
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key.as_str())
            && let Some(retry_after) = self.locked_for(entry, now)
        {
            return Err(Locked { retry_after });
        }
        // Counted under the same lock as the check.
        Ok(self.record_in(&mut entries, key, now))
    }

    /// Gives back a reservation that proved nothing (a right password
    /// whose second step is still to come, malformed input): one failure
    /// less, and the lock it may have set is lifted.
    pub fn release(&self, user_key: &str) {
        let key = normalize_key(user_key);
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key.as_str()) {
            entry.failures = entry.failures.saturating_sub(1);
            if entry.failures < self.config.max_failures {
                entry.locked_until = None;
            }
        }
    }

    /// Counts a failed password, TOTP or recovery code.
    pub fn record_failure(&self, user_key: &str, now: u64) -> LockState {
        let key = normalize_key(user_key);
        let mut entries = self.lock();
        self.record_in(&mut entries, key, now)
    }

    fn record_in(&self, entries: &mut HashMap<String, Entry>, key: String, now: u64) -> LockState {
        if !entries.contains_key(key.as_str()) && entries.len() >= self.config.max_entries {
            self.make_room(entries, now);
        }
        let entry = entries.entry(key).or_insert(Entry {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        if let Some(retry_after) = self.locked_for(entry, now) {
            return LockState::Locked {
                retry_after,
                just_locked: false,
            };
        }
        if self.is_stale(entry, now) {
            entry.failures = 0;
            entry.locked_until = None;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures >= self.config.max_failures {
            entry.locked_until = Some(now.saturating_add(self.config.lock_for.as_secs()));
            return LockState::Locked {
                retry_after: self.config.lock_for,
                just_locked: true,
            };
        }
        LockState::Open {
            failures: entry.failures,
            remaining: self.config.max_failures - entry.failures,
        }
    }

    /// A successful sign-in: forgets the account's failures. Also how an
    /// admin lifts a lock by hand.
    pub fn record_success(&self, user_key: &str) {
        let key = normalize_key(user_key);
        self.lock().remove(key.as_str());
    }

    /// Forgets every key that starts with `prefix` (an account under all
    /// its sources, see [`source_key`]): how an admin lifts an account's
    /// locks by hand.
    pub fn forget_prefix(&self, prefix: &str) {
        self.lock().retain(|k, _| !k.starts_with(prefix));
    }

    /// Accounts currently remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry that no longer matters; returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|_, e| !self.is_stale(e, now));
        before - entries.len()
    }

    /// The whole state, sorted by key, for the owner to persist.
    pub fn snapshot(&self) -> LockoutSnapshot {
        let entries = self.lock();
        let mut list: Vec<SnapshotEntry> = entries
            .iter()
            .map(|(k, e)| SnapshotEntry {
                key: k.clone(),
                failures: e.failures,
                last_failure: e.last_failure,
                locked_until: e.locked_until,
            })
            .collect();
        list.sort_by(|a, b| a.key.cmp(&b.key));
        LockoutSnapshot {
            version: SNAPSHOT_VERSION,
            entries: list,
        }
    }

    /// Replaces the state with a snapshot, dropping what has expired by
    /// `now`, shortening locks that run beyond `now + lock_for` (a clock
    /// that stepped back, or a tampered file) and keeping within
    /// `max_entries`.
    pub fn restore(&self, snapshot: LockoutSnapshot, now: u64) -> Result<(), LockoutError> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(LockoutError::UnsupportedSnapshot(snapshot.version));
        }
        let mut map = HashMap::new();
        for s in snapshot.entries {
            let entry = Entry {
                failures: s.failures.min(self.config.max_failures),
                last_failure: s.last_failure.min(now),
                locked_until: s.locked_until,
            };
            if !self.is_stale(&entry, now) {
                map.insert(normalize_key(&s.key), entry);
            }
        }
        for entry in map.values_mut() {
            // Clamps locks that end too far in the future.
            let _ = self.locked_for(entry, now);
        }
        let excess = map.len().saturating_sub(self.config.max_entries);
        self.evict_batch(&mut map, excess);
        *self.lock() = map;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every update leaves the map valid, so a poisoned lock is safe.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long `entry` stays locked at `now`, clamping an over-long lock.
    fn locked_for(&self, entry: &mut Entry, now: u64) -> Option<Duration> {
        let until = entry.locked_until?;
        if until <= now {
            return None;
        }
        let max = now.saturating_add(self.config.lock_for.as_secs());
        let until = until.min(max);
        entry.locked_until = Some(until);
        Some(Duration::from_secs(until - now))
    }

    /// Whether `entry` is equivalent to no entry at all.
    fn is_stale(&self, entry: &Entry, now: u64) -> bool {
        match entry.locked_until {
            Some(until) => until <= now,
            None => now.saturating_sub(entry.last_failure) >= self.config.forget_after.as_secs(),
        }
    }

    fn make_room(&self, entries: &mut HashMap<String, Entry>, now: u64) {
        entries.retain(|_, e| !self.is_stale(e, now));
        if entries.len() >= self.config.max_entries {
            self.evict_batch(entries, (self.config.max_entries / 10).max(1));
        }
    }

    /// Evicts `count` entries: unlocked ones with the oldest last failure
    /// first, then locks that end soonest.
    fn evict_batch(&self, entries: &mut HashMap<String, Entry>, count: usize) {
        let count = count.min(entries.len());
        if count == 0 {
            return;
        }
        let mut order: Vec<((bool, u64), &String)> = entries
            .iter()
            .map(|(k, e)| {
                let rank = match e.locked_until {
                    Some(until) => (true, until),
                    None => (false, e.last_failure),
                };
                (rank, k)
            })
            .collect();
        order.select_nth_unstable_by_key(count - 1, |(rank, _)| *rank);
        let victims: Vec<String> = order[..count].iter().map(|(_, k)| (*k).clone()).collect();
        for k in victims {
            entries.remove(&k);
        }
    }
}

fn normalize_key(key: &str) -> String {
    if key.len() <= MAX_KEY_LEN {
        key.to_owned()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
    }
}

/// The [`Lockout`] key of `account` tried from `source`: locks are per
/// account *and* source, so failures from one place never lock the owner
/// out from another. The account comes first, so
/// [`Lockout::forget_prefix`] with [`account_prefix`] lifts every lock of
/// an account.
pub fn source_key(account: &str, source: &str) -> String {
    format!("{}{source}", account_prefix(account))
}

/// The prefix every [`source_key`] of `account` starts with.
pub fn account_prefix(account: &str) -> String {
    format!("{account}\u{0}")
}

/// The account-wide ceiling on failed attempts, from all sources together.
///
/// Per-source locks alone let an attacker with many addresses guess at
/// `sources × max_failures` per lock period. This bounds that without
/// handing anyone a switch: failures fill a GCRA bucket of `burst` per
/// account that drains one every `every`; once full, the account accepts
/// one attempt per `every` (the next may come as soon as the bucket has
/// room) — slowed, never shut. It refuses before any credential work, and
/// successes do not empty it (an attacker cannot reset it by luck, and the
/// owner's success should not hand the attacker a fresh burst).
pub struct AccountThrottle {
    burst: u64,
    every: u64,
    max_entries: usize,
    /// Account key → theoretical arrival time (unix seconds).
    tats: Mutex<HashMap<String, u64>>,
}

impl fmt::Debug for AccountThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountThrottle")
            .field("burst", &self.burst)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl AccountThrottle {
    /// `burst` failures at once, then one per `every` (at least 1 s each).
    pub fn new(burst: u32, every: Duration, max_entries: usize) -> Self {
        AccountThrottle {
            burst: u64::from(burst.max(1)),
            every: every.as_secs().max(1),
            max_entries: max_entries.max(1),
            tats: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.tats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses an attempt while the account's bucket is full.
    pub fn check(&self, account: &str, now: u64) -> Result<(), Locked> {
        let key = normalize_key(account);
        let tats = self.lock();
        match self.wait(&tats, &key, now) {
            Some(retry_after) => Err(Locked { retry_after }),
            None => Ok(()),
        }
    }

    /// Checks and counts an attempt in one step (see
    /// [`Lockout::reserve`]): refused while the bucket is full, else
    /// counted until [`AccountThrottle::release`]; `Ok(true)` when this
    /// one filled the bucket. Admitting only while there is room keeps the
    /// bucket's end within `now + burst × every`, so the wait it imposes
    /// on anyone never exceeds one `every`, however many attempts race.
    pub fn reserve(&self, account: &str, now: u64) -> Result<bool, Locked> {
        let key = normalize_key(account);
        let mut tats = self.lock();
        if let Some(retry_after) = self.wait(&tats, &key, now) {
            return Err(Locked { retry_after });
        }
        Ok(self.record_in(&mut tats, key, now))
    }

    /// Gives back a reservation: a success, or an attempt that proved
    /// nothing. The owner signing in does not use up the account's room.
    pub fn release(&self, account: &str, now: u64) {
        let key = normalize_key(account);
        let mut tats = self.lock();
        if let Some(tat) = tats.get_mut(key.as_str()) {
            *tat = tat.saturating_sub(self.every);
            if *tat <= now {
                tats.remove(key.as_str());
            }
        }
    }

    /// How long `key` must wait at `now`, if its bucket is full.
    fn wait(&self, tats: &HashMap<String, u64>, key: &str, now: u64) -> Option<Duration> {
        let &tat = tats.get(key)?;
        let allowed_until = now.saturating_add((self.burst - 1).saturating_mul(self.every));
        (tat > allowed_until).then(|| Duration::from_secs((tat - allowed_until).min(self.every)))
    }

    /// Counts a failure; true when this one filled the bucket (audit the
    /// start of a throttle once).
    pub fn record_failure(&self, account: &str, now: u64) -> bool {
        let key = normalize_key(account);
        let mut tats = self.lock();
        self.record_in(&mut tats, key, now)
    }

    fn record_in(&self, tats: &mut HashMap<String, u64>, key: String, now: u64) -> bool {
        if !tats.contains_key(key.as_str()) && tats.len() >= self.max_entries {
            tats.retain(|_, t| *t > now);
            if tats.len() >= self.max_entries {
                // Drop the emptiest buckets: the accounts least under attack.
                let mut order: Vec<(u64, String)> =
                    tats.iter().map(|(k, t)| (*t, k.clone())).collect();
                order.sort_unstable();
                for (_, k) in order.into_iter().take((self.max_entries / 10).max(1)) {
                    tats.remove(&k);
                }
            }
        }
        let tat = tats.entry(key).or_insert(now);
        let full = now.saturating_add(self.burst.saturating_mul(self.every));
        let before = (*tat).max(now);
        // Never beyond a full bucket: a failure past the burst (counted
        // without a reservation) must not push the wait out further.
        *tat = before.saturating_add(self.every).min(full);
        *tat > full.saturating_sub(self.every) && before <= full.saturating_sub(self.every)
    }

    /// Drops buckets that have drained; returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        let mut tats = self.lock();
        let before = tats.len();
        tats.retain(|_, t| *t > now);
        before - tats.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;

    const T0: u64 = 1_700_000_000;
    const WINDOW: u64 = 15 * 60;

    fn lockout() -> Lockout {
        Lockout::new(LockoutConfig::default()).unwrap()
    }

    fn fail_n(l: &Lockout, user: &str, n: u32, now: u64) -> LockState {
        let mut last = LockState::Open {
            failures: 0,
            remaining: 0,
        };
        for _ in 0..n {
            last = l.record_failure(user, now);
        }
        last
    }

    #[test]
    fn fifth_failure_locks() {
        let l = lockout();
        for i in 1..=4 {
            assert_eq!(
                l.record_failure("alice", T0 + u64::from(i)),
                LockState::Open {
                    failures: i,
                    remaining: 5 - i
                }
            );
            assert!(l.check("alice", T0 + u64::from(i)).is_ok());
        }
        assert_eq!(
            l.record_failure("alice", T0 + 5),
            LockState::Locked {
                retry_after: Duration::from_secs(WINDOW),
                just_locked: true
            }
        );
        assert_eq!(
            l.check("alice", T0 + 5),
            Err(Locked {
                retry_after: Duration::from_secs(WINDOW)
            })
        );
    }

    #[test]
    fn locked_stays_locked_until_the_window_passes() {
        let l = lockout();
        fail_n(&l, "alice", 5, T0);
        for t in [T0, T0 + 1, T0 + 60, T0 + WINDOW - 1] {
            let err = l.check("alice", t).unwrap_err();
            assert_eq!(err.retry_after, Duration::from_secs(T0 + WINDOW - t));
        }
        assert!(l.check("alice", T0 + WINDOW).is_ok());
    }

    #[test]
    fn guessing_while_locked_does_not_extend_the_lock() {
        // Attack: keep guessing to keep the victim locked out forever.
        let l = lockout();
        fail_n(&l, "alice", 5, T0);
        for t in T0..T0 + WINDOW {
            assert!(matches!(
                l.record_failure("alice", t),
                LockState::Locked {
                    just_locked: false,
                    ..
                }
            ));
        }
        assert!(l.check("alice", T0 + WINDOW).is_ok());
    }

    #[test]
    fn release_after_window_starts_a_fresh_count() {
        let l = lockout();
        fail_n(&l, "alice", 5, T0);
        let after = T0 + WINDOW;
        assert!(l.check("alice", after).is_ok());
        assert_eq!(
            l.record_failure("alice", after),
            LockState::Open {
                failures: 1,
                remaining: 4
            }
        );
        assert!(matches!(
            fail_n(&l, "alice", 4, after + 1),
            LockState::Locked {
                just_locked: true,
                ..
            }
        ));
    }

    #[test]
    fn success_resets_the_counter() {
        let l = lockout();
        fail_n(&l, "alice", 4, T0);
        l.record_success("alice");
        assert_eq!(
            l.record_failure("alice", T0 + 1),
            LockState::Open {
                failures: 1,
                remaining: 4
            }
        );
        assert!(l.is_empty() || l.len() == 1);
    }

    #[test]
    fn record_success_lifts_a_lock() {
        let l = lockout();
        fail_n(&l, "alice", 5, T0);
        l.record_success("alice");
        assert!(l.check("alice", T0 + 1).is_ok());
    }

    #[test]
    fn users_are_independent() {
        let l = lockout();
        fail_n(&l, "alice", 5, T0);
        fail_n(&l, "bob", 4, T0);
        assert!(l.check("alice", T0).is_err());
        assert!(l.check("bob", T0).is_ok());
        assert!(l.check("carol", T0).is_ok());
        assert!(
            l.check("Alice", T0).is_ok(),
            "keys are exact; callers normalise"
        );
    }

    #[test]
    fn quiet_streak_is_forgotten() {
        let l = lockout();
        fail_n(&l, "alice", 4, T0);
        let later = T0 + 24 * 3600;
        assert_eq!(
            l.record_failure("alice", later),
            LockState::Open {
                failures: 1,
                remaining: 4
            }
        );
    }

    #[test]
    fn property_lock_iff_n_consecutive_failures() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..300 {
            let max = rng.gen_range(1..8);
            let lock_for = rng.gen_range(1..3600);
            let l = Lockout::new(LockoutConfig {
                max_failures: max,
                lock_for: Duration::from_secs(lock_for),
                ..LockoutConfig::default()
            })
            .unwrap();
            let mut now = T0;
            let mut streak = 0u32;
            let mut locked_until: Option<u64> = None;
            for _ in 0..200 {
                now += rng.gen_range(0..lock_for / 4 + 2);
                if locked_until.is_some_and(|u| u <= now) {
                    locked_until = None;
                    streak = 0;
                }
                assert_eq!(l.check("u", now).is_err(), locked_until.is_some());
                if locked_until.is_some() {
                    continue;
                }
                if rng.gen_bool(0.2) {
                    l.record_success("u");
                    streak = 0;
                } else {
                    streak += 1;
                    let st = l.record_failure("u", now);
                    if streak >= max {
                        assert!(matches!(
                            st,
                            LockState::Locked {
                                just_locked: true,
                                ..
                            }
                        ));
                        locked_until = Some(now + lock_for);
                    } else {
                        assert_eq!(
                            st,
                            LockState::Open {
                                failures: streak,
                                remaining: max - streak
                            }
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn clock_stepping_back_never_lengthens_a_lock() {
        let l = lockout();
        fail_n(&l, "alice", 5, T0);
        let earlier = T0 - 86_400;
        let err = l.check("alice", earlier).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(WINDOW));
        assert!(l.check("alice", earlier + WINDOW).is_ok());
    }

    #[test]
    fn memory_is_bounded_and_spraying_cannot_evict_a_lock() {
        // Attack: lock the victim, then spray random usernames hoping the
        // victim's entry is evicted and the lock lifted.
        let l = Lockout::new(LockoutConfig {
            max_entries: 100,
            ..LockoutConfig::default()
        })
        .unwrap();
        fail_n(&l, "victim", 5, T0);
        let mut rng = StdRng::seed_from_u64(11);
        for i in 0..10_000u64 {
            let name = format!("spray-{}", rng.r#gen::<u64>());
            l.record_failure(&name, T0 + i / 100);
            assert!(l.len() <= 100);
        }
        assert!(l.check("victim", T0 + 200).is_err());
    }

    #[test]
    fn all_locked_map_still_accepts_new_entries() {
        let l = Lockout::new(LockoutConfig {
            max_entries: 10,
            max_failures: 1,
            ..LockoutConfig::default()
        })
        .unwrap();
        for i in 0..50u64 {
            l.record_failure(&format!("u{i}"), T0 + i);
            assert!(l.len() <= 10);
        }
        assert!(l.check("u49", T0 + 50).is_err());
    }

    #[test]
    fn long_keys_are_hashed_but_still_distinct() {
        let l = lockout();
        let a = "a".repeat(10_000);
        let b = format!("{}b", "a".repeat(9_999));
        fail_n(&l, &a, 5, T0);
        assert!(l.check(&a, T0).is_err());
        assert!(l.check(&b, T0).is_ok());
        let snap = l.snapshot();
        assert!(snap.entries[0].key.len() <= MAX_KEY_LEN);
    }

    #[test]
    fn snapshot_restore_round_trip() {
        let l = lockout();
        fail_n(&l, "alice", 5, T0);
        fail_n(&l, "bob", 2, T0);
        let snap = l.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        let back: LockoutSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);

        let restored = lockout();
        restored.restore(back, T0 + 10).unwrap();
        assert_eq!(
            restored.check("alice", T0 + 10).unwrap_err().retry_after,
            Duration::from_secs(WINDOW - 10)
        );
        assert_eq!(
            restored.record_failure("bob", T0 + 10),
            LockState::Open {
                failures: 3,
                remaining: 2
            }
        );
        assert_eq!(snap.entries[0].key, "alice");
    }

    #[test]
    fn restore_drops_expired_and_clamps_tampered_entries() {
        let l = lockout();
        let snap = LockoutSnapshot {
            version: SNAPSHOT_VERSION,
            entries: vec![
                SnapshotEntry {
                    key: "expired".into(),
                    failures: 5,
                    last_failure: T0 - 2 * WINDOW,
                    locked_until: Some(T0 - WINDOW),
                },
                SnapshotEntry {
                    key: "forever".into(),
                    failures: 5,
                    last_failure: T0,
                    locked_until: Some(u64::MAX),
                },
                SnapshotEntry {
                    key: "old-streak".into(),
                    failures: 3,
                    last_failure: T0 - 7 * 86_400,
                    locked_until: None,
                },
                SnapshotEntry {
                    key: "many".into(),
                    failures: 9999,
                    last_failure: T0,
                    locked_until: None,
                },
            ],
        };
        l.restore(snap, T0).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.check("forever", T0).unwrap_err().retry_after,
            Duration::from_secs(WINDOW)
        );
        assert!(l.check("forever", T0 + WINDOW).is_ok());
        assert!(matches!(
            l.record_failure("many", T0),
            LockState::Locked {
                just_locked: true,
                ..
            }
        ));
    }

    #[test]
    fn restore_respects_capacity_and_version() {
        let l = Lockout::new(LockoutConfig {
            max_entries: 3,
            ..LockoutConfig::default()
        })
        .unwrap();
        let entries = (0..10)
            .map(|i| SnapshotEntry {
                key: format!("u{i}"),
                failures: 1,
                last_failure: T0 + i,
                locked_until: None,
            })
            .collect();
        l.restore(
            LockoutSnapshot {
                version: SNAPSHOT_VERSION,
                entries,
            },
            T0 + 10,
        )
        .unwrap();
        assert_eq!(l.len(), 3);
        let keys: Vec<String> = l.snapshot().entries.into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["u7", "u8", "u9"], "newest streaks kept");
        assert_eq!(
            l.restore(
                LockoutSnapshot {
                    version: 2,
                    entries: vec![]
                },
                T0
            ),
            Err(LockoutError::UnsupportedSnapshot(2))
        );
    }

    #[test]
    fn sweep_forgets_what_no_longer_matters() {
        let l = lockout();
        fail_n(&l, "locked", 5, T0);
        fail_n(&l, "streak", 2, T0);
        assert_eq!(l.sweep(T0 + WINDOW), 1);
        assert_eq!(l.sweep(T0 + 86_400), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn concurrent_failures_lock_exactly_once() {
        let l = Arc::new(lockout());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    (0..10)
                        .filter(|_| {
                            matches!(
                                l.record_failure("alice", T0),
                                LockState::Locked {
                                    just_locked: true,
                                    ..
                                }
                            )
                        })
                        .count()
                })
            })
            .collect();
        let locks: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(locks, 1);
        assert!(l.check("alice", T0).is_err());
    }

    #[test]
    fn config_is_validated() {
        let ok = LockoutConfig::default();
        assert_eq!(ok.max_failures, 5);
        assert_eq!(ok.lock_for, Duration::from_secs(900));
        let err = |c| Lockout::new(c).unwrap_err();
        assert_eq!(
            err(LockoutConfig {
                max_failures: 0,
                ..ok
            }),
            LockoutError::ZeroFailures
        );
        assert_eq!(
            err(LockoutConfig {
                lock_for: Duration::from_millis(500),
                ..ok
            }),
            LockoutError::ZeroLock
        );
        assert_eq!(
            err(LockoutConfig {
                max_entries: 0,
                ..ok
            }),
            LockoutError::ZeroCapacity
        );
    }

    #[test]
    fn locked_message_gives_only_the_wait() {
        let e = Locked {
            retry_after: Duration::from_secs(42),
        };
        assert_eq!(e.to_string(), "too many failed attempts; try again in 42 s");
    }

    #[test]
    fn per_source_keys_keep_an_attacker_from_locking_the_owner_out() {
        let l = Lockout::new(LockoutConfig::default()).unwrap();
        let attacker = source_key("owner", "203.0.113.7");
        let owner = source_key("owner", "198.51.100.2");
        for _ in 0..20 {
            l.record_failure(&attacker, 1000);
        }
        assert!(
            l.check(&attacker, 1000).is_err(),
            "the attacker's source is locked"
        );
        assert!(l.check(&owner, 1000).is_ok(), "the owner's source is not");
        l.forget_prefix(&account_prefix("owner"));
        assert!(
            l.check(&attacker, 1000).is_ok(),
            "an admin lifts every source"
        );
    }

    #[test]
    fn account_throttle_slows_distributed_guessing_without_locking() {
        let t = AccountThrottle::new(50, Duration::from_secs(180), 100);
        let mut just = 0;
        for i in 0..50 {
            assert!(t.check("owner", 1000).is_ok(), "attempt {i}");
            just += usize::from(t.record_failure("owner", 1000));
        }
        assert_eq!(just, 1, "the start of a throttle is reported once");
        let wait = t.check("owner", 1000).unwrap_err().retry_after;
        assert_eq!(wait, Duration::from_secs(180));
        // One attempt per interval, never a lock that outlives it.
        assert!(t.check("owner", 1000 + 180).is_ok());
        t.record_failure("owner", 1180);
        assert!(t.check("owner", 1181).is_err());
        assert!(t.check("other", 1000).is_ok(), "per account");
        assert_eq!(t.sweep(1000 + 52 * 180), 1);
    }

    /// `threads` attempts released at once by a barrier; how many of them
    /// `attempt` admitted.
    fn admitted_at_once(
        threads: usize,
        attempt: impl Fn() -> bool + Send + Sync + 'static,
    ) -> usize {
        let attempt = Arc::new(attempt);
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (attempt, barrier) = (attempt.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    attempt()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum()
    }

    #[test]
    fn concurrent_reservations_admit_at_most_the_threshold() {
        let l = Arc::new(lockout());
        let l2 = l.clone();
        let n = admitted_at_once(32, move || l2.reserve("alice", T0).is_ok());
        assert_eq!(n, 5, "an attempt in flight counts as a failure");
        assert!(l.check("alice", T0).is_err());
    }

    #[test]
    fn release_and_success_give_a_reservation_back() {
        let l = lockout();
        for _ in 0..4 {
            l.reserve("alice", T0).unwrap();
        }
        // The fifth locks while in flight; a right password gives it back.
        assert!(matches!(
            l.reserve("alice", T0),
            Ok(LockState::Locked {
                just_locked: true,
                ..
            })
        ));
        assert!(l.check("alice", T0).is_err());
        l.release("alice");
        assert!(l.check("alice", T0).is_ok(), "four failures, no lock");
        l.reserve("alice", T0).unwrap();
        l.record_success("alice");
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn concurrent_throttle_reservations_never_overshoot() {
        let t = Arc::new(AccountThrottle::new(25, Duration::from_secs(180), 100));
        let t2 = t.clone();
        let n = admitted_at_once(100, move || t2.reserve("owner", 1000).is_ok());
        assert_eq!(n, 25);
        let wait = t.reserve("owner", 1000).unwrap_err().retry_after;
        assert!(wait <= Duration::from_secs(180), "{wait:?}");
        // Unreserved failures past the burst do not push the wait out.
        for _ in 0..100 {
            t.record_failure("owner", 1000);
        }
        assert_eq!(
            t.check("owner", 1000).unwrap_err().retry_after,
            Duration::from_secs(180)
        );
        assert!(t.reserve("owner", 1180).is_ok(), "one per interval");
        // A success gives its room back.
        t.release("owner", 1180);
        assert!(t.reserve("owner", 1180).is_ok());
    }
}
