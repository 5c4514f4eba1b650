//! The short-lived auth state every process sharing the store sees alike:
//! lockout counters, the account-wide throttle, MFA tickets, the
//! first-run setup token, per-user credential epochs and the per-address
//! sign-in limit's buckets. With several replicas behind a load balancer
//! the steps of one sign-in land on different processes, so none of this
//! can live in one process's memory (see `docs/SCALE.md`, "What replicas
//! share").
//!
//! One byte table, `auth_state`, keyed by a kind byte and the state's own
//! key. Every row's absence means "nothing" (no failures, no ticket,
//! epoch 0), so the table needs no schema version: a store without it
//! reads as empty, and a build that does not know it ignores it.
//!
//! Invariants:
//!
//! - every read-check-write of a row happens inside one write
//!   transaction, which the store serialises across all processes
//!   (`store::kv`), so each rule holds cluster-wide;
//! - the lockout and throttle logic stays in `auth::lockout`: a row is
//!   loaded into the in-memory engine, the engine decides, and the row is
//!   written back in the same transaction ([`with_lock`]);
//! - a row read from the store is clamped like a restored snapshot (a
//!   lock never lasts beyond `lock_for` from now);
//! - tickets and setup tokens are stored as SHA-256 hashes only.

use super::lockout::{AccountThrottle, Lockout, SnapshotEntry, normalize_key};
use super::store::UserId;
use crate::store::{ByteTable, StoreError, Table, WriteTxn};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The table (see the module docs): no schema version's.
pub const AUTH_STATE: ByteTable = crate::store::byte_table("auth_state");

/// Row kinds: the first byte of every key.
const LOCK: u8 = b'l';
const THROTTLE: u8 = b'h';
const TICKET: u8 = b't';
const SETUP: u8 = b's';
const EPOCH: u8 = b'e';
const RATE: u8 = b'r';

fn key(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::BadRow(format!("auth_state: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::BadRow(format!("auth_state: {e}")))
}

fn get<T: DeserializeOwned>(t: &Table<'_>, k: &[u8]) -> Result<Option<T>, StoreError> {
    match t.get(k)? {
        Some(v) => decode(v.value()).map(Some),
        None => Ok(None),
    }
}

fn put<T: Serialize>(t: &mut Table<'_>, k: &[u8], v: Option<&T>) -> Result<(), StoreError> {
    match v {
        Some(v) => {
            t.insert(k, &encode(v)?)?;
        }
        None => {
            t.remove(k)?;
        }
    }
    Ok(())
}

/// The keys of every row of `kind` whose key continues with `prefix`.
fn keys_with(t: &Table<'_>, kind: u8, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    let start = key(kind, prefix);
    let mut out = Vec::new();
    for row in t.range(start.as_slice()..)? {
        let (k, _) = row?;
        if !k.value().starts_with(&start) {
            break;
        }
        out.push(k.into_vec());
    }
    Ok(out)
}

/// Runs `f` on the in-memory lockout engines with the rows of
/// `lock_key` (a `lockout::source_key`) and, if given, the throttle row
/// of `account` loaded from `txn`, then writes what they hold back and
/// empties them again: the engines decide, the store remembers.
pub fn with_lock<R>(
    txn: &WriteTxn,
    lockout: &Lockout,
    throttle: &AccountThrottle,
    lock_key: &str,
    account: Option<&str>,
    now: u64,
    f: impl FnOnce() -> R,
) -> Result<R, StoreError> {
    let mut t = txn.open_table(AUTH_STATE)?;
    let lk = key(LOCK, normalize_key(lock_key).as_bytes());
    let entry: Option<SnapshotEntry> = get(&t, &lk)?;
    lockout.import(lock_key, entry.as_ref(), now);
    let tk = account.map(|a| key(THROTTLE, normalize_key(a).as_bytes()));
    if let (Some(a), Some(tk)) = (account, &tk) {
        let tat: Option<u64> = get(&t, tk)?;
        throttle.import(a, tat, now);
    }
    let out = f();
    put(&mut t, &lk, lockout.export(lock_key).as_ref())?;
    lockout.import(lock_key, None, now);
    if let (Some(a), Some(tk)) = (account, &tk) {
        put(&mut t, tk, throttle.export(a).as_ref())?;
        throttle.import(a, None, now);
    }
    Ok(out)
}

/// Forgets every lock whose key starts with `prefix` (an account under
/// all its sources: `lockout::account_prefix`).
pub fn forget_locks(txn: &WriteTxn, prefix: &str) -> Result<usize, StoreError> {
    let mut t = txn.open_table(AUTH_STATE)?;
    let keys = keys_with(&t, LOCK, prefix.as_bytes())?;
    for k in &keys {
        t.remove(k)?;
    }
    Ok(keys.len())
}

/// A password step waiting for its second step, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketRow {
    pub user_id: UserId,
    pub expires_at: i64,
    /// Where the password step came from (a lockout source key).
    pub source: String,
    pub known_device: bool,
    /// The password epoch before the password step verified anything
    /// (`None`: it could not be read, and the ticket can never finish).
    pub password_epoch: Option<u64>,
}

/// Stores a ticket under its hash.
pub fn put_ticket(txn: &WriteTxn, hash: &[u8; 32], row: &TicketRow) -> Result<(), StoreError> {
    put(
        &mut txn.open_table(AUTH_STATE)?,
        &key(TICKET, hash),
        Some(row),
    )
}

/// The ticket stored under `hash`, if any (expired or not).
pub fn ticket(t: &Table<'_>, hash: &[u8; 32]) -> Result<Option<TicketRow>, StoreError> {
    get(t, &key(TICKET, hash))
}

/// Removes and returns the ticket stored under `hash`: of concurrent
/// takers anywhere, exactly one gets it.
pub fn take_ticket(txn: &WriteTxn, hash: &[u8; 32]) -> Result<Option<TicketRow>, StoreError> {
    let mut t = txn.open_table(AUTH_STATE)?;
    let k = key(TICKET, hash);
    let row = get(&t, &k)?;
    t.remove(&k)?;
    Ok(row)
}

/// Ends every ticket of `user`; how many.
pub fn end_tickets(txn: &WriteTxn, user: UserId) -> Result<usize, StoreError> {
    let mut t = txn.open_table(AUTH_STATE)?;
    let mut ended = 0;
    for k in keys_with(&t, TICKET, &[])? {
        let row: Option<TicketRow> = get(&t, &k)?;
        if row.is_some_and(|r| r.user_id == user) {
            t.remove(&k)?;
            ended += 1;
        }
    }
    Ok(ended)
}

/// Replaces the first-run setup token with `hash`, valid until
/// `expires_at`: one token for the whole deployment.
pub fn put_setup(txn: &WriteTxn, hash: &[u8; 32], expires_at: i64) -> Result<(), StoreError> {
    end_setup(txn)?;
    put(
        &mut txn.open_table(AUTH_STATE)?,
        &key(SETUP, hash),
        Some(&expires_at),
    )
}

/// When the setup token stored under `hash` expires, if it exists.
pub fn setup_expiry(t: &Table<'_>, hash: &[u8; 32]) -> Result<Option<i64>, StoreError> {
    get(t, &key(SETUP, hash))
}

/// Ends the setup token (an owner exists now).
pub fn end_setup(txn: &WriteTxn) -> Result<(), StoreError> {
    let mut t = txn.open_table(AUTH_STATE)?;
    for k in keys_with(&t, SETUP, &[])? {
        t.remove(&k)?;
    }
    Ok(())
}

/// A user's credential epochs (see `auth::epoch`): `(password, sign_in)`.
pub fn epochs(t: &Table<'_>, user: UserId) -> Result<(u64, u64), StoreError> {
    Ok(get(t, &key(EPOCH, &user.key()))?.unwrap_or((0, 0)))
}

/// Stores a user's epochs.
pub fn put_epochs(txn: &WriteTxn, user: UserId, e: (u64, u64)) -> Result<(), StoreError> {
    put(
        &mut txn.open_table(AUTH_STATE)?,
        &key(EPOCH, &user.key()),
        Some(&e),
    )
}

/// Runs one GCRA step of the per-address limit shared by every process:
/// `f` gets the bucket's stored theoretical arrival time (unix
/// microseconds) and returns the new one, or `None` to leave it.
pub fn with_rate<R>(
    txn: &WriteTxn,
    bucket: &str,
    f: impl FnOnce(Option<u64>) -> (Option<u64>, R),
) -> Result<R, StoreError> {
    let mut t = txn.open_table(AUTH_STATE)?;
    let k = key(RATE, bucket.as_bytes());
    let tat: Option<u64> = get(&t, &k)?;
    let (next, out) = f(tat);
    if let Some(n) = next {
        put(&mut t, &k, Some(&n))?;
    }
    Ok(out)
}

/// Whether the row `k` → `v` can no longer matter at `now` (unix
/// seconds): an expired ticket or setup token, a stale lock, a drained
/// throttle or rate bucket, or a row that does not decode. Epoch rows
/// always matter (a user's epoch must never go back).
fn stale(k: &[u8], v: &[u8], lockout: &Lockout, now: i64) -> bool {
    let nu = now.max(0) as u64;
    match k.first() {
        Some(&LOCK) => postcard::from_bytes::<SnapshotEntry>(v)
            .map_or(true, |e| lockout.is_stale_entry(&e, nu)),
        Some(&THROTTLE) => postcard::from_bytes::<u64>(v).map_or(true, |tat| tat <= nu),
        Some(&TICKET) => postcard::from_bytes::<TicketRow>(v).map_or(true, |r| r.expires_at <= now),
        Some(&SETUP) => postcard::from_bytes::<i64>(v).map_or(true, |e| e <= now),
        Some(&RATE) => {
            postcard::from_bytes::<u64>(v).map_or(true, |tat| tat <= nu.saturating_mul(1_000_000))
        }
        _ => false,
    }
}

/// The keys of the rows that can no longer matter at `now` (read in a
/// read transaction, so no writer waits on the scan).
pub fn stale_keys(t: &Table<'_>, lockout: &Lockout, now: i64) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        if stale(k.value(), v.value(), lockout, now) {
            out.push(k.into_vec());
        }
    }
    Ok(out)
}

/// Deletes those of `keys` whose row, read again in `txn`, still can no
/// longer matter; how many.
pub fn remove_stale(
    txn: &WriteTxn,
    keys: &[Vec<u8>],
    lockout: &Lockout,
    now: i64,
) -> Result<usize, StoreError> {
    let mut t = txn.open_table(AUTH_STATE)?;
    let mut removed = 0;
    for k in keys {
        let gone = t.get(k)?.is_some_and(|v| stale(k, v.value(), lockout, now));
        if gone {
            t.remove(k)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::auth::lockout::LockoutConfig;
    use crate::store::Store;

    fn ticket_row(expires_at: i64) -> TicketRow {
        TicketRow {
            user_id: UserId(1),
            expires_at,
            source: "192.0.2.1".into(),
            known_device: false,
            password_epoch: Some(0),
        }
    }

    #[test]
    fn pruning_drops_what_can_no_longer_matter_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "test").unwrap();
        let lockout = Lockout::new(LockoutConfig::default()).unwrap();
        let throttle = AccountThrottle::new(50, std::time::Duration::from_secs(180), 10);
        let now = 1_000_000;
        let txn = store.begin_write().unwrap();
        put_ticket(&txn, &[1; 32], &ticket_row(now - 1)).unwrap();
        put_ticket(&txn, &[2; 32], &ticket_row(now + 300)).unwrap();
        put_setup(&txn, &[3; 32], now - 5).unwrap();
        put_epochs(&txn, UserId(1), (4, 9)).unwrap();
        // A failure just now (kept) and a lock that ended long ago (gone).
        with_lock(&txn, &lockout, &throttle, "a\0x", None, now as u64, || {
            lockout.record_failure("a\0x", now as u64)
        })
        .unwrap();
        with_lock(&txn, &lockout, &throttle, "b\0x", None, 10, || {
            for _ in 0..5 {
                lockout.record_failure("b\0x", 10);
            }
        })
        .unwrap();
        with_rate(&txn, "192.0.2.1", |_| (Some(1), ())).unwrap();
        txn.commit().unwrap();

        let stale = {
            let r = store.begin_read().unwrap();
            stale_keys(&r.open_table(AUTH_STATE).unwrap(), &lockout, now).unwrap()
        };
        let txn = store.begin_write().unwrap();
        assert_eq!(remove_stale(&txn, &stale, &lockout, now).unwrap(), 4);
        txn.commit().unwrap();

        let r = store.begin_read().unwrap();
        let t = r.open_table(AUTH_STATE).unwrap();
        assert!(ticket(&t, &[1; 32]).unwrap().is_none());
        assert!(ticket(&t, &[2; 32]).unwrap().is_some());
        assert!(setup_expiry(&t, &[3; 32]).unwrap().is_none());
        assert_eq!(epochs(&t, UserId(1)).unwrap(), (4, 9), "epochs never go");
        assert_eq!(
            t.len().unwrap(),
            3,
            "the live ticket, the epochs, the recent failure"
        );
    }

    #[test]
    fn a_damaged_row_is_a_clear_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "test").unwrap();
        let txn = store.begin_write().unwrap();
        txn.open_table(AUTH_STATE)
            .unwrap()
            .insert(&key(TICKET, &[7; 32]), &[0xff; 3])
            .unwrap();
        txn.commit().unwrap();
        let r = store.begin_read().unwrap();
        let e = ticket(&r.open_table(AUTH_STATE).unwrap(), &[7; 32]).unwrap_err();
        assert!(matches!(e, StoreError::BadRow(_)), "{e:?}");
    }
}
