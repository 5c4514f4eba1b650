//! Re-authentication and the step-up rule for secrets.
//!
//! Invariants:
//!
//! - every path that yields a secret's plaintext, or mints a credential that
//!   can, passes [`Auth::step_up`] (a fresh re-authentication of a person;
//!   access tokens never, keys only for scopes they carry, the host always)
//!   and is audited, refusals included; which scopes count is
//!   `Scope::needs_step_up`, in one place;
//! - a re-authentication with a TOTP code consumes its step like a sign-in
//!   (see `second_factor`), and counts towards the same locks.

use super::{Auth, Principal, Via, now};
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::store::{self as db, SESSIONS, Session};
use crate::secrecy::SecretString;
use std::net::IpAddr;

/// Whether an API key may stand in for a fresh re-authentication under
/// the step-up rule ([`Auth::step_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStepUp {
    /// Using a key whose scopes cover the action — a reveal with
    /// `vault:read:<name>`, a backup with `admin`, a connection's token
    /// with `connections:<p>`: the key is itself the grant, and minting a
    /// key with such a scope needed a step-up.
    UseGrant,
    /// Minting or widening a credential: a key never stands in for a
    /// person.
    Refuse,
}

impl Auth {
    /// Privileged actions call this: the session must have proved a factor
    /// within `reauth_window`. Keys and access tokens never qualify for
    /// what needs it, except the host.
    pub fn require_recent_auth(&self, p: &Principal) -> Result<(), AuthError> {
        match &p.via {
            Via::Host => Ok(()),
            Via::Session { last_auth_at, .. }
                if now() - last_auth_at <= self.settings.reauth_window.as_secs() as i64 =>
            {
                Ok(())
            }
            _ => Err(AuthError::Forbidden(
                "reauth_required",
                "confirm it's you: POST /api/auth/reauth with your password or a TOTP code".into(),
            )),
        }
    }

    /// The step-up rule for secrets (docs/security, "Step-up"): every path
    /// that yields a secret's plaintext, or mints a credential that can,
    /// calls this after its permission check — reveal, backup, a
    /// connection's token, a key with a [`Scope::needs_step_up`] scope, a
    /// provider's client secret. Refusals are audited as `action` (detail
    /// `reauth_required`); the caller audits the success.
    ///
    /// - the host token passes: it stands for someone at the machine, who
    ///   holds the data directory and its master key anyway;
    /// - a session passes when it proved a factor within `reauth_window`;
    /// - an access token never does: it is a session lent to a program for
    ///   15 minutes, no proof that a person is present;
    /// - an API key passes only under [`KeyStepUp::UseGrant`].
    ///
    /// [`Scope::needs_step_up`]: crate::auth::scope::Scope::needs_step_up
    pub fn step_up(
        &self,
        p: &Principal,
        keys: KeyStepUp,
        action: &str,
        target: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        let res = match (&p.via, keys) {
            (Via::ApiKey { .. }, KeyStepUp::UseGrant) => Ok(()),
            _ => self.require_recent_auth(p),
        };
        if res.is_err() {
            let mut e = AuditEvent::new(p.actor(), action, Outcome::Failure)
                .ip(ip)
                .detail("reauth_required");
            if let Some(t) = target {
                e = e.target(t);
            }
            self.audit(e);
        }
        res
    }

    /// Re-authentication: a TOTP code (or the password when the user has
    /// no second factor) refreshes the session's `last_auth_at`.
    pub fn reauth(
        &self,
        p: &Principal,
        password: Option<&SecretString>,
        code: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        let Via::Session { hash, .. } = &p.via else {
            return Err(AuthError::Forbidden(
                "session_required",
                "re-authentication is for signed-in sessions".into(),
            ));
        };
        let attempt = self.admit_from(&p.username, ip)?;
        let user = self.get_user(p.user_id)?;
        let ok = match (&user.totp, code, password) {
            (Some(sealed), Some(c), _) => match self
                .check_totp(p.user_id, &user, sealed, c)
                .and_then(|step| self.consume_totp_step(p.user_id, sealed, step))
            {
                Ok(_) => true,
                Err(AuthError::Unauthorized(..)) => false,
                Err(e) => return Err(e),
            },
            (None, _, Some(pw)) => self.hasher.verify(pw, &user.password_hash).unwrap_or(false),
            _ => {
                self.release(attempt);
                return Err(AuthError::Invalid {
                    field: "code",
                    reason: if user.totp.is_some() {
                        "send a TOTP `code`".into()
                    } else {
                        "send your `password`".into()
                    },
                });
            }
        };
        if !ok {
            self.failed(attempt, &p.username, "reauth", "invalid", ip);
            return Err(AuthError::Unauthorized(
                "invalid_code",
                "that did not match".into(),
            ));
        }
        self.succeeded(attempt);
        let txn = self.store.begin_write()?;
        // Bound first: the table must be closed before `put` reopens it.
        let session = db::get::<Session>(&txn.open_table(SESSIONS)?, hash)?;
        if let Some(mut s) = session {
            s.last_auth_at = now();
            db::put(&txn, SESSIONS, hash, &s)?;
        }
        audit::append_in(
            &txn,
            AuditEvent::new(p.actor(), "reauth", Outcome::Success).ip(ip),
        )?;
        txn.commit()?;
        Ok(())
    }
}
