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
//! - the lockout and throttle maps are capped (see `auth::lockout`): what
//!   the network names becomes a key only in a bounded map.

use super::{Auth, now};
use crate::audit::{AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::lockout::{self, LockState};
use crate::auth::ratelimit;
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
    /// sign-in: `v1.<user id>.<issued unix>.<HMAC-SHA256>`. It proves only
    /// that this browser signed in to this account before; it is no
    /// credential.
    pub fn device_cookie(&self, user_id: &str) -> String {
        let body = format!("v1.{user_id}.{}", now());
        let tag = ring::hmac::sign(&self.device_key, body.as_bytes());
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
            ring::hmac::verify(&self.device_key, body.as_bytes(), &tag).ok()?;
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
        let state = self.lockout.reserve(&source_key, t).map_err(locked)?;
        let throttle = if src.known_device {
            None
        } else {
            match self.throttle.reserve(&account, t) {
                Ok(filled) => Some((account, filled)),
                Err(l) => {
                    self.lockout.release(&source_key);
                    return Err(locked(l));
                }
            }
        };
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
        self.lockout.record_success(&a.source_key);
        self.release_throttle(&a);
    }

    /// An attempt that proved nothing either way (a right password whose
    /// second step is to come, malformed input): its reservation is given
    /// back, earlier failures stay.
    pub(super) fn release(&self, a: Attempt) {
        self.lockout.release(&a.source_key);
        self.release_throttle(&a);
    }

    fn release_throttle(&self, a: &Attempt) {
        if let Some((account, _)) = &a.throttle {
            self.throttle.release(account, now().max(0) as u64);
        }
    }
}
