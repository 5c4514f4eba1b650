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

    /// The state of `key`, for a store that shares it between processes
    /// (`auth::state`); `None` when it holds nothing.
    pub fn export(&self, key: &str) -> Option<SnapshotEntry> {
        let key = normalize_key(key);
        self.lock().get(key.as_str()).map(|e| SnapshotEntry {
            key: key.clone(),
            failures: e.failures,
            last_failure: e.last_failure,
            locked_until: e.locked_until,
        })
    }

    /// Replaces the state of `key` with `entry` as another process left it
    /// (`None` forgets it), clamped as [`Lockout::restore`] clamps: a row
    /// from the store is trusted no more than a snapshot file.
    pub fn import(&self, key: &str, entry: Option<&SnapshotEntry>, now: u64) {
        let key = normalize_key(key);
        let mut entries = self.lock();
        match entry {
            None => {
                entries.remove(key.as_str());
            }
            Some(s) => {
                let mut e = Entry {
                    failures: s.failures.min(self.config.max_failures),
                    last_failure: s.last_failure.min(now),
                    locked_until: s.locked_until,
                };
                let _ = self.locked_for(&mut e, now);
                entries.insert(key, e);
            }
        }
    }

    /// Whether a stored `entry` is equivalent to none at `now` (a store
    /// prunes such rows).
    pub fn is_stale_entry(&self, entry: &SnapshotEntry, now: u64) -> bool {
        self.is_stale(
            &Entry {
                failures: entry.failures,
                last_failure: entry.last_failure,
                locked_until: entry.locked_until,
            },
            now,
        )
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

/// The key a [`Lockout`] or [`AccountThrottle`] stores `key` under:
/// itself, or its SHA-256 when longer than [`MAX_KEY_LEN`].
pub fn normalize_key(key: &str) -> String {
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

    /// The bucket of `account` (its theoretical arrival time), for a store
    /// that shares it between processes (`auth::state`).
    pub fn export(&self, account: &str) -> Option<u64> {
        self.lock().get(normalize_key(account).as_str()).copied()
    }

    /// Replaces the bucket of `account` with `tat` as another process left
    /// it (`None` forgets it), never fuller than a full bucket at `now`.
    pub fn import(&self, account: &str, tat: Option<u64>, now: u64) {
        let key = normalize_key(account);
        let mut tats = self.lock();
        match tat {
            Some(t) => {
                let full = now.saturating_add(self.burst.saturating_mul(self.every));
                tats.insert(key, t.min(full));
            }
            None => {
                tats.remove(key.as_str());
            }
        }
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
#[path = "lockout_tests.rs"]
mod tests;
