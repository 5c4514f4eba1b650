//! API keys: created, listed and revoked by their owner (or an admin with
//! the `admin` scope), and verified on every proxied request from an
//! in-memory cache.
//!
//! Invariants:
//!
//! - the hot path does no disk I/O: [`Auth::authenticate_key`] checks the
//!   key's shape, then its hash in constant time, against the cache (one
//!   SHA-256: a wrong checksum cannot match a stored hash); last-used
//!   times are kept in memory and written in one batch
//!   ([`Auth::flush_key_usage`]);
//! - only the key's hash is stored; the key itself is shown once, at
//!   creation;
//! - a key is written only after re-reading its owner in the writing
//!   transaction (disabled, or whose role changed, gets none), and a user
//!   holds at most [`MAX_KEYS_PER_USER`] live keys, counted there too;
//! - a key with a scope that reaches secrets ([`Scope::needs_step_up`])
//!   needs the step-up of a person ([`Auth::step_up`]);
//! - the cache never outlives a revocation: revoked keys are dropped from it
//!   after their commit ([`Auth::forget_keys`]), keys of accounts that cannot
//!   sign in are never loaded, and a key that raced a revocation into the
//!   cache is looked up again and dropped;
//! - with replicas, a key made or revoked on another one reaches this
//!   cache by a reload from one snapshot (`replicas`), never older than a
//!   change this process made to the cache meanwhile (`keys_gen`).

use super::stepup::KeyStepUp;
use super::{Auth, Principal, Via, now};
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::apikey;
use crate::auth::scope::{Scope, ScopeSet};
use crate::auth::store::{self as db, API_KEYS, ApiKeyRow, USERS, User, UserId};
use crate::secrecy::SecretString;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The most live (unrevoked, unexpired) API keys one user may hold.
pub const MAX_KEYS_PER_USER: usize = 256;

#[derive(Debug, Clone)]
pub(super) struct CachedKey {
    user_id: UserId,
    hash: [u8; 32],
    /// Shared with every principal the key authenticates (one pointer
    /// copy per proxied request, not a tree).
    scopes: Arc<ScopeSet>,
    expires_at: Option<i64>,
}

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl Auth {
    /// Fills the key cache from one snapshot of the store (at start, and
    /// when another replica changed keys or users: `replicas`).
    pub(super) fn load_keys(&self) -> Result<(), AuthError> {
        // A key this process adds or drops while the snapshot is read
        // would be undone by the swap: read again (rare, and bounded).
        for _ in 0..8 {
            if self.try_load_keys()? {
                return Ok(());
            }
        }
        Err(AuthError::Internal(
            "the key cache kept changing while it was reloaded".into(),
        ))
    }

    /// One [`Auth::load_keys`] attempt: false when this process changed
    /// the cache since the snapshot was taken (nothing swapped in).
    fn try_load_keys(&self) -> Result<bool, AuthError> {
        let generation = self.keys_gen.load(Ordering::Acquire);
        let txn = self.store.begin_read()?;
        let rows: Vec<(Vec<u8>, ApiKeyRow)> = db::scan(&txn.open_table(API_KEYS)?)?;
        let users = txn.open_table(USERS)?;
        let mut map = HashMap::new();
        for (k, row) in rows {
            if row.revoked_at.is_some() {
                continue;
            }
            // Keys of accounts that cannot sign in (disabled, unfinished,
            // gone — or the host's owner-less keys of older versions) are
            // never loaded: disabling revokes keys, and this holds for
            // rows written before it did.
            let owner = db::get::<User>(&users, &row.user_id.key())?;
            if !owner.is_some_and(|u| u.active && !u.disabled) {
                continue;
            }
            let id = String::from_utf8_lossy(&k).into_owned();
            let scopes =
                ScopeSet::parse(&row.scopes).map_err(|e| AuthError::Internal(e.to_string()))?;
            map.insert(
                id,
                CachedKey {
                    user_id: row.user_id,
                    hash: row.hash,
                    scopes: Arc::new(scopes),
                    expires_at: row.expires_at,
                },
            );
        }
        let mut keys = self
            .keys
            .write()
            .map_err(|_| AuthError::Internal("keys".into()))?;
        if self.keys_gen.load(Ordering::Acquire) != generation {
            return Ok(false);
        }
        *keys = map;
        Ok(true)
    }

    /// Verifies an API key from memory: its shape, then a constant-time
    /// comparison of its hash with the one stored for its id (the checksum
    /// is not checked again: see `apikey::parse_for_lookup`).
    pub fn authenticate_key(&self, key: &str) -> Result<Principal, AuthError> {
        // Shape only, one SHA-256: a key whose checksum is wrong cannot match
        // a stored hash anyway (`apikey::parse_for_lookup`).
        let parsed = apikey::parse_for_lookup(key).map_err(|_| AuthError::unauthenticated())?;
        let cached = {
            let keys = self
                .keys
                .read()
                .map_err(|_| AuthError::Internal("keys".into()))?;
            keys.get(parsed.id.as_str()).cloned()
        }
        .ok_or_else(AuthError::unauthenticated)?;
        if !apikey::verify(&parsed, &cached.hash) || cached.expires_at.is_some_and(|e| now() >= e) {
            return Err(AuthError::unauthenticated());
        }
        if let Ok(mut m) = self.key_last_used.lock() {
            let t = now();
            match m.get_mut(parsed.id.as_str()) {
                Some(last) => *last = t,
                None => {
                    m.insert(parsed.id.to_string(), t);
                }
            }
        }
        self.principal(
            cached.user_id,
            Via::ApiKey {
                id: parsed.id.to_string(),
                scopes: cached.scopes,
            },
        )
    }

    /// Creates a key for `p`'s user. Scopes beyond the owner's role are
    /// refused; a key with a scope that reaches secrets
    /// ([`Scope::needs_step_up`]) needs the step-up of a person. The host
    /// stands for no user and cannot own keys.
    pub fn create_key(
        &self,
        p: &Principal,
        name: &str,
        scopes: &[String],
        expires_at: Option<i64>,
    ) -> Result<(KeyView, SecretString), AuthError> {
        if matches!(p.via, Via::Host) {
            return Err(AuthError::Forbidden(
                "host_cannot_own_keys",
                "the host's admin token stands for no user, so a key made with it would belong to nobody: sign in as the user who should own the key (or use an `admin` key of theirs)".into(),
            ));
        }
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(AuthError::Invalid {
                field: "name",
                reason: "1 to 64 characters, no control characters".into(),
            });
        }
        if scopes.is_empty() {
            return Err(AuthError::Invalid {
                field: "scopes",
                reason: "give at least one scope, e.g. `proxy:openai`".into(),
            });
        }
        let set = ScopeSet::parse(scopes).map_err(|e| AuthError::Invalid {
            field: "scopes",
            reason: e.to_string(),
        })?;
        for s in set.iter() {
            if !p.allows(s) {
                return Err(AuthError::Forbidden(
                    "scope_exceeds_role",
                    format!("your role cannot grant `{s}`"),
                ));
            }
        }
        if set.iter().any(Scope::needs_step_up) {
            self.step_up(p, KeyStepUp::Refuse, "key.create", None, None)?;
        }
        if let Some(e) = expires_at
            && e <= now()
        {
            return Err(AuthError::Invalid {
                field: "expires_at",
                reason: "must be in the future".into(),
            });
        }
        if matches!(p.via, Via::ApiKey { .. }) && !p.allows(&Scope::Admin) {
            return Err(AuthError::Forbidden(
                "forbidden",
                "an API key cannot create keys unless it has the `admin` scope".into(),
            ));
        }
        let generated = apikey::generate();
        let row = ApiKeyRow {
            user_id: p.user_id,
            name: name.to_string(),
            hash: generated.hash,
            scopes: set.iter().map(ToString::to_string).collect(),
            created_at: now(),
            expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        let id = generated.id.to_string();
        let txn = self.store.begin_write()?;
        // A bounded number of live keys per user, counted in the writing
        // transaction (the store runs one at a time, so parallel requests
        // cannot overshoot): each key is a row, a cache entry and usage rows.
        let t = now();
        let live = db::scan::<ApiKeyRow>(&txn.open_table(API_KEYS)?)?
            .iter()
            .filter(|(_, k)| {
                k.user_id == p.user_id
                    && k.revoked_at.is_none()
                    && k.expires_at.is_none_or(|e| e > t)
            })
            .count();
        if live >= MAX_KEYS_PER_USER {
            return Err(AuthError::Conflict(
                "too_many_keys",
                format!(
                    "you have {live} active API keys, the most one user may have; revoke unused ones first"
                ),
            ));
        }
        // The owner as they are now, in the transaction that writes the
        // key: one disabled, or whose role changed, since this request was
        // authenticated would get a key outliving that change.
        let owner = db::get::<User>(&txn.open_table(USERS)?, &p.user_id.key())?;
        match owner {
            Some(u) if u.active && !u.disabled && u.role == p.role => {}
            Some(u) if u.active && !u.disabled => {
                return Err(AuthError::Conflict(
                    "account_changed",
                    "your role changed while the key was being made; try again".into(),
                ));
            }
            _ => return Err(AuthError::unauthenticated()),
        }
        db::put(&txn, API_KEYS, id.as_bytes(), &row)?;
        audit::append_in(
            &txn,
            AuditEvent::new(p.actor(), "key.create", Outcome::Success)
                .target(&id)
                .detail(row.scopes.join(" ")),
        )?;
        txn.commit()?;
        if let Ok(mut keys) = self.keys.write() {
            self.keys_gen.fetch_add(1, Ordering::AcqRel);
            keys.insert(
                id.clone(),
                CachedKey {
                    user_id: p.user_id,
                    hash: generated.hash,
                    scopes: Arc::new(set),
                    expires_at,
                },
            );
        }
        // A revocation that committed after our commit but before the
        // insert (disabling the owner, a role change) has already emptied
        // the cache of what it revoked: look again, now that the key is in.
        let revoked = {
            let txn = self.store.begin_read()?;
            db::get::<ApiKeyRow>(&txn.open_table(API_KEYS)?, id.as_bytes())?
                .is_none_or(|r| r.revoked_at.is_some())
        };
        if revoked {
            self.forget_keys(std::slice::from_ref(&id));
            return Err(AuthError::unauthenticated());
        }
        Ok((self.key_view(&id, &row, &p.username), generated.secret))
    }

    fn key_view(&self, id: &str, row: &ApiKeyRow, owner: &str) -> KeyView {
        let pending = self
            .key_last_used
            .lock()
            .ok()
            .and_then(|m| m.get(id).copied());
        KeyView {
            id: id.to_string(),
            name: row.name.clone(),
            owner: owner.to_string(),
            scopes: row.scopes.clone(),
            created_at: row.created_at,
            expires_at: row.expires_at,
            last_used_at: pending.or(row.last_used_at),
            revoked_at: row.revoked_at,
        }
    }

    /// The user's own keys; admins with `all` see everyone's.
    pub fn list_keys(&self, p: &Principal, all: bool) -> Result<Vec<KeyView>, AuthError> {
        let all = all && p.acts_for_everyone();
        let txn = self.store.begin_read()?;
        let rows: Vec<(Vec<u8>, ApiKeyRow)> = db::scan(&txn.open_table(API_KEYS)?)?;
        let users = txn.open_table(USERS)?;
        let mut out = Vec::new();
        for (k, row) in rows {
            if !all && row.user_id != p.user_id {
                continue;
            }
            let owner = db::get::<User>(&users, &row.user_id.key())?
                .map(|u| u.username)
                .unwrap_or_default();
            out.push(self.key_view(&String::from_utf8_lossy(&k), &row, &owner));
        }
        out.sort_by_key(|k| std::cmp::Reverse(k.created_at));
        Ok(out)
    }

    /// Revokes a key: effective on the very next request.
    pub fn revoke_key(&self, p: &Principal, id: &str) -> Result<(), AuthError> {
        let txn = self.store.begin_write()?;
        let mut row: ApiKeyRow = db::get(&txn.open_table(API_KEYS)?, id.as_bytes())?
            .ok_or(AuthError::NotFound("key"))?;
        if row.user_id != p.user_id && !p.acts_for_everyone() {
            return Err(AuthError::NotFound("key"));
        }
        if row.revoked_at.is_none() {
            row.revoked_at = Some(now());
            db::put(&txn, API_KEYS, id.as_bytes(), &row)?;
        }
        audit::append_in(
            &txn,
            AuditEvent::new(p.actor(), "key.revoke", Outcome::Success).target(id),
        )?;
        txn.commit()?;
        if let Ok(mut keys) = self.keys.write() {
            self.keys_gen.fetch_add(1, Ordering::AcqRel);
            keys.remove(id);
        }
        self.revocations.bump();
        Ok(())
    }

    /// Writes batched key last-used times.
    pub fn flush_key_usage(&self) -> Result<(), AuthError> {
        let pending: HashMap<String, i64> = match self.key_last_used.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(_) => return Ok(()),
        };
        if pending.is_empty() {
            return Ok(());
        }
        let txn = self.store.begin_write()?;
        for (id, t) in pending {
            // Bound first: the table must be closed before `put` reopens it.
            let row = db::get::<ApiKeyRow>(&txn.open_table(API_KEYS)?, id.as_bytes())?;
            if let Some(mut row) = row {
                // Replicas flush their own batches: never move it back.
                row.last_used_at = Some(row.last_used_at.map_or(t, |old| old.max(t)));
                db::put(&txn, API_KEYS, id.as_bytes(), &row)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Drops revoked keys from the in-memory cache (after their commit).
    pub(super) fn forget_keys(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        self.revocations.bump();
        if let Ok(mut keys) = self.keys.write() {
            self.keys_gen.fetch_add(1, Ordering::AcqRel);
            for id in ids {
                keys.remove(id);
            }
        }
    }
}
