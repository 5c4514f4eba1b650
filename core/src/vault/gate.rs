//! One passphrase key derivation at a time, and a global backoff after
//! wrong passphrases.
//!
//! Unsealing with a passphrase runs scrypt with 256 MiB of memory, and in
//! passphrase mode `POST /api/vault/unseal` is open to anyone who can reach
//! the server (the passphrase is the credential). Without a bound, sixteen
//! parallel guesses took the process from 38 MB to 4.1 GB. The gate makes
//! that impossible:
//!
//! - [`UnsealGate::enter`] admits one attempt at a time; a second one is
//!   refused at once ([`GateRefused::Busy`]), not queued, so memory stays at
//!   one derivation whatever the number of callers.
//! - After [`FREE_FAILURES`] consecutive wrong passphrases, every further
//!   anonymous attempt must wait: 1 s after the fourth, doubling to
//!   [`MAX_BACKOFF`] ([`GateRefused::Backoff`]); a success clears it. This
//!   is global, on top of the per-address limit of the auth routes, so
//!   guessing from many addresses is no faster. An administrator
//!   (the host's admin token, an admin session or key) skips the wait — a
//!   stranger's guesses cannot lock the owner out of their own vault — but
//!   not the one-at-a-time rule.
//!
//! Other passphrase derivations (init, rotate-master, backups with a
//! passphrase) take the same gate, so they share the one-derivation bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Wrong passphrases allowed in a row before the backoff starts.
pub const FREE_FAILURES: u32 = 3;
/// Longest wait between anonymous attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why an attempt was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRefused {
    /// Another derivation is running.
    Busy,
    /// Too many wrong passphrases lately; try again after this long.
    Backoff { retry_after: Duration },
}

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct UnsealGate {
    busy: AtomicBool,
    backoff: Mutex<Backoff>,
}

/// An admitted attempt; the gate opens again when it is dropped.
#[derive(Debug)]
pub struct Attempt<'a> {
    gate: &'a UnsealGate,
}

impl UnsealGate {
    /// Admits one attempt at `now`; `privileged` callers skip the backoff.
    pub fn enter(&self, now: Instant, privileged: bool) -> Result<Attempt<'_>, GateRefused> {
        if !privileged {
            let b = self.backoff.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(t) = b.not_before
                && t > now
            {
                return Err(GateRefused::Backoff {
                    retry_after: t - now,
                });
            }
        }
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| GateRefused::Busy)?;
        Ok(Attempt { gate: self })
    }

    /// Consecutive wrong passphrases so far.
    /// For administrators' own derivations (passphrase backups): waits
    /// up to `patience` for the gate instead of refusing at once, so an
    /// owner asking for several backups gets them one after another.
    /// Memory stays at one derivation; only authenticated admin requests
    /// wait here, on the blocking pool. Never subject to the backoff.
    pub fn enter_waiting(&self, patience: Duration) -> Result<Attempt<'_>, GateRefused> {
        let give_up = Instant::now() + patience;
        loop {
            match self.enter(Instant::now(), true) {
                Err(GateRefused::Busy) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    pub fn failures(&self) -> u32 {
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures
    }
}

/// The wait after `failures` consecutive wrong passphrases.
pub fn backoff_after(failures: u32) -> Duration {
    match failures.checked_sub(FREE_FAILURES) {
        None | Some(0) => Duration::ZERO,
        Some(n) => Duration::from_secs(1u64 << (n - 1).min(16)).min(MAX_BACKOFF),
    }
}

impl Attempt<'_> {
    /// The passphrase was wrong: counts towards the backoff.
    pub fn failed(self, now: Instant) {
        let mut b = self
            .gate
            .backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        b.failures = b.failures.saturating_add(1);
        let wait = backoff_after(b.failures);
        b.not_before = (!wait.is_zero()).then(|| now + wait);
    }

    /// The passphrase was right: the backoff ends.
    pub fn succeeded(self) {
        let mut b = self
            .gate
            .backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *b = Backoff::default();
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.gate.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_and_not_queued() {
        let g = UnsealGate::default();
        let now = Instant::now();
        let a = g.enter(now, false).expect("first");
        assert_eq!(g.enter(now, false).expect_err("busy"), GateRefused::Busy);
        assert_eq!(g.enter(now, true).expect_err("busy"), GateRefused::Busy);
        drop(a);
        g.enter(now, false).expect("open again");
    }

    #[test]
    fn administrators_wait_their_turn_within_their_patience() {
        let g = std::sync::Arc::new(UnsealGate::default());
        let held = g.enter(Instant::now(), false).expect("first");
        // Busy for longer than the patience: refused.
        assert_eq!(
            g.enter_waiting(Duration::from_millis(60))
                .expect_err("busy"),
            GateRefused::Busy
        );
        // Freed while waiting: admitted.
        let g2 = g.clone();
        let waiter = std::thread::spawn(move || {
            g2.enter_waiting(Duration::from_secs(10))
                .map(|_| ())
                .is_ok()
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        assert!(waiter.join().expect("join"));
    }

    #[test]
    fn backoff_grows_and_success_clears_it() {
        let g = UnsealGate::default();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            g.enter(t0, false).expect("free").failed(t0);
        }
        g.enter(t0, false).expect("fourth").failed(t0);
        match g.enter(t0, false) {
            Err(GateRefused::Backoff { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
        // Administrators are not locked out by strangers' guesses.
        g.enter(t0, true).expect("privileged").failed(t0);
        // Five failures: 2 s from the last one.
        assert!(matches!(
            g.enter(t0 + Duration::from_millis(1500), false),
            Err(GateRefused::Backoff { .. })
        ));
        let t1 = t0 + Duration::from_secs(2);
        g.enter(t1, false).expect("after the wait").succeeded();
        assert_eq!(g.failures(), 0);
        g.enter(t1, false).expect("cleared");
        assert_eq!(backoff_after(3), Duration::ZERO);
        assert_eq!(backoff_after(5), Duration::from_secs(2));
        assert_eq!(backoff_after(40), MAX_BACKOFF);
        assert_eq!(backoff_after(u32::MAX), MAX_BACKOFF);
    }
}
