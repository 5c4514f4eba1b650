//! The user's own account: changing the password, (re-)enrolling or
//! removing TOTP, new recovery codes.
//!
//! Invariants:
//!
//! - account events end credentials inside their own write transaction
//!   (through `revoke`): a password change ends every other session and
//!   every token; replacing or removing the second factor, or new recovery
//!   codes, end every sign-in but the caller's own;
//! - each such event holds the user's epoch for its whole duration
//!   (`auth::epoch`), so a sign-in in progress cannot finish with what it
//!   replaced;
//! - admins must keep a second factor.

use super::revoke::{Keep, Tickets};
use super::{Auth, EnrollmentView, Principal, Via};
use crate::audit::{AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::epoch::Change;
use crate::auth::recovery;
use crate::auth::scope::Role;
use crate::secrecy::SecretString;

impl Auth {
    pub fn change_password(
        &self,
        p: &Principal,
        current: &SecretString,
        new: &SecretString,
    ) -> Result<(), AuthError> {
        let attempt = self.admit_from(&p.username, None)?;
        let user = self.get_user(p.user_id)?;
        if !matches!(p.via, Via::Host)
            && !self
                .hasher
                .verify(current, &user.password_hash)
                .unwrap_or(false)
        {
            self.failed(
                attempt,
                &p.username,
                "password.change",
                "wrong_password",
                None,
            );
            return Err(AuthError::Unauthorized(
                "invalid_credentials",
                "the current password is wrong".into(),
            ));
        }
        // Proved nothing new about the account: earlier failures stay.
        self.release(attempt);
        let hash = self.checked_hash(new, &p.username)?;
        // Whoever knew the old password may hold a sign-in made with it:
        // every other session and every token ends with the change.
        let keep = Keep::session_of(p);
        let _changing = self.epochs.begin(p.user_id, Change::Password);
        let (_, ended) = self.change_user(p.user_id, |txn, u| {
            u.password_hash = hash;
            Self::revoke_user_credentials(txn, p.user_id, keep)
        })?;
        self.sign_ins_ended(p.user_id, Tickets::End);
        self.audit(
            AuditEvent::new(p.actor(), "password.change", Outcome::Success)
                .target(&p.username)
                .detail(format!("{ended} other session(s) and all tokens ended")),
        );
        self.revocations.bump();
        Ok(())
    }

    /// Starts (re-)enrollment of a TOTP secret; the current one keeps
    /// working until [`Auth::totp_confirm`].
    pub fn totp_begin(&self, p: &Principal) -> Result<EnrollmentView, AuthError> {
        self.require_recent_auth(p)?;
        let (sealed, view) = self.enrollment(p.user_id, &p.username)?;
        self.update_user(p.user_id, |u| {
            u.totp_pending = Some(sealed);
            Ok(())
        })?;
        // The answer carries a new TOTP secret: audited like any secret
        // handed out.
        self.audit(
            AuditEvent::new(p.actor(), "mfa.enroll_begin", Outcome::Success).target(&p.username),
        );
        Ok(view)
    }

    /// Confirms enrollment with a code from the new secret; returns new
    /// recovery codes when the user had none.
    pub fn totp_confirm(&self, p: &Principal, code: &str) -> Result<Vec<SecretString>, AuthError> {
        let user = self.get_user(p.user_id)?;
        let pending = user
            .totp_pending
            .clone()
            .ok_or(AuthError::NotFound("pending enrollment"))?;
        let mut probe = user.clone();
        probe.totp_last_step = None;
        let step = self.check_totp(p.user_id, &probe, &pending, code)?;
        let mut codes = Vec::new();
        // Replacing a factor ends sign-ins in progress with the old one.
        let _changing = user
            .totp
            .is_some()
            .then(|| self.epochs.begin(p.user_id, Change::SignIns));
        // Decided on the row as it is inside the write: a concurrent
        // confirmation of the same enrollment finds nothing pending.
        self.update_user(p.user_id, |u| {
            if u.totp_pending.as_deref() != Some(pending.as_slice()) {
                return Err(AuthError::NotFound("pending enrollment"));
            }
            if u.recovery_hashes.is_empty() {
                let (c, hashes) = recovery::generate();
                codes = c;
                u.recovery_hashes = hashes;
            }
            u.totp = u.totp_pending.take();
            u.totp_last_step = Some(step);
            Ok(())
        })?;
        self.audit(AuditEvent::new(p.actor(), "mfa.enroll", Outcome::Success).target(&p.username));
        if user.totp.is_some() {
            // A replaced authenticator may be in someone else's hands.
            self.end_other_sign_ins(p)?;
        }
        Ok(codes)
    }

    /// Turns the second factor off. Policy: admins must keep one (it guards
    /// every secret); users and guests may remove theirs after re-auth.
    pub fn totp_disable(&self, p: &Principal) -> Result<(), AuthError> {
        if p.role == Role::Admin {
            return Err(AuthError::Conflict(
                "mfa_required_for_role",
                "admins must keep a second factor; re-enroll instead".into(),
            ));
        }
        self.require_recent_auth(p)?;
        let keep = Keep::sign_in_of(p);
        let _changing = self.epochs.begin(p.user_id, Change::SignIns);
        self.change_user(p.user_id, |txn, u| {
            u.totp = None;
            u.totp_pending = None;
            u.totp_last_step = None;
            u.recovery_hashes.clear();
            Self::revoke_user_credentials(txn, p.user_id, keep)
        })?;
        self.sign_ins_ended(p.user_id, Tickets::Keep);
        self.audit(AuditEvent::new(p.actor(), "mfa.disable", Outcome::Success).target(&p.username));
        Ok(())
    }

    /// New recovery codes; the old set stops working, and so does every
    /// sign-in but this one (an old code may have made one).
    pub fn regenerate_recovery(&self, p: &Principal) -> Result<Vec<SecretString>, AuthError> {
        self.require_recent_auth(p)?;
        let (codes, hashes) = recovery::generate();
        let keep = Keep::sign_in_of(p);
        let _changing = self.epochs.begin(p.user_id, Change::SignIns);
        self.change_user(p.user_id, |txn, u| {
            u.recovery_hashes = hashes;
            Self::revoke_user_credentials(txn, p.user_id, keep)
        })?;
        self.sign_ins_ended(p.user_id, Tickets::Keep);
        self.audit(
            AuditEvent::new(p.actor(), "recovery_codes.regenerate", Outcome::Success)
                .target(&p.username),
        );
        Ok(codes)
    }
}
