//! Signing in: the password step, the MFA ticket it hands out, and the
//! second step (a TOTP code, a recovery code, or confirming the enrollment
//! an admin without a second factor must make).
//!
//! Invariants:
//!
//! - unknown users, wrong passwords and disabled accounts get the same
//!   answer after the same work, and count towards the same locks;
//! - admins never get a session without a second factor;
//! - an MFA ticket (in the store's `auth_state`, only its hash, so the
//!   second step may land on another replica) is single-use: of
//!   concurrent requests on one ticket, on any replica, exactly one takes
//!   it ([`Auth::take_ticket`]), and only after its code was verified, so a
//!   wrong code leaves it usable;
//! - the user's epochs are stamped before the row a credential is checked
//!   against is read, and re-checked when the session is written: an
//!   account event between the steps voids the sign-in (see `auth::epoch`).

use super::attempts::{Attempt, Source};
use super::{Auth, EnrollmentView, UserView, now, random_token};
use crate::audit::{AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::epoch::Stamp;
use crate::auth::recovery;
use crate::auth::scope::Role;
use crate::auth::state::{self, AUTH_STATE, TicketRow};
use crate::auth::store::{User, UserId, token_hash};
use crate::secrecy::{ExposeSecret, SecretString};
use std::net::IpAddr;

/// How long a password-verified login may take to present its second factor.
const MFA_TICKET_SECS: i64 = 300;

/// What a successful password step returns.
#[derive(Debug)]
pub enum LoginStep {
    MfaRequired {
        ticket: SecretString,
    },
    /// An admin without a second factor (after `reset-mfa`, or invited as
    /// admin): sign-in continues only by confirming this enrollment.
    EnrollRequired {
        ticket: SecretString,
        enrollment: EnrollmentView,
    },
    Done(NewSession),
}

/// A new browser session: the token goes into the cookie.
#[derive(Debug)]
pub struct NewSession {
    pub token: SecretString,
    pub user: UserView,
    pub expires_at: i64,
    /// Set when this sign-in completed a TOTP enrollment: shown once.
    pub recovery_codes: Vec<SecretString>,
}

impl Auth {
    /// The password step. Unknown users, wrong passwords and disabled
    /// accounts all get the same answer after the same work.
    pub fn login(
        &self,
        username: &str,
        password: &SecretString,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<LoginStep, AuthError> {
        self.login_with_device(username, password, ip, user_agent, None)
    }

    /// [`Auth::login`] from a browser that may hold a known-device cookie
    /// (`device`): a valid one of this account has its own lock and skips
    /// the account-wide throttle (see [`Source`]).
    pub fn login_with_device(
        &self,
        username: &str,
        password: &SecretString,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
        device: Option<&str>,
    ) -> Result<LoginStep, AuthError> {
        let bad =
            || AuthError::Unauthorized("invalid_credentials", "wrong username or password".into());
        let src = self.login_source(username, ip, device);
        let attempt = self.admit(username, &src)?;
        let Some((id, _)) = self.find_user(username)? else {
            let _ = self.hasher.verify_dummy(password);
            // Counted like any other failure: an unknown name locks after
            // the same attempts, or the 429 would reveal which names exist.
            self.failed(attempt, username, "login", "unknown_user", ip);
            return Err(bad());
        };
        // Stamped before the row the password is checked against is read:
        // an account event from here on voids this sign-in.
        let stamps = (self.epochs.password(id), self.epochs.sign_in(id));
        let user = self
            .get_user(id)
            .map_err(|_| AuthError::unauthenticated())?;
        let ok = self
            .hasher
            .verify(password, &user.password_hash)
            .unwrap_or(false);
        if !ok || user.disabled || !user.active {
            let reason = if !ok {
                "wrong_password"
            } else if user.disabled {
                "disabled"
            } else {
                "setup_unfinished"
            };
            self.failed(attempt, username, "login", reason, ip);
            return Err(bad());
        }
        if self.hasher.needs_rehash(&user.password_hash)
            && let Ok(h) = self.hasher.hash(password)
        {
            let _ = self.update_user(id, |u| {
                u.password_hash = h;
                Ok(())
            });
        }
        // The password proved itself; the second step, if any, is counted
        // on its own.
        if user.totp.is_some() || user.role == Role::Admin {
            self.release(attempt);
        } else {
            self.succeeded(attempt);
        }
        if user.totp.is_none() && user.role == Role::Admin {
            // Admins must have a second factor: enroll now, before any session.
            let (sealed, enrollment) = self.enrollment(id, &user.username)?;
            self.update_user(id, |u| {
                u.totp_pending = Some(sealed);
                Ok(())
            })?;
            let ticket = self.new_ticket(id, src.clone(), stamps.0)?;
            self.audit(
                AuditEvent::new(username, "login.password", Outcome::Success)
                    .ip(ip)
                    .detail("mfa_enrollment_required"),
            );
            return Ok(LoginStep::EnrollRequired { ticket, enrollment });
        }
        if user.totp.is_some() {
            let ticket = self.new_ticket(id, src.clone(), stamps.0)?;
            self.audit(AuditEvent::new(username, "login.password", Outcome::Success).ip(ip));
            return Ok(LoginStep::MfaRequired { ticket });
        }
        self.audit(AuditEvent::new(username, "login", Outcome::Success).ip(ip));
        Ok(LoginStep::Done(
            self.create_session(id, &user, stamps, ip, user_agent)?,
        ))
    }

    /// Completes the enrollment a ticket was issued with.
    #[allow(clippy::too_many_arguments)] // the ticket's context, passed through
    fn mfa_enroll(
        &self,
        ticket: &str,
        id: UserId,
        user: &User,
        code: Option<&str>,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
        attempt: Attempt,
        stamps: (Stamp, Stamp),
    ) -> Result<NewSession, AuthError> {
        let again = || AuthError::Unauthorized("invalid_ticket", "sign in again".into());
        let (Some(pending), Some(code)) = (user.totp_pending.clone(), code) else {
            self.release(attempt);
            return Err(if user.totp_pending.is_none() {
                again()
            } else {
                AuthError::Invalid {
                    field: "code",
                    reason: "confirm the new authenticator with a `code`".into(),
                }
            });
        };
        let mut probe = user.clone();
        probe.totp_last_step = None;
        let step = match self.check_totp(id, &probe, &pending, code) {
            Ok(s) => s,
            Err(e) => {
                self.failed(attempt, &user.username, "login.mfa", "invalid_code", ip);
                return Err(e);
            }
        };
        let (codes, hashes) = recovery::generate();
        // Checked again inside the write: a concurrent confirmation of the
        // same enrollment finds it gone and gets no second session.
        let taken = self.take_ticket(ticket, id).and_then(|()| {
            self.update_user(id, |u| {
                if u.totp.is_some() || u.totp_pending.as_deref() != Some(pending.as_slice()) {
                    return Err(again());
                }
                u.totp = u.totp_pending.take();
                u.totp_last_step = Some(step);
                u.recovery_hashes = hashes;
                Ok(())
            })
        });
        let user = match taken {
            Ok(u) => u,
            Err(e) => {
                // The code was right; a concurrent request won the ticket.
                self.release(attempt);
                return Err(e);
            }
        };
        self.succeeded(attempt);
        self.audit(AuditEvent::new(&user.username, "mfa.enroll", Outcome::Success).ip(ip));
        self.audit(
            AuditEvent::new(&user.username, "login", Outcome::Success)
                .ip(ip)
                .detail("totp_enrolled"),
        );
        let mut s = self.create_session(id, &user, stamps, ip, user_agent)?;
        s.recovery_codes = codes;
        Ok(s)
    }

    /// A new ticket for the second step, stored (as its hash) where every
    /// replica finds it.
    fn new_ticket(
        &self,
        id: UserId,
        source: Source,
        password_epoch: Stamp,
    ) -> Result<SecretString, AuthError> {
        let ticket = random_token("lkt_");
        let (source, known_device) = source.into_parts();
        let row = TicketRow {
            user_id: id,
            expires_at: now() + MFA_TICKET_SECS,
            source,
            known_device,
            password_epoch,
        };
        let txn = self.store.begin_write()?;
        state::put_ticket(&txn, &token_hash(ticket.expose_secret()), &row)?;
        txn.commit()?;
        Ok(ticket)
    }

    /// The user a live ticket was issued to, where its password step came
    /// from and its password-epoch stamp (the ticket stays).
    fn ticket_user(&self, ticket: &str) -> Result<(UserId, Source, Stamp), AuthError> {
        let txn = self.store.begin_read()?;
        let row = state::ticket(&txn.open_table(AUTH_STATE)?, &token_hash(ticket))?;
        match row {
            Some(v) if v.expires_at > now() => Ok((
                v.user_id,
                Source::from_parts(v.source, v.known_device),
                v.password_epoch,
            )),
            // An expired row goes with the next prune.
            _ => Err(Self::ticket_expired()),
        }
    }

    /// Consumes a ticket once its code has been verified: of concurrent
    /// requests on one ticket, on any replica, exactly one gets past this
    /// (the row is removed in a write transaction).
    fn take_ticket(&self, ticket: &str, id: UserId) -> Result<(), AuthError> {
        let txn = self.store.begin_write()?;
        let row = state::take_ticket(&txn, &token_hash(ticket))?;
        txn.commit()?;
        match row {
            Some(v) if v.expires_at > now() && v.user_id == id => Ok(()),
            _ => Err(Self::ticket_expired()),
        }
    }

    fn ticket_expired() -> AuthError {
        AuthError::Unauthorized(
            "invalid_ticket",
            "the login step expired or is unknown; sign in again".into(),
        )
    }

    /// The second step: a TOTP code or a recovery code for a ticket.
    ///
    /// Cheap checks and the code's verification come first, so a wrong
    /// code leaves the ticket usable; then the ticket is taken and the
    /// code consumed, each atomically, so concurrent requests with one
    /// ticket or one code yield one session.
    pub fn mfa(
        &self,
        ticket: &str,
        code: Option<&str>,
        recovery_code: Option<&str>,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<NewSession, AuthError> {
        let (id, src, password_epoch) = self.ticket_user(ticket)?;
        // Stamped before the row the code is checked against is read.
        let stamps = (password_epoch, self.epochs.sign_in(id));
        let user = self.get_user(id)?;
        if user.totp.is_some() && code.is_some() == recovery_code.is_some() {
            return Err(AuthError::Invalid {
                field: "code",
                reason: "send exactly one of `code` or `recovery_code`".into(),
            });
        }
        let attempt = self.admit(&user.username, &src)?;
        if user.totp.is_none() {
            return self.mfa_enroll(ticket, id, &user, code, ip, user_agent, attempt, stamps);
        }
        let sealed = user.totp.clone().ok_or_else(Self::ticket_expired)?;
        let result = match (code, recovery_code) {
            (Some(c), None) => self
                .check_totp(id, &user, &sealed, c)
                .and_then(|step| {
                    self.take_ticket(ticket, id)?;
                    self.consume_totp_step(id, &sealed, step)
                })
                .map(|u| (u, "totp")),
            (None, Some(r)) => {
                // A dry run first, so a wrong code does not burn the ticket.
                let mut probe = user.recovery_hashes.clone();
                if recovery::find_and_consume(r, &mut probe) {
                    self.take_ticket(ticket, id)
                        .and_then(|()| self.consume_recovery_code(id, r))
                        .map(|u| (u, "recovery_code"))
                } else {
                    Err(Self::invalid_recovery_code())
                }
            }
            _ => Err(AuthError::Invalid {
                field: "code",
                reason: "send exactly one of `code` or `recovery_code`".into(),
            }),
        };
        match result {
            Ok((user, how)) => {
                if how == "recovery_code" {
                    self.audit(
                        AuditEvent::new(&user.username, "recovery_code.use", Outcome::Success)
                            .ip(ip),
                    );
                }
                self.succeeded(attempt);
                self.audit(
                    AuditEvent::new(&user.username, "login", Outcome::Success)
                        .ip(ip)
                        .detail(how),
                );
                self.create_session(id, &user, stamps, ip, user_agent)
            }
            Err(e) => {
                let reason = match &e {
                    AuthError::Unauthorized(code, _) => *code,
                    AuthError::Invalid { .. } => {
                        self.release(attempt);
                        return Err(e);
                    }
                    _ => "invalid",
                };
                self.failed(attempt, &user.username, "login.mfa", reason, ip);
                Err(e)
            }
        }
    }
}
