//! Browser sessions: written at the end of a sign-in, authenticated from the
//! cookie, listed to their user, ended by logout or revocation.
//!
//! Invariants:
//!
//! - sessions are created and deleted only through `auth::index`, so
//!   revocation reads key ranges and finds them all;
//! - a session is written only after re-reading its account in the writing
//!   transaction (active, enabled, same role) and checking that no account
//!   event happened since its credentials were verified (`auth::epoch`);
//! - an expired or idle session is refused (and deleted); `last_seen` is
//!   touched at most every [`TOUCH_EVERY_SECS`], re-reading the row inside
//!   the write so a logout is never undone;
//! - ending a session ends the token families issued from it (and a family
//!   whose session is gone is refused anyway, see `tokens`).

use super::{Auth, NewSession, Principal, UserView, Via, expiry, now, random_token};
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::epoch::{Change, Stamp};
use crate::auth::index;
use crate::auth::store::{
    self as db, Family, REFRESH_FAMILIES, SESSIONS, Session, USERS, User, UserId, token_hash,
};
use crate::secrecy::ExposeSecret;
use serde::Serialize;
use std::net::IpAddr;

/// last_seen is written at most this often per session.
const TOUCH_EVERY_SECS: i64 = 60;

/// Whether a session row is still good at `t`: before its absolute end
/// and not idle.
pub(super) fn session_live(s: &Session, t: i64) -> bool {
    t < s.expires_at && t < s.last_seen_at.saturating_add(s.idle_secs)
}

/// A session as listed to its user.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// First 16 hex digits of the token's hash: names the session without
    /// revealing anything usable.
    pub id: String,
    pub current: bool,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Auth {
    /// Writes the session of a sign-in whose credentials were verified
    /// after `stamps` (password epoch, sign-in epoch) were taken.
    pub(super) fn create_session(
        &self,
        id: UserId,
        user: &User,
        stamps: (Stamp, Stamp),
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<NewSession, AuthError> {
        let token = random_token("lks_");
        let t = now();
        let expires_at = expiry(t, self.settings.session_lifetime);
        let session = Session {
            user_id: id,
            created_at: t,
            last_seen_at: t,
            expires_at,
            idle_secs: i64::try_from(self.settings.session_idle.as_secs()).unwrap_or(i64::MAX),
            last_auth_at: t,
            ip: ip.map(|i| i.to_string()),
            // From the network: capped and cleaned like an audit field.
            user_agent: user_agent.map(|u| audit::clean(u, 200)),
        };
        let txn = self.store.begin_write()?;
        // The account as it is now: a sign-in whose password step ran
        // before the account was disabled or promoted (which end every
        // sign-in) must not slip in after.
        let now_row = db::get::<User>(&txn.open_table(USERS)?, &id.key())?;
        if !now_row.is_some_and(|u| u.active && !u.disabled && u.role == user.role) {
            return Err(AuthError::unauthenticated());
        }
        // And no account event (password change, new recovery codes…)
        // between the verification and now: its revocation found no
        // session of ours to end, so we must not write one (see `auth::epoch`).
        if !self.epochs.holds(&txn, id, stamps.0, stamps.1)? {
            return Err(AuthError::Unauthorized(
                "invalid_ticket",
                "the account changed during sign-in; sign in again".into(),
            ));
        }
        index::put_session(&txn, &token_hash(token.expose_secret()), &session)?;
        txn.commit()?;
        Ok(NewSession {
            recovery_codes: Vec::new(),
            token,
            user: UserView::of(id, user),
            expires_at,
        })
    }

    /// The session behind a cookie value; expired or idle sessions are
    /// deleted and refused.
    pub fn authenticate_session(&self, token: &str) -> Result<Principal, AuthError> {
        let hash = token_hash(token);
        let txn = self.store.begin_read()?;
        let s: Session =
            db::get(&txn.open_table(SESSIONS)?, &hash)?.ok_or_else(AuthError::unauthenticated)?;
        drop(txn);
        let t = now();
        if t >= s.expires_at || t >= s.last_seen_at.saturating_add(s.idle_secs) {
            let w = self.store.begin_write()?;
            index::delete_session(&w, &hash)?;
            w.commit()?;
            return Err(AuthError::unauthenticated());
        }
        if t - s.last_seen_at >= TOUCH_EVERY_SECS {
            let w = self.store.begin_write()?;
            // Read again inside the write: a logout that committed since the
            // read above must not be undone by writing the old row back.
            let current = db::get::<Session>(&w.open_table(SESSIONS)?, &hash)?;
            let Some(mut s2) = current else {
                return Err(AuthError::unauthenticated());
            };
            s2.last_seen_at = t;
            db::put(&w, SESSIONS, &hash, &s2)?;
            w.commit()?;
        }
        self.principal(
            s.user_id,
            Via::Session {
                hash,
                last_auth_at: s.last_auth_at,
            },
        )
    }

    /// Ends what authenticated this request: a session (and the tokens
    /// issued from it) or an access token's family.
    pub fn logout(&self, p: &Principal) -> Result<(), AuthError> {
        let txn = self.store.begin_write()?;
        match &p.via {
            Via::Session { hash, .. } => {
                index::delete_session(&txn, hash)?;
                Self::revoke_families_of_session(&txn, hash)?;
            }
            Via::AccessToken { family_id } => {
                let key = family_id.to_be_bytes();
                // Bound first: the table must be closed before `put` reopens it.
                let family = db::get::<Family>(&txn.open_table(REFRESH_FAMILIES)?, &key)?;
                if let Some(mut f) = family {
                    f.revoked = true;
                    db::put(&txn, REFRESH_FAMILIES, &key, &f)?;
                }
                Self::delete_family_tokens(&txn, *family_id)?;
            }
            Via::ApiKey { .. } | Via::Host => {}
        }
        audit::append_in(&txn, AuditEvent::new(p.actor(), "logout", Outcome::Success))?;
        txn.commit()?;
        self.revocations.bump();
        Ok(())
    }

    pub fn list_sessions(&self, p: &Principal) -> Result<Vec<SessionView>, AuthError> {
        let current = match &p.via {
            Via::Session { hash, .. } => Some(*hash),
            _ => None,
        };
        let txn = self.store.begin_read()?;
        let sessions = txn.open_table(SESSIONS)?;
        let mut rows = Vec::new();
        for h in index::sessions_of_read(&txn, p.user_id)? {
            if let Some(s) = db::get::<Session>(&sessions, &h)?
                && s.user_id == p.user_id
            {
                rows.push((h, s));
            }
        }
        let mut out: Vec<SessionView> = rows
            .into_iter()
            .map(|(k, s)| SessionView {
                id: hex::encode(&k[..8.min(k.len())]),
                current: current.is_some_and(|c| c[..] == k[..]),
                created_at: s.created_at,
                last_seen_at: s.last_seen_at,
                expires_at: s.expires_at,
                ip: s.ip,
                user_agent: s.user_agent,
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.last_seen_at));
        Ok(out)
    }

    /// Revokes the user's session `id`, or with `None` every session but
    /// the current one.
    pub fn revoke_sessions(&self, p: &Principal, id: Option<&str>) -> Result<usize, AuthError> {
        let current = match &p.via {
            Via::Session { hash, .. } => Some(*hash),
            _ => None,
        };
        // "Sign out everywhere" ends sign-ins in progress too.
        let _changing = self.epochs.begin(p.user_id, Change::SignIns);
        let txn = self.store.begin_write()?;
        self.epochs.apply(&txn, p.user_id)?;
        let mut n = 0;
        for k in index::sessions_of(&txn, p.user_id)? {
            let hit = match id {
                Some(id) => hex::encode(&k[..8]) == id,
                None => current.is_none_or(|c| c != k),
            };
            if hit && index::delete_session(&txn, &k)?.is_some() {
                Self::revoke_families_of_session(&txn, &k)?;
                n += 1;
            }
        }
        if id.is_some() && n == 0 {
            return Err(AuthError::NotFound("session"));
        }
        audit::append_in(
            &txn,
            AuditEvent::new(p.actor(), "session.revoke", Outcome::Success)
                .detail(format!("{n} session(s)")),
        )?;
        txn.commit()?;
        self.revocations.bump();
        Ok(n)
    }
}
