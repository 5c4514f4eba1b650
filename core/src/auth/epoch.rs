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
//! Why it is airtight: an event bumps both before its write transaction
//! begins and again after it committed (or failed), and a stamp taken
//! while an event is in flight never holds. The store serialises write
//! transactions, so a session written before the event's transaction is
//! deleted by it, and one written after it sees a moved epoch — unless its
//! stamp was taken after the event ended, when every read it made saw the
//! event's commit. In memory only: after a restart no sign-in is in
//! progress.

use super::store::UserId;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A stamp of one epoch, taken before a credential is verified. `None`
/// was taken while an event was in flight and never holds.
pub type Stamp = Option<u64>;

/// What an account event voids; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Password steps and every sign-in in progress.
    Password,
    /// Sign-ins in progress; a password step may finish with a new factor.
    SignIns,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    password: u64,
    sign_in: u64,
    /// Events in flight, per epoch.
    password_busy: u32,
    sign_in_busy: u32,
}

/// The epochs of every user; see the module docs.
#[derive(Debug, Default)]
pub struct Epochs {
    users: Mutex<HashMap<UserId, State>>,
}

/// An account event in flight: ends it (the second bump) when dropped,
/// whether its transaction committed or failed.
#[must_use = "the event is in flight until this is dropped, after the commit"]
#[derive(Debug)]
pub struct Changing<'a> {
    epochs: &'a Epochs,
    user: UserId,
    change: Change,
}

impl Epochs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, State>> {
        // Every update leaves the map valid, so a poisoned lock is safe.
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The password epoch of `user`, stamped before a password is verified.
    pub fn password(&self, user: UserId) -> Stamp {
        let s = self.lock().get(&user).copied().unwrap_or_default();
        (s.password_busy == 0).then_some(s.password)
    }

    /// The sign-in epoch of `user`, stamped before a second factor (or a
    /// password that completes a sign-in alone) is verified.
    pub fn sign_in(&self, user: UserId) -> Stamp {
        let s = self.lock().get(&user).copied().unwrap_or_default();
        (s.sign_in_busy == 0).then_some(s.sign_in)
    }

    /// Whether no event voided the stamps since they were taken. Call
    /// inside the write transaction that creates the session.
    pub fn holds(&self, user: UserId, password: Stamp, sign_in: Stamp) -> bool {
        let s = self.lock().get(&user).copied().unwrap_or_default();
        password == Some(s.password) && sign_in == Some(s.sign_in)
    }

    /// Starts an account event of `user`; call before its write
    /// transaction begins and keep the guard until after the commit.
    pub fn begin(&self, user: UserId, change: Change) -> Changing<'_> {
        self.bump(user, change, true);
        Changing {
            epochs: self,
            user,
            change,
        }
    }

    fn bump(&self, user: UserId, change: Change, start: bool) {
        let mut users = self.lock();
        let s = users.entry(user).or_default();
        let busy = |b: &mut u32| {
            *b = if start {
                b.saturating_add(1)
            } else {
                b.saturating_sub(1)
            }
        };
        s.sign_in = s.sign_in.wrapping_add(1);
        busy(&mut s.sign_in_busy);
        if change == Change::Password {
            s.password = s.password.wrapping_add(1);
            busy(&mut s.password_busy);
        }
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.epochs.bump(self.user, self.change, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: UserId = UserId(7);

    #[test]
    fn a_stamp_holds_until_an_event() {
        let e = Epochs::new();
        let (p, s) = (e.password(U), e.sign_in(U));
        assert!(e.holds(U, p, s));
        assert!(e.holds(UserId(8), p, s), "other users are independent");
        drop(e.begin(U, Change::SignIns));
        assert!(!e.holds(U, p, s));
        // A second factor after a factor change: the password step holds.
        assert!(e.holds(U, p, e.sign_in(U)));
        drop(e.begin(U, Change::Password));
        assert!(!e.holds(U, p, e.sign_in(U)));
        assert!(e.holds(U, e.password(U), e.sign_in(U)));
    }

    #[test]
    fn stamps_taken_during_an_event_never_hold() {
        let e = Epochs::new();
        let a = e.begin(U, Change::Password);
        let b = e.begin(U, Change::SignIns);
        let (p, s) = (e.password(U), e.sign_in(U));
        assert_eq!((p, s), (None, None));
        drop(a);
        assert_eq!(e.sign_in(U), None, "one event still in flight");
        assert!(e.password(U).is_some());
        drop(b);
        assert!(!e.holds(U, p, s));
        assert!(e.holds(U, e.password(U), e.sign_in(U)));
    }

    #[test]
    fn concurrent_events_always_move_the_epoch() {
        let e = std::sync::Arc::new(Epochs::new());
        let (p, s) = (e.password(U), e.sign_in(U));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
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
                    let g = e.begin(U, change);
                    assert_eq!(e.sign_in(U), None);
                    drop(g);
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert!(!e.holds(U, p, s));
        assert!(e.holds(U, e.password(U), e.sign_in(U)));
    }
}
