//! Access and refresh tokens: a signed-in session exchanged for a token
//! family (`lka_…` access, `lkr_…` refresh), refresh-token rotation with
//! reuse detection, and ending families.
//!
//! Invariants:
//!
//! - a refresh token is single-use: checked and consumed in one write
//!   transaction that re-reads it; presenting a used one revokes its whole
//!   family (reuse detection), and used refresh tokens of a revoked family
//!   stay, marked, so a late replay is still recognised;
//! - an access token lives no longer than what it came from: its family
//!   (not revoked, within `auth.refresh_absolute_lifetime`) and that
//!   family's session (not ended, expired or idle);
//! - families and tokens are created and deleted only through `auth::index`,
//!   so revocation reads key ranges and finds them all.

use super::sessions::session_live;
use super::{Auth, Principal, SecretView, Via, now, random_token};
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::index;
use crate::auth::store::{
    self as db, ACCESS_TOKENS, AccessToken, Family, REFRESH_FAMILIES, REFRESH_TOKENS, RefreshToken,
    SESSIONS, Session, USERS, User, UserId, token_hash,
};
use crate::secrecy::ExposeSecret;
use crate::store::WriteTxn;
use serde::Serialize;
use std::net::IpAddr;

#[derive(Debug, Serialize)]
pub struct TokenPair {
    pub access_token: SecretView,
    pub refresh_token: SecretView,
    pub expires_in: i64,
    pub token_type: &'static str,
}

impl Auth {
    /// `Authorization: Bearer …`: an access token (`lka_…`) or an API key (`lk_…`).
    pub fn authenticate_bearer(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if token.starts_with("lka_") {
            let hash = token_hash(token);
            let txn = self.store.begin_read()?;
            let a: AccessToken = db::get(&txn.open_table(ACCESS_TOKENS)?, &hash)?
                .ok_or_else(AuthError::unauthenticated)?;
            let t = now();
            // An access token lives no longer than what it came from: its
            // family (not revoked, within its absolute lifetime) and that
            // family's session (not ended, expired or idle).
            let family = db::get::<Family>(
                &txn.open_table(REFRESH_FAMILIES)?,
                &a.family_id.to_be_bytes(),
            )?;
            let alive = match family {
                Some(f) if !f.revoked && t < self.family_end(&f) => {
                    let session = db::get::<Session>(&txn.open_table(SESSIONS)?, &f.session_hash)?;
                    session.is_some_and(|s| session_live(&s, t))
                }
                _ => false,
            };
            if t >= a.expires_at || !alive {
                return Err(AuthError::unauthenticated());
            }
            return self.principal(
                a.user_id,
                Via::AccessToken {
                    family_id: a.family_id,
                },
            );
        }
        self.authenticate_key(token)
    }

    /// Exchanges a browser session for an access token and a refresh token.
    pub fn issue_tokens(&self, p: &Principal) -> Result<TokenPair, AuthError> {
        let Via::Session { hash, .. } = &p.via else {
            return Err(AuthError::Forbidden(
                "session_required",
                "tokens are issued to a signed-in session".into(),
            ));
        };
        let family_id: u128 = rand::random();
        let family = Family {
            user_id: p.user_id,
            session_hash: *hash,
            created_at: now(),
            revoked: false,
        };
        let end = self.family_end(&family);
        let txn = self.store.begin_write()?;
        // The session as it is now: one revoked since this request was
        // authenticated gets no tokens (they would be dead anyway, but a
        // family must not stand on a session that is gone).
        let session = db::get::<Session>(&txn.open_table(SESSIONS)?, hash)?;
        if !session.is_some_and(|s| session_live(&s, now())) {
            return Err(AuthError::unauthenticated());
        }
        index::put_family(&txn, family_id, &family)?;
        let pair = self.mint_pair(&txn, p.user_id, family_id, end)?;
        txn.commit()?;
        Ok(pair)
    }

    /// When a refresh family ends whatever its tokens say:
    /// `auth.refresh_absolute_lifetime` after the sign-in it came from was
    /// exchanged (the family's `created_at`).
    fn family_end(&self, f: &Family) -> i64 {
        let lifetime =
            i64::try_from(self.settings.refresh_absolute_lifetime.as_secs()).unwrap_or(i64::MAX);
        f.created_at.saturating_add(lifetime)
    }

    /// A new access/refresh pair of `family_id`, neither outliving the
    /// family's absolute end `family_end`.
    fn mint_pair(
        &self,
        txn: &WriteTxn,
        user_id: UserId,
        family_id: u128,
        family_end: i64,
    ) -> Result<TokenPair, AuthError> {
        let access = random_token("lka_");
        let refresh = random_token("lkr_");
        let t = now();
        let ttl = (self.settings.access_token_lifetime.as_secs() as i64).min(family_end - t);
        index::put_access(
            txn,
            &token_hash(access.expose_secret()),
            &AccessToken {
                user_id,
                family_id,
                expires_at: t + ttl,
            },
        )?;
        index::put_refresh(
            txn,
            &token_hash(refresh.expose_secret()),
            &RefreshToken {
                family_id,
                user_id,
                expires_at: (t + self.settings.refresh_token_lifetime.as_secs() as i64)
                    .min(family_end),
                used: false,
            },
        )?;
        Ok(TokenPair {
            access_token: SecretView(access),
            refresh_token: SecretView(refresh),
            expires_in: ttl,
            token_type: "Bearer",
        })
    }

    /// Rotates a refresh token. Presenting one that was already used means
    /// it was stolen (or replayed): the whole family is revoked.
    pub fn refresh(&self, token: &str, ip: Option<IpAddr>) -> Result<TokenPair, AuthError> {
        let hash = token_hash(token.trim());
        let txn = self.store.begin_write()?;
        let r: RefreshToken = db::get(&txn.open_table(REFRESH_TOKENS)?, &hash)?
            .ok_or_else(AuthError::unauthenticated)?;
        let fam_key = r.family_id.to_be_bytes();
        let mut family: Family = db::get(&txn.open_table(REFRESH_FAMILIES)?, &fam_key)?
            .ok_or_else(AuthError::unauthenticated)?;
        let user = db::get::<User>(&txn.open_table(USERS)?, &r.user_id.key())?;
        let username = user
            .as_ref()
            .map(|u| u.username.clone())
            .unwrap_or_default();
        if r.used || family.revoked {
            family.revoked = true;
            db::put(&txn, REFRESH_FAMILIES, &fam_key, &family)?;
            Self::delete_family_tokens(&txn, r.family_id)?;
            audit::append_in(
                &txn,
                AuditEvent::new(&username, "token.reuse", Outcome::Failure)
                    .ip(ip)
                    .detail("refresh token presented twice: family revoked"),
            )?;
            txn.commit()?;
            tracing::warn!(user = %username, "refresh token reuse detected; token family revoked");
            return Err(AuthError::Unauthorized(
                "token_reused",
                "this refresh token was already used; all tokens from that sign-in are revoked"
                    .into(),
            ));
        }
        // A family renews itself only while everything it stands on
        // holds: the token's own expiry, the family's absolute lifetime,
        // its session (not signed out, revoked, expired or idle) and an
        // enabled account. Otherwise the family ends here, access tokens
        // included.
        let t = now();
        let session = db::get::<Session>(&txn.open_table(SESSIONS)?, &family.session_hash)?
            .filter(|s| session_live(s, t));
        let end = self.family_end(&family);
        let usable = t < r.expires_at
            && t < end
            && session.is_some()
            && user.is_some_and(|u| u.active && !u.disabled);
        let Some(mut session) = session.filter(|_| usable) else {
            family.revoked = true;
            db::put(&txn, REFRESH_FAMILIES, &fam_key, &family)?;
            Self::delete_family_tokens(&txn, r.family_id)?;
            txn.commit()?;
            return Err(AuthError::unauthenticated());
        };
        // Refreshing is the session's activity too: a client living on
        // tokens keeps its sign-in from going idle, never past its end.
        session.last_seen_at = t;
        db::put(&txn, SESSIONS, &family.session_hash, &session)?;
        let mut used = r.clone();
        used.used = true;
        db::put(&txn, REFRESH_TOKENS, &hash, &used)?;
        let pair = self.mint_pair(&txn, r.user_id, r.family_id, end.min(session.expires_at))?;
        txn.commit()?;
        Ok(pair)
    }

    /// Deletes a family's access tokens and marks its refresh tokens used,
    /// through the index (no table scan).
    pub(super) fn delete_family_tokens(txn: &WriteTxn, family_id: u128) -> Result<(), AuthError> {
        let tokens = index::tokens_of_family(txn, family_id)?;
        for h in tokens.access {
            index::delete_access(txn, family_id, &h)?;
        }
        // Used refresh tokens of a revoked family stay, marked, so a late
        // replay is still recognised as reuse.
        for h in tokens.refresh {
            let row = db::get::<RefreshToken>(&txn.open_table(REFRESH_TOKENS)?, &h)?;
            if let Some(mut row) = row
                && !row.used
            {
                row.used = true;
                index::put_refresh(txn, &h, &row)?;
            }
        }
        Ok(())
    }

    pub(super) fn revoke_families_of_session(
        txn: &WriteTxn,
        session: &[u8; 32],
    ) -> Result<(), AuthError> {
        for id in index::families_of_session(txn, session)? {
            Self::revoke_family(txn, id)?;
        }
        Ok(())
    }

    /// Marks family `id` revoked and ends its tokens.
    fn revoke_family(txn: &WriteTxn, id: u128) -> Result<(), AuthError> {
        let key = id.to_be_bytes();
        let family = db::get::<Family>(&txn.open_table(REFRESH_FAMILIES)?, &key)?;
        if let Some(mut f) = family
            && !f.revoked
        {
            f.revoked = true;
            db::put(txn, REFRESH_FAMILIES, &key, &f)?;
            Self::delete_family_tokens(txn, id)?;
        }
        Ok(())
    }
}
