//! Accounts and access: the owner and invited users, passwords, TOTP,
//! recovery codes, sessions, tokens, API keys, lockout and rate limits.
//!
//! - [`service::Auth`] is the one entry point the HTTP layer and the CLI use
//!   (one file per concern under `service/`);
//! - [`store`] holds the rows (schema v2); [`index`] writes sessions and
//!   tokens with their index (schema v4);
//! - [`password`], [`totp`], [`recovery`], [`apikey`], [`scope`],
//!   [`lockout`] and [`ratelimit`] are the pure building blocks;
//! - [`revocation`] tells long-lived connections to re-check their
//!   credential; [`lifetime`] is the watcher that ends such a connection
//!   (an agent's WebSocket or stream, a provider's realtime session) once
//!   its credential no longer passes.

pub mod apikey;
pub mod epoch;
pub mod index;
pub mod lifetime;
pub mod lockout;
pub mod password;
pub mod ratelimit;
pub mod recovery;
pub mod revocation;
pub mod scope;
pub mod service;
pub mod settings;
pub mod state;
pub mod store;
pub mod totp;

pub use service::{Auth, Principal, Via};

use std::time::Duration;

/// Why an auth operation failed. `crate::http` maps each to a status and a
/// stable error code; messages never reveal whether a username exists.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{1}")]
    Unauthorized(&'static str, String),
    #[error("{1}")]
    Forbidden(&'static str, String),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("too many failed attempts; try again in {} s", retry_after.as_secs().max(1))]
    Locked { retry_after: Duration },
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthError {
    pub fn unauthenticated() -> Self {
        AuthError::Unauthorized("unauthenticated", "sign in first".into())
    }
}

#[cfg(test)]
mod hardening_tests;
#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod service_tests;
