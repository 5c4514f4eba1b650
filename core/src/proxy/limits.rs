//! Per-key limits of the agent proxy: requests per minute and tokens per
//! UTC day, both optional, stored with the key and cached in memory.
//!
//! Storage (schema v3, table `key_limits`): key = the API key's public id
//! (UTF-8), value = postcard of [`KeyLimits`] — `requests_per_minute:
//! Option<u32>`, `tokens_per_day: Option<u64>`, in that order. A key with
//! no row (or a row of two `None`s) has no own limits: `proxy.key_rpm`
//! applies and it has no token budget.
//!
//! The row is kept when its key is revoked: a revoked key never passes
//! authentication, so the row is harmless, and keeping it lets the owner
//! see afterwards what the key was allowed.
//!
//! [`LimitCache`] holds every row; the hot path reads it under a read lock
//! and never touches the disk. [`set`] writes a row (with its audit entry)
//! in one transaction and updates the cache after the commit; the other
//! replicas reload theirs when the store's change feed names the table
//! ([`super::Proxy::on_store_change`]).

use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::service::Principal;
use crate::auth::store::{self as db, ApiKeyRow};
use crate::store::{Store, StoreError};
use latchkey_migrations::v2::API_KEYS;
use latchkey_migrations::v3::KEY_LIMITS;
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};
use std::sync::RwLock;

/// Largest `requests_per_minute` accepted (about 16,000 a second).
pub const MAX_RPM: u32 = 1_000_000;
/// Largest `tokens_per_day` accepted (a trillion).
pub const MAX_TOKENS_PER_DAY: u64 = 1_000_000_000_000;

/// One key's own limits. Also the JSON shape of `"limits"` in the API.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
}

/// Why limits could not be set.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("`limits.{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// No such key, or not the caller's (the same answer, so keys of
    /// others cannot be probed).
    #[error("no such key")]
    NotFound,
    #[error("the key has been revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl KeyLimits {
    /// Positive and below the maxima; the error names the field.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if let Some(n) = self.requests_per_minute
            && !(1..=MAX_RPM).contains(&n)
        {
            return Err(LimitsError::Invalid {
                field: "requests_per_minute",
                reason: format!("must be 1 to {MAX_RPM} (leave it out for no own limit)"),
            });
        }
        if let Some(n) = self.tokens_per_day
            && !(1..=MAX_TOKENS_PER_DAY).contains(&n)
        {
            return Err(LimitsError::Invalid {
                field: "tokens_per_day",
                reason: format!("must be 1 to {MAX_TOKENS_PER_DAY} (leave it out for no budget)"),
            });
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.requests_per_minute.is_none() && self.tokens_per_day.is_none()
    }
}

/// Every key's limits, in memory.
#[derive(Debug, Default)]
pub struct LimitCache {
    /// Keyed by API key ids (made here): the fast hash is safe.
    map: RwLock<HashMap<String, KeyLimits>>,
}

impl LimitCache {
    /// Reads the whole `key_limits` table (at startup).
    pub fn load(store: &Store) -> Result<LimitCache, LimitsError> {
        let txn = store.begin_read()?;
        let rows: Vec<(Vec<u8>, KeyLimits)> = db::scan(&txn.open_table(KEY_LIMITS)?)?;
        let map = rows
            .into_iter()
            .filter_map(|(k, v)| String::from_utf8(k).ok().map(|k| (k, v)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        Ok(LimitCache {
            map: RwLock::new(map),
        })
    }

    /// Reads the table again (another replica set a key's limits),
    /// replacing the whole map.
    pub fn reload(&self, store: &Store) -> Result<(), LimitsError> {
        let fresh = LimitCache::load(store)?
            .map
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut m = match self.map.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        *m = fresh;
        Ok(())
    }

    /// Whether any key has its own requests-per-minute limit.
    pub fn any_rpm(&self) -> bool {
        self.map
            .read()
            .map(|m| m.values().any(|l| l.requests_per_minute.is_some()))
            .unwrap_or(true)
    }

    /// `key_id`'s limits (none set: the default, no own limits).
    pub fn get(&self, key_id: &str) -> KeyLimits {
        self.map
            .read()
            .ok()
            .and_then(|m| m.get(key_id).copied())
            .unwrap_or_default()
    }

    fn put(&self, key_id: &str, limits: KeyLimits) {
        // A poisoned lock still holds a consistent map: every write is one
        // insert or remove.
        let mut m = match self.map.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if limits.is_empty() {
            m.remove(key_id);
        } else {
            m.insert(key_id.to_string(), limits);
        }
    }
}

/// Sets `key_id`'s limits: the key's owner or a caller with the `admin`
/// scope (the rule of revoking), an unrevoked key, valid limits. Row and audit entry in one
/// transaction; the cache follows the commit.
pub fn set(
    store: &Store,
    cache: &LimitCache,
    p: &Principal,
    key_id: &str,
    limits: KeyLimits,
) -> Result<(), LimitsError> {
    limits.validate()?;
    let txn = store.begin_write()?;
    let row: ApiKeyRow =
        db::get(&txn.open_table(API_KEYS)?, key_id.as_bytes())?.ok_or(LimitsError::NotFound)?;
    // Others' keys only with the `admin` scope, never by the owner's role
    // alone (an admin's `keys:manage` key manages the admin's own keys).
    if row.user_id != p.user_id && !p.acts_for_everyone() {
        return Err(LimitsError::NotFound);
    }
    if row.revoked_at.is_some() {
        return Err(LimitsError::Revoked);
    }
    if limits.is_empty() {
        db::delete(&txn, KEY_LIMITS, key_id.as_bytes())?;
    } else {
        db::put(&txn, KEY_LIMITS, key_id.as_bytes(), &limits)?;
    }
    audit::append_in(
        &txn,
        AuditEvent::new(p.actor(), "key.limits", Outcome::Success)
            .target(key_id)
            .detail(describe(&limits)),
    )?;
    txn.commit()?;
    cache.put(key_id, limits);
    Ok(())
}

/// `rpm=60 tokens_per_day=none`, for the audit log.
fn describe(l: &KeyLimits) -> String {
    let show = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |n| n.to_string());
    format!(
        "rpm={} tokens_per_day={}",
        show(l.requests_per_minute.map(u64::from)),
        show(l.tokens_per_day)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        assert!(KeyLimits::default().validate().is_ok());
        let ok = KeyLimits {
            requests_per_minute: Some(60),
            tokens_per_day: Some(100_000),
        };
        assert!(ok.validate().is_ok());
        for (l, field) in [
            (
                KeyLimits {
                    requests_per_minute: Some(0),
                    tokens_per_day: None,
                },
                "requests_per_minute",
            ),
            (
                KeyLimits {
                    requests_per_minute: Some(MAX_RPM + 1),
                    tokens_per_day: None,
                },
                "requests_per_minute",
            ),
            (
                KeyLimits {
                    requests_per_minute: None,
                    tokens_per_day: Some(0),
                },
                "tokens_per_day",
            ),
            (
                KeyLimits {
                    requests_per_minute: None,
                    tokens_per_day: Some(MAX_TOKENS_PER_DAY + 1),
                },
                "tokens_per_day",
            ),
        ] {
            let err = l.validate().expect_err("invalid");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn encoding_is_pinned() {
        // Schema v3 pins this: postcard, rpm then tokens, both Options.
        let l = KeyLimits {
            requests_per_minute: Some(60),
            tokens_per_day: Some(300),
        };
        let bytes = postcard::to_allocvec(&l).expect("encode");
        assert_eq!(bytes, [1, 60, 1, 0xac, 0x02]);
        assert_eq!(
            postcard::from_bytes::<KeyLimits>(&bytes).expect("decode"),
            l
        );
    }

    #[test]
    fn cache_updates_and_forgets() {
        let c = LimitCache::default();
        assert_eq!(c.get("k"), KeyLimits::default());
        let l = KeyLimits {
            requests_per_minute: Some(5),
            tokens_per_day: None,
        };
        c.put("k", l);
        assert_eq!(c.get("k"), l);
        assert_eq!(c.get("other"), KeyLimits::default());
        c.put("k", KeyLimits::default());
        assert_eq!(c.get("k"), KeyLimits::default());
        assert!(c.map.read().expect("lock").is_empty());
    }
}
