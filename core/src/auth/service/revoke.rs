//! What account events end.
//!
//! The one place account events end credentials (docs/security, "What ends
//! a credential"): a password or second-factor change ends every other
//! sign-in; promotion to admin ends every sign-in; disabling ends every
//! sign-in and every key; a role change ends the keys whose scopes would
//! lie dormant or widen. Each runs inside the transaction of the account
//! change, so both commit or neither.
//!
//! Invariants:
//!
//! - account events end credentials inside their own write transaction
//!   ([`Auth::revoke_user_credentials`], [`Auth::revoke_user_keys`]);
//! - revocation reads the schema-v4 index (`auth::index`): key ranges, no
//!   table scans of sessions or tokens;
//! - a revoked family stays, marked, with its used refresh tokens, so a
//!   late replay is still recognised as reuse;
//! - after the commit, pending second steps end where the password step no
//!   longer proves anything, and the revocation epoch is bumped.

use super::{Auth, Principal, Via, now};
use crate::auth::AuthError;
use crate::auth::epoch::Change;
use crate::auth::index;
use crate::auth::scope::ScopeSet;
use crate::auth::store::{
    self as db, API_KEYS, ApiKeyRow, Family, REFRESH_FAMILIES, USERS, User, UserId,
};
use crate::store::WriteTxn;

/// Whether an account event ends the user's pending second steps: yes
/// when their password step no longer proves anything (password changed,
/// account disabled, promoted or reset); no after a second-factor change,
/// which a pending step still has to pass with the new factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tickets {
    End,
    Keep,
}

/// What of the caller's own sign-in an account event leaves standing.
#[derive(Debug, Clone, Copy)]
pub(super) enum Keep {
    Nothing,
    /// This session; its token families end with the rest.
    Session([u8; 32]),
    /// This session and the token families issued from it.
    SignIn([u8; 32]),
    /// The sign-in this token family came from: its session and families.
    SignInOfFamily(u128),
}

impl Keep {
    /// A password change: the session that made it stays, every token
    /// ends (programs holding one sign in again).
    pub(super) fn session_of(p: &Principal) -> Keep {
        match &p.via {
            Via::Session { hash, .. } => Keep::Session(*hash),
            _ => Keep::Nothing,
        }
    }

    /// A second-factor change: the threat is another sign-in made with
    /// the old factor, so the caller's own sign-in stays whole — its
    /// session, or the token family it is using.
    pub(super) fn sign_in_of(p: &Principal) -> Keep {
        match &p.via {
            Via::Session { hash, .. } => Keep::SignIn(*hash),
            Via::AccessToken { family_id } => Keep::SignInOfFamily(*family_id),
            Via::ApiKey { .. } | Via::Host => Keep::Nothing,
        }
    }
}

impl Auth {
    /// Runs `f` on user `id`'s row and commits the row with whatever `f`
    /// wrote in the same transaction.
    pub(super) fn change_user<R>(
        &self,
        id: UserId,
        f: impl FnOnce(&WriteTxn, &mut User) -> Result<R, AuthError>,
    ) -> Result<(User, R), AuthError> {
        let txn = self.store.begin_write()?;
        // An account event of this user in flight moves their epochs in
        // this very transaction (see `auth::epoch`).
        self.epochs.apply(&txn, id)?;
        let mut user: User =
            db::get(&txn.open_table(USERS)?, &id.key())?.ok_or(AuthError::NotFound("user"))?;
        let out = f(&txn, &mut user)?;
        user.updated_at = now();
        db::put(&txn, USERS, &id.key(), &user)?;
        txn.commit()?;
        self.forget_people();
        Ok((user, out))
    }

    /// Ends every sign-in of `user` but what `keep` names: its sessions,
    /// its refresh families (marked revoked, so a late replay is still
    /// recognised as reuse) with their unused refresh tokens, and its
    /// access tokens. How many sessions ended.
    pub(super) fn revoke_user_credentials(
        txn: &WriteTxn,
        user: UserId,
        keep: Keep,
    ) -> Result<usize, AuthError> {
        // Read through the schema-v4 index: key ranges, no table scans.
        let families = index::families_of_user(txn, user)?;
        let family_row = |id: u128| -> Result<Option<Family>, AuthError> {
            Ok(
                db::get::<Family>(&txn.open_table(REFRESH_FAMILIES)?, &id.to_be_bytes())?
                    .filter(|f| f.user_id == user),
            )
        };
        // The session that stays, and whether its families stay with it.
        let (kept_session, with_families) = match keep {
            Keep::Nothing => (None, false),
            Keep::Session(h) => (Some(h), false),
            Keep::SignIn(h) => (Some(h), true),
            Keep::SignInOfFamily(id) => (
                if families.contains(&id) {
                    family_row(id)?.map(|f| f.session_hash)
                } else {
                    None
                },
                true,
            ),
        };
        let mut ended = 0;
        for h in index::sessions_of(txn, user)? {
            if kept_session != Some(h) && index::delete_session(txn, &h)?.is_some() {
                ended += 1;
            }
        }
        for id in families {
            let Some(f) = family_row(id)? else { continue };
            if with_families && kept_session == Some(f.session_hash) {
                continue;
            }
            if !f.revoked {
                db::put(
                    txn,
                    REFRESH_FAMILIES,
                    &id.to_be_bytes(),
                    &Family { revoked: true, ..f },
                )?;
            }
            // Access tokens deleted, unused refresh tokens marked used (a
            // late replay is still recognised as reuse).
            Self::delete_family_tokens(txn, id)?;
        }
        Ok(ended)
    }

    /// Revokes the unrevoked keys of `user` whose scopes `ends` picks;
    /// their ids, to drop from the cache after the commit
    /// ([`Auth::forget_keys`]).
    pub(super) fn revoke_user_keys(
        txn: &WriteTxn,
        user: UserId,
        ends: impl Fn(&ScopeSet) -> bool,
    ) -> Result<Vec<String>, AuthError> {
        let rows: Vec<(Vec<u8>, ApiKeyRow)> = db::scan(&txn.open_table(API_KEYS)?)?;
        let t = now();
        let mut revoked = Vec::new();
        for (k, mut row) in rows {
            if row.user_id != user || row.revoked_at.is_some() {
                continue;
            }
            // A row whose scopes no longer parse ends too.
            if ScopeSet::parse(&row.scopes).map_or(true, |s| ends(&s)) {
                row.revoked_at = Some(t);
                db::put(txn, API_KEYS, &k, &row)?;
                revoked.push(String::from_utf8_lossy(&k).into_owned());
            }
        }
        Ok(revoked)
    }

    /// After a commit that ended sign-ins of `user`. With
    /// [`Tickets::End`] their pending second steps (MFA tickets) are
    /// deleted too. (A password step taken before a password change, a
    /// disable or a promotion could not be finished after it anyway: its
    /// ticket's password epoch no longer holds, see `auth::epoch`.)
    /// Open WebSockets and streams re-check their credential on the
    /// revocation epoch bumped here.
    pub(super) fn sign_ins_ended(&self, user: UserId, tickets: Tickets) {
        self.revocations.bump();
        if tickets == Tickets::End {
            let ended = self.store.begin_write().and_then(|txn| {
                crate::auth::state::end_tickets(&txn, user)?;
                txn.commit()
            });
            if let Err(e) = ended {
                tracing::warn!(error = %e, "could not delete ended MFA tickets; they expire unused");
            }
        }
    }

    /// Ends every sign-in of `p`'s user but the caller's own, in a
    /// transaction of its own.
    pub(super) fn end_other_sign_ins(&self, p: &Principal) -> Result<usize, AuthError> {
        let _changing = self.epochs.begin(p.user_id, Change::SignIns);
        let txn = self.store.begin_write()?;
        self.epochs.apply(&txn, p.user_id)?;
        let n = Self::revoke_user_credentials(&txn, p.user_id, Keep::sign_in_of(p))?;
        txn.commit()?;
        self.sign_ins_ended(p.user_id, Tickets::Keep);
        Ok(n)
    }
}
