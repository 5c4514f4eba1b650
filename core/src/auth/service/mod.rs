//! The auth service: first-run setup, login with a second factor, sessions,
//! access and refresh tokens, API keys, re-authentication — with lockout,
//! rate limits and audit. HTTP lives in `crate::http::auth`; this module
//! knows nothing of it.
//!
//! Everything that costs CPU on purpose (argon2) runs in the caller's
//! blocking context: the HTTP layer calls these methods on the blocking pool.
//!
//! This file holds [`Auth`] (its state and constructor) and the helpers
//! every part shares; each concern adds its own `impl Auth` block:
//!
//! - `principal`: who is asking ([`Principal`], [`Via`]) and the in-memory
//!   cache of people behind it;
//! - `views`: the shapes the API shows ([`UserView`], [`SecretView`],
//!   [`EnrollmentView`]);
//! - `users`: reading and writing user rows, the username rule and the
//!   password policy;
//! - `second_factor`: TOTP enrollment and checks, and consuming TOTP steps
//!   and recovery codes;
//! - `setup`: first-run setup of the owner (web wizard and `latchkey setup`);
//! - `attempts`: lockout and throttling of credential attempts, known
//!   devices;
//! - `devices`: the key known-device cookies are signed with, shared by
//!   every replica;
//! - `signin`: the password step, MFA tickets and the second step;
//! - `sessions`: browser sessions: written, authenticated, listed, revoked;
//! - `tokens`: access and refresh tokens with reuse detection;
//! - `keys`: API keys, verified from an in-memory cache, last-used batched;
//! - `stepup`: re-authentication and the step-up rule for secrets;
//! - `account`: the user's own password, second factor and recovery codes;
//! - `revoke`: what each account event ends, in that event's transaction;
//! - `admin`: users and invites, for admins;
//! - `prune`: deleting what expired;
//! - `replicas`: following what other processes sharing the store change.
//!
//! Invariants that hold across all of them:
//!
//! - plaintext secrets (tokens, keys, TOTP secrets, recovery codes) are
//!   held in `SecretString`s and never logged or put in an error message;
//!   tokens, keys and recovery codes are stored only as hashes, TOTP
//!   secrets only sealed by the vault;
//! - after every change that ends or narrows a credential,
//!   [`Auth::revocations`] is bumped so open connections re-check theirs.

mod account;
mod admin;
mod attempts;
mod devices;
mod keys;
mod principal;
mod prune;
mod replicas;
mod revoke;
mod second_factor;
mod sessions;
mod setup;
mod signin;
mod stepup;
mod tokens;
mod users;
mod views;

pub use admin::MAX_INVITE_LIFETIME;
pub use attempts::DEVICE_LIFETIME;
pub use keys::{KeyView, MAX_KEYS_PER_USER};
pub use principal::{Principal, Via};
pub use prune::Pruned;
pub use sessions::SessionView;
pub use signin::{LoginStep, NewSession};
pub use stepup::KeyStepUp;
pub use tokens::TokenPair;
pub use views::{EnrollmentView, SecretView, UserView};

use super::AuthError;
use super::epoch::Epochs;
use super::lockout::{AccountThrottle, Lockout, LockoutConfig};
use super::password::{PasswordHasher, PasswordPolicy};
use super::ratelimit::{RateLimitConfig, RateLimiter};
use super::scope::Role;
use super::settings::AuthSettings;
use super::store::UserId;
use crate::audit::{self, AuditEvent};
use crate::secrecy::SecretString;
use crate::store::Store;
use crate::vault::Vault;
use keys::CachedKey;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The current time in unix seconds (UTC).
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `t + d` in unix seconds, saturating: a lifetime from the configuration
/// or a request can never wrap into the past.
pub fn expiry(t: i64, d: Duration) -> i64 {
    t.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The account-wide ceiling on failures, as a multiple of the per-source
/// threshold (see [`AccountThrottle`]).
const ACCOUNT_BURST_FACTOR: u32 = 10;

/// A new random token: `prefix` and 32 random bytes in hex.
fn random_token(prefix: &str) -> SecretString {
    use rand::RngCore;
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    SecretString::from(format!("{prefix}{}", hex::encode(&bytes[..])))
}

/// The auth service of one data directory.
pub struct Auth {
    store: Arc<Store>,
    vault: Arc<Vault>,
    pub settings: AuthSettings,
    hasher: PasswordHasher,
    policy: PasswordPolicy,
    /// Failed attempts per (account, source): locks that source only.
    lockout: Lockout,
    /// Failed attempts per account from all sources: slows, never locks.
    throttle: AccountThrottle,
    pub limiter: RateLimiter,
    /// Sign known-device cookies: the deployment's key, sealed in the
    /// store, and this process's own while the vault is sealed (`devices`).
    device_keys: devices::DeviceKeys,
    /// Active API keys by public id: the hot path verifies keys in memory.
    keys: RwLock<HashMap<String, CachedKey>>,
    /// Bumped by every change this process makes to `keys`, so a reload
    /// from an older snapshot never undoes one (see `replicas`).
    keys_gen: AtomicU64,
    key_last_used: Mutex<HashMap<String, i64>>,
    /// Username and role of active, enabled users, so an API-key request
    /// needs no database read. Emptied after every committed change to
    /// `users`; `people_gen` stops a fill that raced such a change.
    people: RwLock<HashMap<UserId, (String, Role)>>,
    people_gen: AtomicU64,
    /// Bumped after every change that ends or narrows a credential.
    pub revocations: super::revocation::Revocations,
    /// Per-user epochs a sign-in in progress re-checks before its session
    /// is written, so an account event between its steps voids it.
    epochs: Epochs,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(
        store: Arc<Store>,
        vault: Arc<Vault>,
        settings: AuthSettings,
    ) -> Result<Arc<Auth>, AuthError> {
        let lockout = Lockout::new(LockoutConfig {
            max_failures: settings.lockout_threshold,
            lock_for: settings.lockout_duration,
            ..LockoutConfig::default()
        })
        .map_err(|e| AuthError::Internal(e.to_string()))?;
        let throttle = AccountThrottle::new(
            settings
                .lockout_threshold
                .saturating_mul(ACCOUNT_BURST_FACTOR),
            settings.lockout_duration / settings.lockout_threshold.max(1),
            LockoutConfig::default().max_entries,
        );
        let limiter = RateLimiter::new(RateLimitConfig::per_minute(
            settings.rate_limit_per_minute,
            settings.rate_limit_burst,
        ))
        .map_err(|e| AuthError::Internal(e.to_string()))?;
        let epochs = Epochs::new(Arc::clone(&store));
        let auth = Auth {
            store,
            vault,
            hasher: PasswordHasher::default(),
            policy: PasswordPolicy::new(),
            lockout,
            throttle,
            limiter,
            device_keys: devices::DeviceKeys::new(),
            keys: RwLock::new(HashMap::new()),
            keys_gen: AtomicU64::new(0),
            key_last_used: Mutex::new(HashMap::new()),
            people: RwLock::new(HashMap::new()),
            people_gen: AtomicU64::new(0),
            revocations: super::revocation::Revocations::new(),
            epochs,
            settings,
        };
        auth.load_keys()?;
        Ok(Arc::new(auth))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    fn audit(&self, e: AuditEvent) {
        if let Err(err) = audit::append(&self.store, e) {
            tracing::error!(error = %err, "could not write an audit entry");
        }
    }
}
