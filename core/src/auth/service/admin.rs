//! Users and invites, for admins: invites and their redemption, roles,
//! disabling, resetting a second factor.
//!
//! Invariants:
//!
//! - everything but redeeming an invite needs the `admin` scope
//!   ([`Principal::acts_for_everyone`]); role changes, disabling, resets and
//!   invites for admins also need a fresh re-authentication;
//! - an invite is single-use: everything that can be refused is checked
//!   before it is touched, and it is consumed in the same write transaction
//!   that creates the user, which re-reads it; of concurrent redemptions
//!   exactly one creates a user;
//! - an admin demoting themselves, or the disabling of an admin, needs
//!   another active admin;
//! - role changes, disabling and resets end credentials inside their own
//!   transaction (see `revoke`).

use super::revoke::{Keep, Tickets};
use super::{Auth, Principal, UserView, expiry, now, random_token};
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::epoch::Change;
use crate::auth::scope::Role;
use crate::auth::store::{self as db, INVITES, Invite, USERS, User, UserId, token_hash};
use crate::secrecy::{ExposeSecret, SecretString};
use crate::store::WriteTxn;
use std::net::IpAddr;
use std::time::Duration;

/// The longest an invite may stay valid (`expires_in_secs`).
pub const MAX_INVITE_LIFETIME: Duration = Duration::from_secs(30 * 86400);

impl Auth {
    fn require_admin(p: &Principal) -> Result<(), AuthError> {
        if p.acts_for_everyone() {
            Ok(())
        } else {
            Err(AuthError::Forbidden(
                "forbidden",
                "this needs an admin".into(),
            ))
        }
    }

    /// A single-use invite link token for a new user with `role`.
    pub fn create_invite(
        &self,
        p: &Principal,
        role: Role,
        ttl: Option<Duration>,
    ) -> Result<(SecretString, i64), AuthError> {
        Self::require_admin(p)?;
        if role == Role::Admin {
            self.require_recent_auth(p)?;
        }
        let ttl = ttl.unwrap_or(self.settings.invite_lifetime);
        if ttl.is_zero() || ttl > MAX_INVITE_LIFETIME {
            return Err(AuthError::Invalid {
                field: "expires_in_secs",
                reason: format!(
                    "must be 1 to {} seconds (30 days)",
                    MAX_INVITE_LIFETIME.as_secs()
                ),
            });
        }
        let token = random_token("lki_");
        let t = now();
        let expires_at = expiry(t, ttl);
        let txn = self.store.begin_write()?;
        db::put(
            &txn,
            INVITES,
            &token_hash(token.expose_secret()),
            &Invite {
                role,
                created_by: p.user_id,
                created_at: t,
                expires_at,
                used_at: None,
            },
        )?;
        audit::append_in(
            &txn,
            AuditEvent::new(p.actor(), "invite.create", Outcome::Success).detail(role.as_str()),
        )?;
        txn.commit()?;
        Ok((token, expires_at))
    }

    /// Redeems an invite: creates the user. Admins must then enroll TOTP
    /// before they can sign in (see `login`); others may later.
    ///
    /// Everything that can be refused (the invite, the username, the
    /// password) is checked before the invite is touched, and the invite
    /// is consumed in the same write transaction that creates the user: a
    /// refused request leaves the invite usable, and of concurrent
    /// redemptions exactly one creates a user.
    pub fn accept_invite(
        &self,
        token: &str,
        username: &str,
        password: &SecretString,
        ip: Option<IpAddr>,
    ) -> Result<UserView, AuthError> {
        let hash = token_hash(token.trim());
        let bad = || {
            AuthError::Forbidden(
                "invalid_invite",
                "the invite link is invalid, used or expired; ask for a new one".into(),
            )
        };
        let usable = |inv: &Invite| inv.used_at.is_none() && now() < inv.expires_at;
        let inv_role = {
            let txn = self.store.begin_read()?;
            let inv: Invite = db::get(&txn.open_table(INVITES)?, &hash)?.ok_or_else(bad)?;
            if !usable(&inv) {
                self.audit(
                    AuditEvent::new(username, "invite.accept", Outcome::Failure)
                        .ip(ip)
                        .detail("expired_or_used"),
                );
                return Err(bad());
            }
            inv.role
        };
        Self::validate_username(username)?;
        if self.find_user(username)?.is_some() {
            return Err(Self::username_taken(username));
        }
        // Password policy and argon2 (slow): outside the write transaction.
        let user = self.new_user(username, password, inv_role)?;
        let id = UserId::random();
        let txn = self.store.begin_write()?;
        let mut inv: Invite = db::get(&txn.open_table(INVITES)?, &hash)?.ok_or_else(bad)?;
        if !usable(&inv) {
            return Err(bad());
        }
        Self::insert_user_in(&txn, id, &user)?;
        inv.used_at = Some(now());
        db::put(&txn, INVITES, &hash, &inv)?;
        audit::append_in(
            &txn,
            AuditEvent::new(username, "invite.accept", Outcome::Success)
                .ip(ip)
                .detail(inv_role.as_str()),
        )?;
        txn.commit()?;
        self.forget_people();
        Ok(UserView::of(id, &user))
    }

    pub fn set_role(
        &self,
        p: &Principal,
        username: &str,
        role: Role,
    ) -> Result<UserView, AuthError> {
        Self::require_admin(p)?;
        self.require_recent_auth(p)?;
        let (id, _) = self.user_by_name(username)?;
        let _changing = self.epochs.begin(id, Change::Password);
        let (u, revoked) = self.change_user(id, |txn, u| {
            let old = u.role;
            if old == Role::Admin && role != Role::Admin && u.active && !u.disabled {
                // Inside the write transaction: two admins demoting each
                // other (or themselves) at once are serialised here, and
                // the second finds no other admin left.
                Self::ensure_another_admin_in(txn, id)?;
            }
            u.role = role;
            if role == Role::Admin && old != Role::Admin {
                // Sign-ins made under a lesser role's rules (a password
                // alone) do not carry an admin's rights: the user signs in
                // again, with the second factor admins must have.
                Self::revoke_user_credentials(txn, id, Keep::Nothing)?;
            }
            Self::revoke_user_keys(txn, id, |scopes| {
                !scopes.iter().all(|s| s.survives_role_change(old, role))
            })
        })?;
        self.forget_keys(&revoked);
        self.sign_ins_ended(id, Tickets::End);
        self.audit(
            AuditEvent::new(p.actor(), "user.role", Outcome::Success)
                .target(username)
                .detail(format!(
                    "{} ({} key(s) revoked)",
                    role.as_str(),
                    revoked.len()
                )),
        );
        self.revocations.bump();
        Ok(UserView::of(id, &u))
    }

    /// Refuses (409 `last_admin`) unless an active admin other than
    /// `except` exists, read in the caller's write transaction so the
    /// check and the change that depends on it commit together.
    fn ensure_another_admin_in(txn: &WriteTxn, except: UserId) -> Result<(), AuthError> {
        let others = db::scan::<User>(&txn.open_table(USERS)?)?
            .into_iter()
            .filter(|(k, u)| {
                UserId::from_key(k) != Some(except)
                    && u.role == Role::Admin
                    && !u.disabled
                    && u.active
            })
            .count();
        if others == 0 {
            return Err(AuthError::Conflict(
                "last_admin",
                "this is the last active admin".into(),
            ));
        }
        Ok(())
    }

    /// Disables (or re-enables) a user; disabling ends their sessions,
    /// tokens and keys at once.
    pub fn set_disabled(
        &self,
        p: &Principal,
        username: &str,
        disabled: bool,
    ) -> Result<UserView, AuthError> {
        Self::require_admin(p)?;
        // As strong as a role change (it ends every sign-in and key of the
        // account, an admin's included): the same fresh re-authentication.
        self.require_recent_auth(p)?;
        let (id, _) = self.user_by_name(username)?;
        if disabled && id == p.user_id {
            return Err(AuthError::Conflict(
                "cannot_disable_self",
                "you cannot disable your own account".into(),
            ));
        }
        let _changing = disabled.then(|| self.epochs.begin(id, Change::Password));
        let (u, revoked) = self.change_user(id, |txn, u| {
            if disabled && u.role == Role::Admin && u.active && !u.disabled {
                Self::ensure_another_admin_in(txn, id)?;
            }
            u.disabled = disabled;
            if disabled {
                Self::revoke_user_credentials(txn, id, Keep::Nothing)?;
            }
            // Disabling ends the keys for good (re-enabling gives back the
            // sign-in, not the keys); enabling finds none left unless the
            // account was disabled by an older version, whose keys end now
            // rather than come back after some restart.
            Self::revoke_user_keys(txn, id, |_| true)
        })?;
        self.forget_keys(&revoked);
        if disabled {
            self.sign_ins_ended(id, Tickets::End);
        }
        self.audit(
            AuditEvent::new(
                p.actor(),
                if disabled {
                    "user.disable"
                } else {
                    "user.enable"
                },
                Outcome::Success,
            )
            .target(username),
        );
        self.revocations.bump();
        Ok(UserView::of(id, &u))
    }

    /// Last resort for a locked-out user (`latchkey user reset-mfa` on the
    /// host, or an admin): removes TOTP and recovery codes and ends the
    /// user's sessions and tokens; they enroll again at next sign-in. Their
    /// API keys stay (they do not depend on the second factor; disable the
    /// user to end those too).
    pub fn reset_mfa(&self, p: &Principal, username: &str) -> Result<UserView, AuthError> {
        Self::require_admin(p)?;
        self.require_recent_auth(p)?;
        let (id, _) = self.user_by_name(username)?;
        let _changing = self.epochs.begin(id, Change::Password);
        let (u, _) = self.change_user(id, |txn, u| {
            u.totp = None;
            u.totp_pending = None;
            u.totp_last_step = None;
            u.recovery_hashes.clear();
            Self::revoke_user_credentials(txn, id, Keep::Nothing)
        })?;
        self.sign_ins_ended(id, Tickets::End);
        self.forget_locks(username)?;
        self.audit(AuditEvent::new(p.actor(), "mfa.reset", Outcome::Success).target(username));
        self.revocations.bump();
        Ok(UserView::of(id, &u))
    }
}
