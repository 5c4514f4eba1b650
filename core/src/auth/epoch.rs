//! Per-user credential epochs: what a sign-in in progress re-checks
//! before its session is written.
//!
//! A sign-in is several steps, each committed on its own: the password is
//! verified, a TOTP step or recovery code is consumed, then the session is
//! written. An account event that ends sign-ins (a password change, new
//! recovery codes, a disable…) can commit between those steps; the
//! revocation then finds no session to delete, and the sign-in writes one
//! made with the credential that was just replaced.
//!
//! So every such event bumps the user's epochs, and every sign-in stamps
//! the epochs *before* it verifies a credential and compares the stamps
//! inside the write transaction that creates the session
//! ([`Epochs::holds`]). Two epochs, because the events differ in what
//! they void:
//!
//! - the **password** epoch: events after which a password step no longer
//!   proves anything (password change, disable, promotion, second-factor
//!   reset). The password step's stamp travels in the MFA ticket.
//! - the **sign-in** epoch: every event that ends other sign-ins (also a
//!   second-factor change, new recovery codes, "sign out everywhere"). A
//!   second step stamps it before verifying its code, so a pending ticket
//!   can still finish with the *new* factor after a TOTP change.
//!
//! Why it is airtight: the epochs live in the store (`auth::state`), and
//! an event bumps them *inside its own write transaction* — the one that
//! ends the credentials ([`Epochs::apply`], called by every transaction
//! that changes a user while an event of theirs is in flight). The store
//! serialises write transactions across every replica, so a session
//! written before the event's transaction is deleted by it, and one
//! written after it sees the moved epoch — unless its stamp was read after
//! the event committed, when every read it made since saw the event's
//! commit too. A stamp that cannot be read (a store error) is `None` and
//! never holds.
//!
//! In memory is only which events are in flight in this process
//! ([`Epochs::begin`]), so the transactions they run know what to bump.

use super::state::{self, AUTH_STATE};
use super::store::UserId;
use crate::store::{Store, StoreError, WriteTxn};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A stamp of one epoch, taken before a credential is verified. `None`
/// could not be read and never holds.
pub type Stamp = Option<u64>;

/// What an account event voids; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Password steps and every sign-in in progress.
    Password,
    /// Sign-ins in progress; a password step may finish with a new factor.
    SignIns,
}

/// Events in flight for one user in this process, per epoch.
#[derive(Debug, Default, Clone, Copy)]
struct Busy {
    password: u32,
    sign_in: u32,
}

/// The epochs of every user; see the module docs.
#[derive(Debug)]
pub struct Epochs {
    store: Arc<Store>,
    busy: Mutex<HashMap<UserId, Busy>>,
}

/// An account event in flight: the transactions that change its user
/// bump the epochs until this is dropped, after the commit.
#[must_use = "the event is in flight until this is dropped, after the commit"]
#[derive(Debug)]
pub struct Changing<'a> {
    epochs: &'a Epochs,
    user: UserId,
    change: Change,
}

impl Epochs {
    pub fn new(store: Arc<Store>) -> Self {
        Epochs {
            store,
            busy: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, Busy>> {
        // Every update leaves the map valid, so a poisoned lock is safe.
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self, user: UserId) -> Option<(u64, u64)> {
        let read = || -> Result<(u64, u64), StoreError> {
            let txn = self.store.begin_read()?;
            state::epochs(&txn.open_table(AUTH_STATE)?, user)
        };
        read()
            .map_err(|e| {
                tracing::warn!(error = %e, "could not read credential epochs; the sign-in will not complete");
            })
            .ok()
    }

    /// The password epoch of `user`, stamped before a password is verified.
    pub fn password(&self, user: UserId) -> Stamp {
        self.read(user).map(|e| e.0)
    }

    /// The sign-in epoch of `user`, stamped before a second factor (or a
    /// password that completes a sign-in alone) is verified.
    pub fn sign_in(&self, user: UserId) -> Stamp {
        self.read(user).map(|e| e.1)
    }

    /// Whether no event voided the stamps since they were taken, read in
    /// `txn`: the write transaction that creates the session.
    pub fn holds(
        &self,
        txn: &WriteTxn,
        user: UserId,
        password: Stamp,
        sign_in: Stamp,
    ) -> Result<bool, StoreError> {
        let now = state::epochs(&txn.open_table(AUTH_STATE)?, user)?;
        Ok(password == Some(now.0) && sign_in == Some(now.1))
    }

    /// Starts an account event of `user`; call before its write
    /// transaction begins and keep the guard until after the commit.
    pub fn begin(&self, user: UserId, change: Change) -> Changing<'_> {
        let mut busy = self.lock();
        let b = busy.entry(user).or_default();
        b.sign_in = b.sign_in.saturating_add(1);
        if change == Change::Password {
            b.password = b.password.saturating_add(1);
        }
        Changing {
            epochs: self,
            user,
            change,
        }
    }

    /// Bumps `user`'s epochs in `txn` if an event of theirs is in flight
    /// here: what every transaction that changes a user calls, so the
    /// event's own transaction moves the epochs it commits with. (A
    /// transaction of the same user that merely overlaps the event bumps
    /// too: it can only void a sign-in the event voids anyway.)
    pub fn apply(&self, txn: &WriteTxn, user: UserId) -> Result<(), StoreError> {
        let Some(b) = self.lock().get(&user).copied() else {
            return Ok(());
        };
        let (mut password, mut sign_in) = state::epochs(&txn.open_table(AUTH_STATE)?, user)?;
        if b.sign_in > 0 {
            sign_in = sign_in.wrapping_add(1);
        }
        if b.password > 0 {
            password = password.wrapping_add(1);
        }
        state::put_epochs(txn, user, (password, sign_in))
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        let mut busy = self.epochs.lock();
        if let Some(b) = busy.get_mut(&self.user) {
            b.sign_in = b.sign_in.saturating_sub(1);
            if self.change == Change::Password {
                b.password = b.password.saturating_sub(1);
            }
            if b.sign_in == 0 && b.password == 0 {
                busy.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const U: UserId = UserId(7);

    fn epochs() -> (tempfile::TempDir, Epochs) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "test").unwrap();
        (dir, Epochs::new(store))
    }

    /// One event's transaction, committed, then the event ends.
    fn event(e: &Epochs, user: UserId, change: Change) {
        let g = e.begin(user, change);
        let txn = e.store.begin_write().unwrap();
        e.apply(&txn, user).unwrap();
        txn.commit().unwrap();
        drop(g);
    }

    fn holds(e: &Epochs, user: UserId, p: Stamp, s: Stamp) -> bool {
        let txn = e.store.begin_write().unwrap();
        e.holds(&txn, user, p, s).unwrap()
    }

    #[test]
    fn a_stamp_holds_until_an_event() {
        let (_d, e) = epochs();
        let (p, s) = (e.password(U), e.sign_in(U));
        assert!(holds(&e, U, p, s));
        event(&e, UserId(8), Change::Password);
        assert!(holds(&e, U, p, s), "other users are independent");
        event(&e, U, Change::SignIns);
        assert!(!holds(&e, U, p, s));
        // A second factor after a factor change: the password step holds.
        assert!(holds(&e, U, p, e.sign_in(U)));
        event(&e, U, Change::Password);
        assert!(!holds(&e, U, p, e.sign_in(U)));
        assert!(holds(&e, U, e.password(U), e.sign_in(U)));
    }

    #[test]
    fn only_a_transaction_of_an_event_in_flight_moves_the_epochs() {
        let (_d, e) = epochs();
        let (p, s) = (e.password(U), e.sign_in(U));
        // A transaction with no event of this user in flight: no bump.
        let txn = e.store.begin_write().unwrap();
        e.apply(&txn, U).unwrap();
        txn.commit().unwrap();
        assert!(holds(&e, U, p, s));
        // An event whose transaction was dropped uncommitted moved nothing
        // either: its credentials did not change.
        let g = e.begin(U, Change::Password);
        let txn = e.store.begin_write().unwrap();
        e.apply(&txn, U).unwrap();
        drop(txn);
        drop(g);
        assert!(holds(&e, U, p, s));
        // The stamp is read from the store: another process sharing it
        // (here, a second `Epochs` on the same store) sees the bump.
        let other = Epochs::new(Arc::clone(&e.store));
        event(&other, U, Change::SignIns);
        assert!(!holds(&e, U, p, s));
        assert_eq!(e.password(U), p);
    }

    #[test]
    fn concurrent_events_always_move_the_epoch() {
        let (_d, e) = epochs();
        let e = Arc::new(e);
        let (p, s) = (e.password(U), e.sign_in(U));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (e, barrier) = (e.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let change = if i % 2 == 0 {
                        Change::Password
                    } else {
                        Change::SignIns
                    };
                    event(&e, U, change);
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert!(!holds(&e, U, p, s));
        assert!(p.is_some_and(|p| e.password(U).is_some_and(|now| now >= p + 4)));
        assert!(holds(&e, U, e.password(U), e.sign_in(U)));
        assert!(e.lock().is_empty(), "nothing left in flight");
    }
}
