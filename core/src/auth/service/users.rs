//! User rows: looking users up, creating and updating them, the username
//! rule and the password policy.
//!
//! Invariants:
//!
//! - a username is taken once, case-folded (`usernames` maps it to the id),
//!   checked in the transaction that inserts the user;
//! - the password policy is applied and argon2 run before any write
//!   transaction begins (it is slow on purpose);
//! - after every committed change to `users` the cache of people is
//!   emptied ([`Auth::forget_people`]), so the next request reads the row.

use super::{Auth, UserView, now};
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::scope::Role;
use crate::auth::store::{self as db, USERNAMES, USERS, User, UserId, username_key};
use crate::secrecy::{ExposeSecret, SecretString};
use crate::store::WriteTxn;

impl Auth {
    pub fn user_count(&self) -> Result<usize, AuthError> {
        let txn = self.store.begin_read()?;
        Ok(db::scan::<User>(&txn.open_table(USERS)?)?
            .iter()
            .filter(|(_, u)| u.active)
            .count())
    }

    pub fn get_user(&self, id: UserId) -> Result<User, AuthError> {
        let txn = self.store.begin_read()?;
        db::get(&txn.open_table(USERS)?, &id.key())?.ok_or(AuthError::NotFound("user"))
    }

    pub fn find_user(&self, username: &str) -> Result<Option<(UserId, User)>, AuthError> {
        let txn = self.store.begin_read()?;
        let names = txn.open_table(USERNAMES)?;
        let Some(id) = names.get(username_key(username).as_bytes())? else {
            return Ok(None);
        };
        let id = UserId::from_key(id.value())
            .ok_or_else(|| AuthError::Internal("bad user id".into()))?;
        let user = db::get(&txn.open_table(USERS)?, &id.key())?;
        Ok(user.map(|u| (id, u)))
    }

    pub fn list_users(&self) -> Result<Vec<UserView>, AuthError> {
        let txn = self.store.begin_read()?;
        let mut out: Vec<UserView> = db::scan::<User>(&txn.open_table(USERS)?)?
            .into_iter()
            .filter_map(|(k, u)| UserId::from_key(&k).map(|id| UserView::of(id, &u)))
            .collect();
        out.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(out)
    }

    pub(super) fn validate_username(name: &str) -> Result<(), AuthError> {
        let ok = (1..=64).contains(&name.chars().count())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if ok {
            Ok(())
        } else {
            Err(AuthError::Invalid {
                field: "username",
                reason: "1 to 64 characters: letters, digits, `.`, `_`, `-`, `@`, starting with a letter or digit".into(),
            })
        }
    }

    /// Creates a user row (password already checked and hashed).
    pub(super) fn insert_user(&self, user: User) -> Result<UserId, AuthError> {
        let id = UserId::random();
        let txn = self.store.begin_write()?;
        Self::insert_user_in(&txn, id, &user)?;
        txn.commit()?;
        self.forget_people();
        Ok(id)
    }

    /// Inserts `user` as `id` in `txn`, refusing a taken username; the
    /// caller commits (and then calls `forget_people`).
    pub(super) fn insert_user_in(txn: &WriteTxn, id: UserId, user: &User) -> Result<(), AuthError> {
        {
            let mut names = txn.open_table(USERNAMES)?;
            let key = username_key(&user.username);
            if names.get(key.as_bytes())?.is_some() {
                return Err(Self::username_taken(&user.username));
            }
            names.insert(key.as_bytes(), id.key().as_slice())?;
        }
        db::put(txn, USERS, &id.key(), user)?;
        audit::append_in(
            txn,
            AuditEvent::new("system", "user.create", Outcome::Success)
                .target(&user.username)
                .detail(user.role.as_str()),
        )?;
        Ok(())
    }

    pub(super) fn update_user(
        &self,
        id: UserId,
        f: impl FnOnce(&mut User) -> Result<(), AuthError>,
    ) -> Result<User, AuthError> {
        let txn = self.store.begin_write()?;
        // As in `change_user`: an event in flight bumps in this transaction.
        self.epochs.apply(&txn, id)?;
        let mut user: User =
            db::get(&txn.open_table(USERS)?, &id.key())?.ok_or(AuthError::NotFound("user"))?;
        f(&mut user)?;
        user.updated_at = now();
        db::put(&txn, USERS, &id.key(), &user)?;
        txn.commit()?;
        self.forget_people();
        Ok(user)
    }

    pub(super) fn new_user(
        &self,
        username: &str,
        password: &SecretString,
        role: Role,
    ) -> Result<User, AuthError> {
        Self::validate_username(username)?;
        let hash = self.checked_hash(password, username)?;
        let t = now();
        Ok(User {
            username: username.to_string(),
            role,
            password_hash: hash,
            totp: None,
            totp_pending: None,
            totp_last_step: None,
            recovery_hashes: Vec::new(),
            disabled: false,
            active: true,
            created_at: t,
            updated_at: t,
        })
    }

    /// Applies the password policy, then hashes (argon2id: slow on purpose).
    pub(super) fn checked_hash(
        &self,
        password: &SecretString,
        username: &str,
    ) -> Result<String, AuthError> {
        self.policy
            .check(password.expose_secret(), username)
            .map_err(|e| AuthError::Invalid {
                field: "password",
                reason: e.to_string(),
            })?;
        self.hasher
            .hash(password)
            .map_err(|e| AuthError::Internal(e.to_string()))
    }

    pub(super) fn delete_user_rows(&self, id: UserId, username: &str) -> Result<(), AuthError> {
        let txn = self.store.begin_write()?;
        db::delete(&txn, USERS, &id.key())?;
        db::delete(&txn, USERNAMES, username_key(username).as_bytes())?;
        txn.commit()?;
        self.forget_people();
        Ok(())
    }

    pub(super) fn username_taken(username: &str) -> AuthError {
        AuthError::Conflict(
            "username_taken",
            format!("the username `{username}` is taken"),
        )
    }

    pub(super) fn user_by_name(&self, username: &str) -> Result<(UserId, User), AuthError> {
        self.find_user(username)?.ok_or(AuthError::NotFound("user"))
    }
}
