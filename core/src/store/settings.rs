//! `[store]`: where the data lives — the embedded redb file (the default)
//! or a PostgreSQL database shared by several replicas (`docs/SCALE.md`).
//!
//! The connection URL may carry a password, so it is a secret here: its
//! `Debug`, its serialized form and every error that names it show only
//! `postgres://user@host:port/database`, never the password.

use crate::duration_str;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::PathBuf;
use std::time::Duration;

/// Which backend holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `DATA_DIR/latchkey.redb`, one process.
    #[default]
    Redb,
    /// A PostgreSQL database (`store.url`), shared by every replica.
    Postgres,
}

/// Largest accepted `store.pool_size`.
pub const MAX_POOL_SIZE: usize = 256;
/// Longest accepted `store.timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub backend: Backend,
    /// `postgres://user[:password]@host[:port]/database[?sslmode=…]`, or
    /// libpq's `key=value` form. Required with `backend = "postgres"`.
    pub url: Option<DatabaseUrl>,
    /// Most connections each process keeps open for transactions (the
    /// change feed and held shared locks use their own).
    pub pool_size: usize,
    /// The longest a store call waits: for a free connection, for the
    /// cluster-wide write lock, for one statement, for a new connection.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// PEM certificates trusted for the server's TLS certificate, in
    /// addition to the system's roots (a cluster's private CA).
    pub ca_file: Option<PathBuf>,
    /// `PGPASSWORD` from the environment, used when `url` names no
    /// password (set by `Settings::load`, never read from the file).
    #[serde(skip)]
    pub env_password: Option<Password>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: Backend::Redb,
            url: None,
            pool_size: 8,
            timeout: Duration::from_secs(30),
            ca_file: None,
            env_password: None,
        }
    }
}

impl StoreSettings {
    /// The rules `Settings::load` checks; errors name the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(2..=MAX_POOL_SIZE).contains(&self.pool_size) {
            // Two: a write transaction may read through a second one.
            return Err(("store.pool_size", format!("must be 2 to {MAX_POOL_SIZE}")));
        }
        if self.timeout < Duration::from_secs(1) || self.timeout > MAX_TIMEOUT {
            return Err((
                "store.timeout",
                format!(
                    "`{}` is out of range: it must be between 1s and {}",
                    duration_str::format(&self.timeout),
                    duration_str::format(&MAX_TIMEOUT)
                ),
            ));
        }
        match (self.backend, &self.url) {
            (Backend::Postgres, None) => Err((
                "store.url",
                "store.url is required when store.backend = \"postgres\" (e.g. \
                 postgres://latchkey@db.internal:5432/latchkey?sslmode=require; the password \
                 may come from PGPASSWORD)"
                    .into(),
            )),
            (Backend::Postgres, Some(url)) => super::postgres::check_url(url, self)
                .map(|_| ())
                .map_err(|message| ("store.url", message)),
            (Backend::Redb, _) => Ok(()),
        }
    }
}

/// A password that never prints.
#[derive(Clone)]
pub struct Password(pub SecretString);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A PostgreSQL connection string, kept secret (it may hold a password).
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(SecretString::from(url.into()))
    }

    /// The string itself, for the driver only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// What may be shown: `postgres://user@host:port/database`, without
    /// the password or any other parameter.
    pub fn redacted(&self) -> String {
        super::postgres::describe_url(self.expose())
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    // `latchkey config show` and friends print the redacted form.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(DatabaseUrl::new(s))
    }
}
