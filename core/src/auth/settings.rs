//! `[auth]`: sessions, tokens, lockout, rate limits and trusted proxies.
//! Read and checked by `crate::config` (errors name the key); defined here
//! so that the auth service does not look up at the configuration.

use crate::duration_str;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// A browser session ends this long after login, whatever happens.
    #[serde(with = "duration_str")]
    pub session_lifetime: Duration,
    /// …or after this long without a request.
    #[serde(with = "duration_str")]
    pub session_idle: Duration,
    /// Lifetime of access tokens for programmatic clients (at most 15m).
    #[serde(with = "duration_str")]
    pub access_token_lifetime: Duration,
    /// Lifetime of refresh tokens (each use rotates it).
    #[serde(with = "duration_str")]
    pub refresh_token_lifetime: Duration,
    /// A refresh family (the tokens of one `POST /api/auth/token`) ends
    /// this long after it was issued, however often it is rotated.
    #[serde(with = "duration_str")]
    pub refresh_absolute_lifetime: Duration,
    /// Consecutive failures (password, TOTP, recovery code) that lock an account.
    pub lockout_threshold: u32,
    /// How long a locked account stays locked.
    #[serde(with = "duration_str")]
    pub lockout_duration: Duration,
    /// Auth requests a client IP may burst…
    pub rate_limit_burst: u32,
    /// …and then make per minute.
    pub rate_limit_per_minute: u32,
    /// Privileged actions need a password or TOTP proof this recent.
    #[serde(with = "duration_str")]
    pub reauth_window: Duration,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs, e.g. `10.0.0.0/8`).
    pub trusted_proxies: Vec<String>,
    /// The first-run setup link expires after this long.
    #[serde(with = "duration_str")]
    pub setup_token_lifetime: Duration,
    /// Invite links expire after this long unless the admin says otherwise.
    #[serde(with = "duration_str")]
    pub invite_lifetime: Duration,
    /// Audit entries older than this are pruned.
    #[serde(with = "duration_str")]
    pub audit_retention: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            session_lifetime: Duration::from_secs(30 * 86400),
            session_idle: Duration::from_secs(7 * 86400),
            access_token_lifetime: Duration::from_secs(15 * 60),
            refresh_token_lifetime: Duration::from_secs(30 * 86400),
            refresh_absolute_lifetime: Duration::from_secs(30 * 86400),
            lockout_threshold: 5,
            lockout_duration: Duration::from_secs(15 * 60),
            rate_limit_burst: 20,
            rate_limit_per_minute: 30,
            reauth_window: Duration::from_secs(5 * 60),
            trusted_proxies: Vec::new(),
            setup_token_lifetime: Duration::from_secs(3600),
            invite_lifetime: Duration::from_secs(7 * 86400),
            audit_retention: Duration::from_secs(365 * 86400),
        }
    }
}
