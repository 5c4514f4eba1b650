//! Credential attempts and where they come from: every password, TOTP or
//! recovery-code check is admitted here before it runs, and ends as
//! failed, succeeded or released. Also the known-device cookie.
//!
//! Invariants:
//!
//! - an attempt is checked against its source's lock (and, unless from a
//!   known device, the account-wide throttle) and counted in one step,
//!   before the credential is verified: of concurrent attempts, at most the
//!   threshold are ever verified;
//! - locks are per (account, source); a known device has its own lock and
//!   skips the account-wide throttle, so guessing from elsewhere never
//!   keeps the owner's own browser out;
//! - the account is keyed whether or not it exists, so a lock never
//!   reveals which names do;
//! - lockout counters and throttle buckets live in the store
//!   (`auth::state`), read, decided and written in one write transaction:
//!   failures from any replica count towards the same lock.

use super::{Auth, now};
use crate::audit::{AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::lockout::{self, LockState};
use crate::auth::ratelimit;
use crate::auth::state;
use crate::auth::store::username_key;
use std::net::IpAddr;
use std::time::Duration;

/// How long a known-device cookie is honoured after the sign-in that set it.
pub const DEVICE_LIFETIME: Duration = Duration::from_secs(90 * 86400);

/// Where a sign-in attempt comes from, for lockout: a client address, or
/// a device that completed a sign-in to this very account before (see
/// [`Auth::device_cookie`]). A known device has its own lock and is not
/// slowed by the account-wide throttle, so guessing from elsewhere never
/// keeps the owner's own browser out.
#[derive(Debug, Clone)]
pub(super) struct Source {
    key: String,
    known_device: bool,
}

impl Source {
    /// The source as a ticket stores it: its lockout key and whether it is
    /// a known device.
    pub(super) fn into_parts(self) -> (String, bool) {
        (self.key, self.known_device)
    }

    /// The source a stored ticket names (see [`Source::into_parts`]).
    pub(super) fn from_parts(key: String, known_device: bool) -> Source {
        Source { key, known_device }
    }
}

/// A credential attempt admitted by `Auth::admit`: counted against its
/// source's lock (and the account's throttle) from before its
/// verification until it ends.
#[must_use = "an attempt ends as failed, succeeded or released"]
#[derive(Debug)]
pub(super) struct Attempt {
    source_key: String,
    /// This attempt's reservation set the source's lock.
    locked_now: bool,
    known_device: bool,
    /// The throttle key, unless from a known device, and whether this
    /// reservation filled the bucket.
    throttle: Option<(String, bool)>,
}

impl Auth {
    pub(super) fn lock_key(username: &str) -> String {
        username_key(username)
    }

    /// An attempt from a client address (an IPv6 /64 as one, like the
    /// rate limit), or `-` when there is none (the CLI on the host, or a
    /// caller that passes none).
    fn ip_source(ip: Option<IpAddr>) -> Source {
        Source {
            key: ip.map_or_else(|| "-".into(), |ip| ratelimit::bucket_key(ip).to_string()),
            known_device: false,
        }
    }

    /// The value of the known-device cookie set after `user_id` completed a
    /// sign-in: `v1.<user id>.<issued unix>.<HMAC-SHA256>` (the key every
    /// replica shares, see `devices`). It proves only that this browser
    /// signed in to this account before; it is no credential.
    pub fn device_cookie(&self, user_id: &str) -> String {
        let body = format!("v1.{user_id}.{}", now());
        let tag = ring::hmac::sign(&self.device_signing_key(), body.as_bytes());
        format!("{body}.{}", hex::encode(tag.as_ref()))
    }

    /// Where a sign-in to `username` comes from: the device, if `device`
    /// is a valid, unexpired cookie of this very account; else the address.
    pub(super) fn login_source(
        &self,
        username: &str,
        ip: Option<IpAddr>,
        device: Option<&str>,
    ) -> Source {
        let known = device.and_then(|d| {
            let (body, tag) = d.rsplit_once('.')?;
            let tag = hex::decode(tag).ok()?;
            self.device_tag_valid(body.as_bytes(), &tag).then_some(())?;
            let mut parts = body.split('.');
            let (Some("v1"), Some(user), Some(issued), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            let issued: i64 = issued.parse().ok()?;
            let age = now().checked_sub(issued)?;
            if !(0..=DEVICE_LIFETIME.as_secs() as i64).contains(&age) {
                return None;
            }
            let (id, _) = self.find_user(username).ok()??;
            (id.to_string() == user).then(|| format!("device:{}", &hex::encode(&tag)[..16]))
        });
        match known {
            Some(key) => Source {
                key,
                known_device: true,
            },
            None => Self::ip_source(ip),
        }
    }

    /// Admits a credential attempt from `src` before anything is
    /// verified, or refuses it: a locked source, or (unless from a known
    /// device) a throttled account. Check and count are one step, so an
    /// attempt in flight counts as a failure until it ends otherwise
    /// ([`Auth::failed`], [`Auth::succeeded`], [`Auth::release`]); an
    /// attempt dropped on an error stays a failure.
    pub(super) fn admit(&self, username: &str, src: &Source) -> Result<Attempt, AuthError> {
        let t = now().max(0) as u64;
        let account = Self::lock_key(username);
        let source_key = lockout::source_key(&account, &src.key);
        let locked = |l: lockout::Locked| AuthError::Locked {
            retry_after: l.retry_after,
        };
        // Check and count in one write transaction: the store runs one at
        // a time across every replica, so the threshold holds cluster-wide.
        let txn = self.store.begin_write()?;
        let throttled = (!src.known_device).then_some(account.as_str());
        let decided = state::with_lock(
            &txn,
            &self.lockout,
            &self.throttle,
            &source_key,
            throttled,
            t,
            || {
                let state = self.lockout.reserve(&source_key, t)?;
                let throttle = match throttled {
                    None => None,
                    Some(account) => match self.throttle.reserve(account, t) {
                        Ok(filled) => Some((account.to_string(), filled)),
                        Err(l) => {
                            self.lockout.release(&source_key);
                            return Err(l);
                        }
                    },
                };
                Ok((state, throttle))
            },
        )?;
        txn.commit()?;
        let (state, throttle) = decided.map_err(locked)?;
        Ok(Attempt {
            source_key,
            locked_now: matches!(
                state,
                LockState::Locked {
                    just_locked: true,
                    ..
                }
            ),
            known_device: src.known_device,
            throttle,
        })
    }

    /// [`Auth::admit`] for an attempt from a client address (or none).
    pub(super) fn admit_from(
        &self,
        username: &str,
        ip: Option<IpAddr>,
    ) -> Result<Attempt, AuthError> {
        self.admit(username, &Self::ip_source(ip))
    }

    /// A failed attempt: it stays counted; audited, with the lock or
    /// throttle it started.
    pub(super) fn failed(
        &self,
        a: Attempt,
        username: &str,
        action: &str,
        reason: &str,
        ip: Option<IpAddr>,
    ) {
        self.audit(
            AuditEvent::new(username, action, Outcome::Failure)
                .ip(ip)
                .detail(reason),
        );
        if a.locked_now {
            self.audit(
                AuditEvent::new(username, "lockout", Outcome::Failure)
                    .ip(ip)
                    .detail(format!(
                        "after {} failures from this {}",
                        self.settings.lockout_threshold,
                        if a.known_device { "device" } else { "source" }
                    )),
            );
        }
        if a.throttle.as_ref().is_some_and(|(_, filled)| *filled) {
            self.audit(
                AuditEvent::new(username, "lockout.throttle", Outcome::Failure)
                    .ip(ip)
                    .detail("account-wide failure ceiling reached: attempts slowed"),
            );
        }
    }

    /// A success: the source's failures are forgotten and the account's
    /// room given back.
    pub(super) fn succeeded(&self, a: Attempt) {
        self.end_attempt(&a, |lockout, key| lockout.record_success(key));
    }

    /// An attempt that proved nothing either way (a right password whose
    /// second step is to come, malformed input): its reservation is given
    /// back, earlier failures stay.
    pub(super) fn release(&self, a: Attempt) {
        self.end_attempt(&a, |lockout, key| lockout.release(key));
    }

    /// The per-address limit of the auth endpoints, counted across every
    /// process sharing the store: `Ok(Err(wait))` when `ip` must wait. The
    /// in-memory [`crate::auth::ratelimit::RateLimiter`] runs first on each
    /// replica (it turns a flood away without a write); this one holds the
    /// configured rate for the whole deployment, where each replica's own
    /// bucket alone would allow it once per replica.
    pub fn check_shared_rate(
        &self,
        ip: IpAddr,
    ) -> Result<Result<(), ratelimit::RetryAfter>, AuthError> {
        let now_us = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        let now_us = u64::try_from(now_us).unwrap_or(0);
        let bucket = ratelimit::bucket_key(ip).to_string();
        let txn = self.store.begin_write()?;
        let out = state::with_rate(&txn, &bucket, |tat| match self.limiter.step(tat, now_us) {
            Ok(next) => (Some(next), Ok(())),
            Err(wait) => (None, Err(wait)),
        })?;
        txn.commit()?;
        Ok(out)
    }

    /// Lifts every lock of `username`, from every source and replica.
    pub(super) fn forget_locks(&self, username: &str) -> Result<(), AuthError> {
        let prefix = lockout::account_prefix(&Self::lock_key(username));
        let txn = self.store.begin_write()?;
        state::forget_locks(&txn, &prefix)?;
        txn.commit()?;
        Ok(())
    }

    /// Updates the attempt's lock row with `f` and gives back its throttle
    /// room, in one write transaction. On a store error the attempt stays
    /// counted as a failure: the safe side.
    fn end_attempt(&self, a: &Attempt, f: impl FnOnce(&lockout::Lockout, &str)) {
        let t = now().max(0) as u64;
        let account = a.throttle.as_ref().map(|(account, _)| account.as_str());
        let done = self.store.begin_write().and_then(|txn| {
            state::with_lock(
                &txn,
                &self.lockout,
                &self.throttle,
                &a.source_key,
                account,
                t,
                || {
                    f(&self.lockout, &a.source_key);
                    if let Some(account) = account {
                        self.throttle.release(account, t);
                    }
                },
            )?;
            txn.commit()
        });
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not end a sign-in attempt; it stays counted");
        }
    }
}
