//! Pruning: deleting what can no longer be used (expired or idle sessions,
//! expired tokens, empty families, expired invites) and forgetting expired
//! in-memory state. Run periodically by the server.
//!
//! Invariants:
//!
//! - sessions, families and tokens are deleted only through `auth::index`;
//! - candidates are found in a read transaction, and each is re-read and
//!   re-checked inside the write transaction that deletes it, at most
//!   [`PRUNE_BATCH`] rows per transaction, so sign-ins never wait long.

use super::Auth;
use crate::auth::AuthError;
use crate::auth::index;
use crate::auth::state;
use crate::auth::store::{
    self as db, ACCESS_TOKENS, AccessToken, INVITES, Invite, REFRESH_FAMILIES, REFRESH_TOKENS,
    RefreshToken, SESSIONS, Session,
};
use crate::store::WriteTxn;

/// What [`Auth::prune_expired`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub sessions: usize,
    pub access_tokens: usize,
    pub refresh_tokens: usize,
    pub families: usize,
    pub invites: usize,
}

impl Pruned {
    pub fn total(&self) -> usize {
        self.sessions + self.access_tokens + self.refresh_tokens + self.families + self.invites
    }
}

/// Rows deleted per write transaction while pruning: keeps each one short,
/// so sign-ins never wait long behind the pruner.
const PRUNE_BATCH: usize = 500;

impl Auth {
    /// Deletes what can no longer be used, as of `t`: expired or idle
    /// sessions, expired access and refresh tokens, families with no token
    /// left, expired invites; and forgets expired MFA tickets, a stale
    /// setup token, drained lockout, throttle and rate-limit entries. Run
    /// periodically by the server (`latchkey serve`); each write
    /// transaction deletes at most [`PRUNE_BATCH`] rows and re-checks every
    /// row inside it.
    pub fn prune_expired(&self, t: i64) -> Result<Pruned, AuthError> {
        let mut out = Pruned::default();
        let session_dead =
            |s: &Session| t >= s.expires_at || t >= s.last_seen_at.saturating_add(s.idle_secs);
        out.sessions = self.prune_table(
            SESSIONS,
            |b| postcard::from_bytes::<Session>(b).is_ok_and(|s| session_dead(&s)),
            |txn, k| {
                let Ok(h) = <[u8; 32]>::try_from(k) else {
                    return Ok(false);
                };
                let row = db::get::<Session>(&txn.open_table(SESSIONS)?, &h)?;
                if row.as_ref().is_some_and(&session_dead) {
                    index::delete_session(txn, &h)?;
                    Self::revoke_families_of_session(txn, &h)?;
                    return Ok(true);
                }
                Ok(false)
            },
        )?;
        out.access_tokens = self.prune_table(
            ACCESS_TOKENS,
            |b| postcard::from_bytes::<AccessToken>(b).is_ok_and(|a| t >= a.expires_at),
            |txn, k| {
                let Ok(h) = <[u8; 32]>::try_from(k) else {
                    return Ok(false);
                };
                let row = db::get::<AccessToken>(&txn.open_table(ACCESS_TOKENS)?, &h)?;
                match row {
                    Some(a) if t >= a.expires_at => {
                        index::delete_access(txn, a.family_id, &h)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            },
        )?;
        out.refresh_tokens = self.prune_table(
            REFRESH_TOKENS,
            |b| postcard::from_bytes::<RefreshToken>(b).is_ok_and(|r| t >= r.expires_at),
            |txn, k| {
                let Ok(h) = <[u8; 32]>::try_from(k) else {
                    return Ok(false);
                };
                let row = db::get::<RefreshToken>(&txn.open_table(REFRESH_TOKENS)?, &h)?;
                match row {
                    Some(r) if t >= r.expires_at => {
                        index::delete_refresh(txn, r.family_id, &h)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            },
        )?;
        // A family without a token can never be used again.
        out.families = self.prune_table(
            REFRESH_FAMILIES,
            |_| true,
            |txn, k| {
                let Ok(b) = <[u8; 16]>::try_from(k) else {
                    return Ok(false);
                };
                let id = u128::from_be_bytes(b);
                let tokens = index::tokens_of_family(txn, id)?;
                if tokens.access.is_empty() && tokens.refresh.is_empty() {
                    index::delete_family(txn, id)?;
                    return Ok(true);
                }
                Ok(false)
            },
        )?;
        out.invites = self.prune_table(
            INVITES,
            |b| postcard::from_bytes::<Invite>(b).is_ok_and(|i| t >= i.expires_at),
            |txn, k| {
                let row = db::get::<Invite>(&txn.open_table(INVITES)?, k)?;
                if row.is_some_and(|i| t >= i.expires_at) {
                    db::delete(txn, INVITES, k)?;
                    return Ok(true);
                }
                Ok(false)
            },
        )?;
        // Tickets, setup tokens, lockout, throttle and shared rate rows
        // that can no longer matter.
        let stale = {
            let txn = self.store.begin_read()?;
            state::stale_keys(&txn.open_table(state::AUTH_STATE)?, &self.lockout, t)?
        };
        for chunk in stale.chunks(PRUNE_BATCH) {
            let txn = self.store.begin_write()?;
            state::remove_stale(&txn, chunk, &self.lockout, t)?;
            txn.commit()?;
        }
        self.limiter.sweep(std::time::Instant::now());
        Ok(out)
    }

    /// Finds the keys of `table` whose value `candidate` accepts (in a
    /// read transaction, so nothing waits on the scan), then runs `remove`
    /// on each inside write transactions of [`PRUNE_BATCH`] keys; `remove`
    /// re-reads the row and says whether it deleted it.
    fn prune_table(
        &self,
        table: latchkey_migrations::ByteTable,
        candidate: impl Fn(&[u8]) -> bool,
        remove: impl Fn(&WriteTxn, &[u8]) -> Result<bool, AuthError>,
    ) -> Result<usize, AuthError> {
        let keys: Vec<Vec<u8>> = {
            let txn = self.store.begin_read()?;
            let t = txn.open_table(table)?;
            let mut keys = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                if candidate(v.value()) {
                    keys.push(k.value().to_vec());
                }
            }
            keys
        };
        let mut removed = 0;
        for chunk in keys.chunks(PRUNE_BATCH) {
            let txn = self.store.begin_write()?;
            for k in chunk {
                if remove(&txn, k)? {
                    removed += 1;
                }
            }
            txn.commit()?;
        }
        Ok(removed)
    }
}
