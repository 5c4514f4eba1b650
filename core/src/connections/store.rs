//! The schema-v3 tables of connections and their encodings (pinned by
//! `latchkey-migrations` v3; change them only with a new schema version).
//!
//! `connections` (byte table):
//! - key: the owner's user id (16 bytes, big-endian u128) followed by the
//!   provider name (UTF-8), so one user's connections are one key range;
//! - value: [`StoredConnection`], postcard-encoded, fields in this order:
//!   `status` (0 connected, 1 needs reconnect), `scopes`, `token_type`,
//!   `expires_at`, `connected_at`, `last_refresh_at`, `last_used_at`,
//!   `refresh_token_expires_at`, `failures`, `next_attempt_at`,
//!   `last_error`, `sealed`. Times are unix seconds.
//!   `sealed` is `Vault::seal_value(context, json)` where `context` is
//!   `connection:<user id as 32 hex digits>:<provider>` and `json` is
//!   `{"access_token", "refresh_token"?}`: the tokens are encrypted to the
//!   vault's data key like every vault record, and the context inside the
//!   ciphertext stops a blob from being moved to another user or provider.
//!   Connection tokens are deliberately **not** rows of `vault_records`,
//!   so the admin's `/api/vault` endpoints and `latchkey vault list` can
//!   neither list nor reveal them; the owner is this table's key.
//!
//! `oauth_states` (byte table): pending authorization requests.
//! - key: SHA-256 of the `state` value (32 bytes): the state itself is
//!   never stored;
//! - value: [`PendingState`], postcard-encoded, fields in this order:
//!   `user_id` (u128), `actor` (the username, for the audit log), `provider`, `binding_hash` (SHA-256 of the
//!   `__Host-latchkey-oauth` cookie), `session_hash` (the starting
//!   session's hash, as the `sessions` table keys it), `redirect_uri`, `nonce`,
//!   `verifier_sealed` (the PKCE verifier, `Vault::seal_value` with
//!   context `oauth_state:<hex of the key>`), `created_at`, `expires_at`.
//!   Taken out (deleted) by the first callback that names it **and**
//!   carries its binding cookie, whatever the outcome after that — checked
//!   and deleted in one write transaction ([`take_bound_state`]); a
//!   callback without the binding changes nothing. Expired rows are purged
//!   when new ones are written and by the background task.

use crate::audit::{self, AuditEvent};
use crate::auth::store::UserId;
use crate::store::{Store, StoreError, Table};
use latchkey_migrations::v3::{CONNECTIONS, OAUTH_STATES};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A connection's state as shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Connected,
    NeedsReconnect,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connected => "connected",
            Status::NeedsReconnect => "needs_reconnect",
        }
    }
}

/// One row of `connections`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConnection {
    pub status: Status,
    pub scopes: Vec<String>,
    pub token_type: String,
    pub expires_at: Option<i64>,
    pub connected_at: i64,
    pub last_refresh_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub refresh_token_expires_at: Option<i64>,
    /// Consecutive failed refreshes (transient errors).
    pub failures: u32,
    /// The background task does not retry before this (backoff).
    pub next_attempt_at: Option<i64>,
    /// A short reason for the last failure (an OAuth error code), never a
    /// secret.
    pub last_error: Option<String>,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for StoredConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredConnection")
            .field("status", &self.status)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .finish_non_exhaustive()
    }
}

/// One row of `oauth_states`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingState {
    pub user_id: u128,
    pub actor: String,
    pub provider: String,
    pub binding_hash: [u8; 32],
    pub session_hash: [u8; 32],
    pub redirect_uri: String,
    pub nonce: Option<String>,
    pub verifier_sealed: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for PendingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingState")
            .field("user_id", &self.user_id)
            .field("provider", &self.provider)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The `connections` key of (user, provider).
pub fn conn_key(user: UserId, provider: &str) -> Vec<u8> {
    let mut k = user.key().to_vec();
    k.extend_from_slice(provider.as_bytes());
    k
}

fn split_key(k: &[u8]) -> Option<(UserId, String)> {
    if k.len() <= 16 {
        return None;
    }
    let user = UserId::from_key(&k[..16])?;
    let provider = std::str::from_utf8(&k[16..]).ok()?.to_string();
    Some((user, provider))
}

/// The vault context that binds a connection's sealed tokens to it.
pub fn seal_context(user: UserId, provider: &str) -> String {
    format!("connection:{:032x}:{provider}", user.0)
}

/// The vault context of a pending state's PKCE verifier.
pub fn state_context(state_hash: &[u8; 32]) -> String {
    format!("oauth_state:{}", hex::encode(state_hash))
}

fn damaged(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::BadRow(format!("{what}: {e}"))
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| damaged("encode", e))
}

fn decode_conn(b: &[u8]) -> Result<StoredConnection, StoreError> {
    postcard::from_bytes(b).map_err(|e| damaged("connection row", e))
}

fn decode_state(b: &[u8]) -> Result<PendingState, StoreError> {
    postcard::from_bytes(b).map_err(|e| damaged("oauth state row", e))
}

/// Writes a pending state and purges expired ones, in one transaction.
/// Most unfinished authorizations one user may have at once (each row
/// lives 10 minutes): bounds what a signed-in user can make us store.
pub const MAX_PENDING_PER_USER: usize = 20;

/// Writes a pending state and purges expired ones, in one transaction.
/// `Ok(false)`: the user already has [`MAX_PENDING_PER_USER`] pending
/// states; nothing was written.
pub fn put_state(
    store: &Store,
    hash: &[u8; 32],
    state: &PendingState,
    now: i64,
) -> Result<bool, StoreError> {
    let txn = store.begin_write()?;
    {
        let mut t = txn.open_table(OAUTH_STATES)?;
        let (_, live_of_user) = purge_in(&mut t, now, Some(state.user_id))?;
        if live_of_user >= MAX_PENDING_PER_USER {
            drop(t);
            txn.abort()?;
            return Ok(false);
        }
        t.insert(hash.as_slice(), encode(state)?.as_slice())?;
    }
    txn.commit()?;
    Ok(true)
}

/// Removes expired rows; returns how many, and how many live rows belong
/// to `user`.
fn purge_in(t: &mut Table<'_>, now: i64, user: Option<u128>) -> Result<(usize, usize), StoreError> {
    let mut expired = Vec::new();
    let mut live_of_user = 0;
    for item in t.iter()? {
        let (k, v) = item?;
        match decode_state(v.value()) {
            Ok(s) if s.expires_at > now => {
                if Some(s.user_id) == user {
                    live_of_user += 1;
                }
            }
            // Expired, or a row that does not decode (useless): purge.
            _ => expired.push(k.value().to_vec()),
        }
    }
    for k in &expired {
        t.remove(k.as_slice())?;
    }
    Ok((expired.len(), live_of_user))
}

/// Deletes expired pending states.
pub fn purge_states(store: &Store, now: i64) -> Result<usize, StoreError> {
    let txn = store.begin_write()?;
    let n = {
        let mut t = txn.open_table(OAUTH_STATES)?;
        purge_in(&mut t, now, None)?.0
    };
    txn.commit()?;
    Ok(n)
}

/// What [`take_bound_state`] found.
#[derive(Debug, PartialEq)]
pub enum Taken {
    /// No pending state has this hash (never issued, used, or purged).
    Missing,
    /// The state exists but the browser's binding is not its own: left
    /// untouched, so whoever sent it cannot end someone else's flow.
    NotBound,
    /// The state, now deleted: this flow is over, whatever comes next.
    Taken(Box<PendingState>),
}

/// Takes out the pending state `hash` if `binding_hash` (the digest of
/// the browser's binding cookie) is its own. The check and the delete are
/// one write transaction, and the store runs one write transaction at a
/// time across every replica, so of concurrent callbacks naming one state
/// exactly one gets it.
pub fn take_bound_state(
    store: &Store,
    hash: &[u8; 32],
    binding_hash: Option<&[u8; 32]>,
) -> Result<Taken, StoreError> {
    let txn = store.begin_write()?;
    let found = {
        let mut t = txn.open_table(OAUTH_STATES)?;
        let row = t
            .get(hash.as_slice())?
            .map(|v| decode_state(v.value()))
            .transpose()?;
        match row {
            None => Taken::Missing,
            Some(row)
                if !binding_hash.is_some_and(|b| super::same_digest(b, &row.binding_hash)) =>
            {
                Taken::NotBound
            }
            Some(row) => {
                t.remove(hash.as_slice())?;
                Taken::Taken(Box::new(row))
            }
        }
    };
    if matches!(found, Taken::Taken(_)) {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok(found)
}

pub fn get(
    store: &Store,
    user: UserId,
    provider: &str,
) -> Result<Option<StoredConnection>, StoreError> {
    let txn = store.begin_read()?;
    let t = txn.open_table(CONNECTIONS)?;
    t.get(conn_key(user, provider).as_slice())?
        .map(|v| decode_conn(v.value()))
        .transpose()
}

/// Writes (inserts or replaces) a connection and its audit entry in one
/// transaction.
pub fn put(
    store: &Store,
    user: UserId,
    provider: &str,
    conn: &StoredConnection,
    event: Option<AuditEvent>,
) -> Result<(), StoreError> {
    let txn = store.begin_write()?;
    {
        let mut t = txn.open_table(CONNECTIONS)?;
        t.insert(
            conn_key(user, provider).as_slice(),
            encode(conn)?.as_slice(),
        )?;
    }
    if let Some(e) = event {
        audit::append_in(&txn, e)?;
    }
    txn.commit()?;
    Ok(())
}

/// Changes a connection inside one write transaction (so concurrent
/// writers such as the last-used flush are not overwritten), with an
/// optional audit entry. `Ok(None)`: no such connection.
pub fn update(
    store: &Store,
    user: UserId,
    provider: &str,
    change: impl FnOnce(&mut StoredConnection),
    event: Option<AuditEvent>,
) -> Result<Option<StoredConnection>, StoreError> {
    let key = conn_key(user, provider);
    let txn = store.begin_write()?;
    let out = {
        let mut t = txn.open_table(CONNECTIONS)?;
        let current = t.get(key.as_slice())?.map(|v| v.value().to_vec());
        match current {
            None => None,
            Some(bytes) => {
                let mut c = decode_conn(&bytes)?;
                change(&mut c);
                t.insert(key.as_slice(), encode(&c)?.as_slice())?;
                Some(c)
            }
        }
    };
    if out.is_some()
        && let Some(e) = event
    {
        audit::append_in(&txn, e)?;
    }
    txn.commit()?;
    Ok(out)
}

/// Deletes a connection (and writes its audit entry) in one transaction.
pub fn remove(
    store: &Store,
    user: UserId,
    provider: &str,
    event: Option<AuditEvent>,
) -> Result<Option<StoredConnection>, StoreError> {
    let txn = store.begin_write()?;
    let removed = {
        let mut t = txn.open_table(CONNECTIONS)?;
        let r = t
            .remove(conn_key(user, provider).as_slice())?
            .map(|v| v.value().to_vec());
        r.map(|b| decode_conn(&b)).transpose()?
    };
    if removed.is_some()
        && let Some(e) = event
    {
        audit::append_in(&txn, e)?;
    }
    txn.commit()?;
    Ok(removed)
}

/// One user's connections (`Some(user)`) or everyone's, sorted by user
/// then provider.
pub fn list(
    store: &Store,
    user: Option<UserId>,
) -> Result<Vec<(UserId, String, StoredConnection)>, StoreError> {
    let txn = store.begin_read()?;
    let t = txn.open_table(CONNECTIONS)?;
    let mut out = Vec::new();
    let mut push = |k: &[u8], v: &[u8]| -> Result<(), StoreError> {
        let (u, p) = split_key(k).ok_or_else(|| damaged("connection key", "malformed"))?;
        out.push((u, p, decode_conn(v)?));
        Ok(())
    };
    match user {
        Some(u) => {
            let start = u.key();
            // Every key of this user starts with its 16 id bytes; the next
            // user id is the exclusive end (none after the last id).
            let iter = match u.0.checked_add(1) {
                Some(next) => t.range(start.as_slice()..next.to_be_bytes().as_slice())?,
                None => t.range(start.as_slice()..)?,
            };
            for item in iter {
                let (k, v) = item?;
                push(k.value(), v.value())?;
            }
        }
        None => {
            for item in t.iter()? {
                let (k, v) = item?;
                push(k.value(), v.value())?;
            }
        }
    }
    Ok(out)
}

/// Writes batched last-used times in one transaction.
pub fn flush_last_used(
    store: &Store,
    pending: &HashMap<(UserId, String), i64>,
) -> Result<usize, StoreError> {
    if pending.is_empty() {
        return Ok(0);
    }
    let txn = store.begin_write()?;
    let mut n = 0;
    {
        let mut t = txn.open_table(CONNECTIONS)?;
        for ((user, provider), at) in pending {
            let key = conn_key(*user, provider);
            let current = t.get(key.as_slice())?.map(|v| v.value().to_vec());
            if let Some(bytes) = current {
                let mut c = decode_conn(&bytes)?;
                if c.last_used_at.is_none_or(|old| old < *at) {
                    c.last_used_at = Some(*at);
                    t.insert(key.as_slice(), encode(&c)?.as_slice())?;
                    n += 1;
                }
            }
        }
    }
    txn.commit()?;
    Ok(n)
}

/// Appends audit entries in one transaction (the batched broker events).
pub fn append_audit(store: &Store, events: Vec<AuditEvent>) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let txn = store.begin_write()?;
    for e in events {
        audit::append_in(&txn, e)?;
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, std::sync::Arc<Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("open store");
        (dir, store)
    }

    fn conn(scopes: &[&str]) -> StoredConnection {
        StoredConnection {
            status: Status::Connected,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            token_type: "bearer".into(),
            expires_at: Some(100),
            connected_at: 1,
            last_refresh_at: None,
            last_used_at: None,
            refresh_token_expires_at: None,
            failures: 0,
            next_attempt_at: None,
            last_error: None,
            sealed: vec![1, 2, 3],
        }
    }

    #[test]
    fn encodings_round_trip_and_are_pinned() {
        let c = conn(&["openid"]);
        let bytes = encode(&c).expect("encode");
        assert_eq!(decode_conn(&bytes).expect("decode"), c);
        // The first byte is the status variant: pinned by schema v3.
        assert_eq!(bytes[0], 0);
        let mut r = c.clone();
        r.status = Status::NeedsReconnect;
        assert_eq!(encode(&r).expect("encode")[0], 1);
        let s = PendingState {
            user_id: 7,
            actor: "alice".into(),
            provider: "p".into(),
            binding_hash: [9; 32],
            session_hash: [8; 32],
            redirect_uri: "https://h/api/connections/p/callback".into(),
            nonce: Some("n".into()),
            verifier_sealed: vec![4],
            created_at: 1,
            expires_at: 2,
        };
        assert_eq!(decode_state(&encode(&s).expect("e")).expect("d"), s);
        assert!(decode_conn(&[0xff, 0xff]).is_err());
        // Debug never prints the sealed blob.
        assert!(!format!("{c:?}").contains("[1, 2, 3]"));
    }

    #[test]
    fn keys_group_by_user_and_contexts_bind_owner_and_provider() {
        let a = UserId(1);
        let b = UserId(2);
        assert!(conn_key(a, "zzz") < conn_key(b, "aaa"));
        assert_eq!(
            split_key(&conn_key(a, "spotify")),
            Some((a, "spotify".into()))
        );
        assert_eq!(split_key(&a.key()), None);
        assert_ne!(seal_context(a, "x"), seal_context(b, "x"));
        assert_ne!(seal_context(a, "x"), seal_context(a, "y"));
    }

    #[test]
    fn rows_list_per_user_and_states_are_single_use() {
        let (_d, store) = open();
        let (a, b, last) = (UserId(1), UserId(2), UserId(u128::MAX));
        put(&store, a, "p1", &conn(&["x"]), None).expect("put");
        put(&store, a, "p2", &conn(&["y"]), None).expect("put");
        put(&store, b, "p1", &conn(&["z"]), None).expect("put");
        put(&store, last, "p1", &conn(&["w"]), None).expect("put");
        let mine = list(&store, Some(a)).expect("list");
        assert_eq!(
            mine.iter().map(|(_, p, _)| p.as_str()).collect::<Vec<_>>(),
            ["p1", "p2"]
        );
        assert_eq!(list(&store, Some(last)).expect("list").len(), 1);
        assert_eq!(list(&store, None).expect("all").len(), 4);
        let updated = update(&store, a, "p1", |c| c.failures = 3, None).expect("update");
        assert_eq!(updated.map(|c| c.failures), Some(3));
        assert!(
            update(&store, a, "nope", |_| {}, None)
                .expect("update")
                .is_none()
        );
        let mut used = HashMap::new();
        used.insert((a, "p2".to_string()), 50);
        assert_eq!(flush_last_used(&store, &used).expect("flush"), 1);
        assert_eq!(
            get(&store, a, "p2")
                .expect("get")
                .and_then(|c| c.last_used_at),
            Some(50)
        );
        assert!(remove(&store, a, "p1", None).expect("rm").is_some());
        assert!(get(&store, a, "p1").expect("get").is_none());

        let h = [5u8; 32];
        let s = PendingState {
            user_id: 1,
            actor: "alice".into(),
            provider: "p1".into(),
            binding_hash: [0; 32],
            session_hash: [0; 32],
            redirect_uri: "r".into(),
            nonce: None,
            verifier_sealed: vec![],
            created_at: 10,
            expires_at: 20,
        };
        put_state(&store, &h, &s, 10).expect("put state");
        // Another browser's binding (or none) leaves the state alone.
        assert_eq!(
            take_bound_state(&store, &h, Some(&[1; 32])).expect("take"),
            Taken::NotBound
        );
        assert_eq!(
            take_bound_state(&store, &h, None).expect("take"),
            Taken::NotBound
        );
        assert_eq!(
            take_bound_state(&store, &h, Some(&[0; 32])).expect("take"),
            Taken::Taken(Box::new(s.clone()))
        );
        assert_eq!(
            take_bound_state(&store, &h, Some(&[0; 32])).expect("take again"),
            Taken::Missing
        );
        // Expired rows go when the next one is written.
        put_state(&store, &h, &s, 10).expect("put state");
        put_state(
            &store,
            &[6; 32],
            &PendingState {
                expires_at: 100,
                ..s.clone()
            },
            30,
        )
        .expect("put");
        assert_eq!(
            take_bound_state(&store, &h, Some(&[0; 32])).expect("take"),
            Taken::Missing
        );
        assert_eq!(purge_states(&store, 1000).expect("purge"), 1);
        // A user cannot pile up unfinished authorizations.
        for i in 0..MAX_PENDING_PER_USER {
            let h = [i as u8; 32];
            let row = PendingState {
                expires_at: 5000,
                ..s.clone()
            };
            assert!(put_state(&store, &h, &row, 1000).expect("put"));
        }
        let row = PendingState {
            expires_at: 5000,
            ..s.clone()
        };
        assert!(!put_state(&store, &[99; 32], &row, 1000).expect("put"));
        assert_eq!(
            take_bound_state(&store, &[99; 32], Some(&[0; 32])).expect("take"),
            Taken::Missing
        );
        let other = PendingState {
            user_id: 2,
            expires_at: 5000,
            ..s
        };
        assert!(put_state(&store, &[99; 32], &other, 1000).expect("other user"));
    }
}
