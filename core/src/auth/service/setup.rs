//! First-run setup: the owner's account, from the web wizard (a one-time
//! setup token, then a TOTP confirmation) or from `latchkey setup` on the
//! host.
//!
//! Invariants:
//!
//! - every setup step — issuing the token, the wizard's two steps,
//!   `latchkey setup` — holds the deployment's setup lock
//!   (`Store::lock_shared`: in-process, then a PostgreSQL advisory lock
//!   every replica shares) from before it reads anything until it is done,
//!   so the steps of two wizards on two replicas never interleave: each
//!   reads what the other's last step wrote;
//! - the setup token (in the store's `auth_state`, only its hash, one for
//!   the whole deployment) is checked at the start of each wizard step,
//!   under that lock; it ends, still under it, once an owner is confirmed
//!   (or made by `latchkey setup`);
//! - the owner is activated in one write transaction that re-reads that
//!   nobody is active yet and that the enrollment is the one the code was
//!   checked against;
//! - while nobody is active, inactive rows are only leftovers of earlier
//!   attempts, and a later setup replaces them: of two wizards begun at
//!   once the later one's account is the one that can be confirmed, and
//!   the other's confirmation is refused with `setup_replaced`.

use super::{Auth, EnrollmentView, NewSession, UserView, expiry, now, random_token};
use crate::audit::{AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::recovery;
use crate::auth::scope::Role;
use crate::auth::state::{self, AUTH_STATE};
use crate::auth::store::{self as db, USERS, User, UserId, token_hash};
use crate::secrecy::{ExposeSecret, SecretString};
use crate::store::SharedLock;
use std::net::IpAddr;

/// The name of the lock every setup step holds (see the module docs).
const SETUP_LOCK: &str = "auth:setup";

impl Auth {
    /// While no owner exists: a fresh one-time setup token (the previous one
    /// stops working, on every replica: there is one for the deployment).
    /// `None` once an owner exists.
    pub fn issue_setup_token(&self) -> Result<Option<SecretString>, AuthError> {
        // Not while another replica's wizard confirms its owner: after it,
        // so an owner that exists now is seen and no token outlives it.
        let _setup = self.setup_lock()?;
        if self.user_count()? > 0 {
            return Ok(None);
        }
        let token = random_token("lku_");
        let expires = expiry(now(), self.settings.setup_token_lifetime);
        let txn = self.store.begin_write()?;
        state::put_setup(&txn, &token_hash(token.expose_secret()), expires)?;
        txn.commit()?;
        Ok(Some(token))
    }

    /// Ends the setup token: an owner exists. A token left behind by a
    /// failed write is harmless (every setup step refuses once an owner is
    /// active, and pruning deletes it when it expires), so the owner's
    /// setup does not fail for it.
    fn end_setup_token(&self) {
        let ended = self.store.begin_write().and_then(|txn| {
            state::end_setup(&txn)?;
            txn.commit()
        });
        if let Err(e) = ended {
            tracing::warn!(error = %e, "could not delete the used setup token; it expires unused");
        }
    }

    /// Holds the deployment's setup lock until dropped: setup steps run
    /// one at a time across every process sharing the store. Waiting is
    /// bounded by `store.timeout` (an error naming the lock after it).
    /// Called on a blocking thread, as every `Auth` method is.
    fn setup_lock(&self) -> Result<SharedLock, AuthError> {
        Ok(futures_executor::block_on(
            self.store.lock_shared(SETUP_LOCK),
        )?)
    }

    /// Takes the setup lock and checks `token` against the setup token,
    /// for one whole setup step (see the module docs); the owner's
    /// activation also re-checks in its own write transaction that nobody
    /// is active.
    fn setup_guard(&self, token: &str) -> Result<SharedLock, AuthError> {
        let guard = self.setup_lock()?;
        // Looked up by its hash (as sessions are): nothing about the
        // stored token leaks through the lookup's timing.
        let expires = {
            let txn = self.store.begin_read()?;
            state::setup_expiry(&txn.open_table(AUTH_STATE)?, &token_hash(token))?
        };
        if expires.is_none_or(|e| now() >= e) {
            // Whether an owner exists is public (`GET /api/setup`): say so,
            // rather than sending them to restart for a link they no longer
            // need (the loser of two wizards confirming at once sees this).
            let why = if self.user_count()? > 0 {
                "the setup link is used: an owner exists now; sign in instead"
            } else {
                "the setup link is invalid, used or expired; restart `latchkey serve` for a new one"
            };
            return Err(AuthError::Forbidden("invalid_setup_token", why.into()));
        }
        Ok(guard)
    }

    /// Step 1 of web setup: creates the (inactive) owner and returns the
    /// TOTP enrollment to confirm.
    pub fn setup_begin(
        &self,
        token: &str,
        username: &str,
        password: &SecretString,
    ) -> Result<EnrollmentView, AuthError> {
        let _setup = self.setup_guard(token)?;
        if self.user_count()? > 0 {
            return Err(AuthError::Conflict(
                "already_set_up",
                "an owner already exists".into(),
            ));
        }
        let mut user = self.new_user(username, password, Role::Admin)?;
        user.active = false;
        // A retried setup (the wizard's "Back", or a reload) replaces every
        // earlier unconfirmed owner, whatever name it chose: while nobody is
        // active, inactive rows can only be such leftovers, and one left
        // behind would hold its username forever.
        let leftovers: Vec<(UserId, String)> = {
            let txn = self.store.begin_read()?;
            db::scan::<User>(&txn.open_table(USERS)?)?
                .into_iter()
                .filter(|(_, u)| !u.active)
                .filter_map(|(k, u)| UserId::from_key(&k).map(|id| (id, u.username)))
                .collect()
        };
        for (old, name) in leftovers {
            self.delete_user_rows(old, &name)?;
        }
        let id = self.insert_user(user)?;
        let (sealed, view) = self.enrollment(id, username)?;
        self.update_user(id, |u| {
            u.totp_pending = Some(sealed);
            Ok(())
        })?;
        Ok(view)
    }

    /// Step 2 of web setup: a valid code activates the owner; the recovery
    /// codes are returned once.
    pub fn setup_confirm(
        &self,
        token: &str,
        username: &str,
        code: &str,
        ip: Option<IpAddr>,
    ) -> Result<(UserView, Vec<SecretString>), AuthError> {
        let setup = self.setup_guard(token)?;
        let (id, user) = match self.find_user(username)? {
            Some((_, u)) if u.active => {
                return Err(AuthError::Conflict(
                    "already_set_up",
                    "an owner already exists".into(),
                ));
            }
            Some(found) => found,
            // Another setup began after this one and replaced its account
            // (or none was begun under this name).
            None => {
                return Err(AuthError::Conflict(
                    "setup_replaced",
                    format!(
                        "no setup of `{username}` is in progress: a setup begun later (in another \
                         window, or on another server of this deployment) replaced it; start again \
                         from the setup link"
                    ),
                ));
            }
        };
        let pending = user
            .totp_pending
            .clone()
            .ok_or(AuthError::NotFound("pending enrollment"))?;
        let step = self.check_totp(id, &user, &pending, code)?;
        let (codes, hashes) = recovery::generate();
        // One write decides: nobody is active yet, and this is still the
        // enrollment the code was checked against.
        let txn = self.store.begin_write()?;
        let active = db::scan::<User>(&txn.open_table(USERS)?)?
            .iter()
            .any(|(_, u)| u.active);
        if active {
            return Err(AuthError::Conflict(
                "already_set_up",
                "an owner already exists".into(),
            ));
        }
        let mut user: User =
            db::get(&txn.open_table(USERS)?, &id.key())?.ok_or(AuthError::NotFound("user"))?;
        if user.active || user.totp_pending.as_deref() != Some(pending.as_slice()) {
            return Err(AuthError::NotFound("pending owner"));
        }
        user.totp = user.totp_pending.take();
        user.totp_last_step = Some(step);
        user.recovery_hashes = hashes;
        user.active = true;
        user.updated_at = now();
        db::put(&txn, USERS, &id.key(), &user)?;
        txn.commit()?;
        self.forget_people();
        self.end_setup_token();
        drop(setup);
        self.audit(AuditEvent::new(username, "setup.complete", Outcome::Success).ip(ip));
        Ok((UserView::of(id, &user), codes))
    }

    /// [`Auth::setup_confirm`], then the owner's first session: setup
    /// proved the password and a TOTP code, so the browser is signed in.
    pub fn setup_confirm_and_sign_in(
        &self,
        token: &str,
        username: &str,
        code: &str,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<(UserView, Vec<SecretString>, NewSession), AuthError> {
        let (view, codes) = self.setup_confirm(token, username, code, ip)?;
        let (id, _) = self.user_by_name(username)?;
        let stamps = (self.epochs.password(id), self.epochs.sign_in(id));
        let user = self.get_user(id)?;
        let session = self.create_session(id, &user, stamps, ip, user_agent)?;
        Ok((view, codes, session))
    }

    /// `latchkey setup` on the host: the owner is active at once (whoever
    /// runs it controls the machine); the URI and codes go to the terminal.
    pub fn setup_host(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<(UserView, EnrollmentView, Vec<SecretString>), AuthError> {
        let _setup = self.setup_lock()?;
        if self.user_count()? > 0 {
            return Err(AuthError::Conflict(
                "already_set_up",
                "an owner already exists".into(),
            ));
        }
        if let Some((old, u)) = self.find_user(username)?
            && !u.active
        {
            self.delete_user_rows(old, &u.username)?;
        }
        let user = self.new_user(username, password, Role::Admin)?;
        let id = self.insert_user(user)?;
        let (sealed, view) = self.enrollment(id, username)?;
        let (codes, hashes) = recovery::generate();
        let user = self.update_user(id, |u| {
            u.totp = Some(sealed);
            u.recovery_hashes = hashes;
            Ok(())
        })?;
        self.end_setup_token();
        self.audit(AuditEvent::new("host", "setup.complete", Outcome::Success).target(username));
        Ok((UserView::of(id, &user), view, codes))
    }
}
