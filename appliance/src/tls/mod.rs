//! TLS for the appliance: a local certificate authority, the server
//! certificate it signs, and hot certificate swapping. The accept loop is
//! the core's ([`latchkey_core::serve`]); this module hands it a
//! `rustls::ServerConfig`.
//!
//! A home server rarely has a publicly trusted certificate, so Latchkey makes
//! its own:
//!
//! * [`ca`] keeps a long-lived local CA (`ca.pem` / `ca.key`) in the TLS
//!   directory. The user installs `ca.pem` once in their browsers/devices
//!   (see [`export_ca_pem`]).
//! * [`server_cert`] issues a short-lived server certificate from that CA
//!   (`server.pem` / `server.key`) covering every name and address the
//!   appliance is reachable under, and reissues it when it nears expiry or
//!   the set of names changes.
//! * [`user_cert`] lets an administrator supply their own PEM certificate and
//!   key instead; those files are polled and hot-reloaded.
//! * [`resolver`] hands rustls the current certificate, so a renewed one is
//!   used for new handshakes without a restart.
//! * [`config`] builds the hardened `rustls::ServerConfig`.
//! * [`manager`] ties the above together ([`TlsManager`]) and runs periodic
//!   maintenance.
//! * [`status`] reports on the certificates without a running server.
//!
//! All cryptography comes from `rcgen` and `rustls` (ring provider).

pub mod ca;
pub mod certinfo;
pub mod config;
pub mod files;
pub mod manager;
pub mod resolver;
pub mod server_cert;
pub mod status;
pub mod user_cert;

#[cfg(test)]
mod serve_tests;
#[cfg(test)]
mod test_util;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use manager::{RefreshOutcome, TlsManager};
pub use status::{export_ca_pem, status};

/// TLS settings, built by the caller from the appliance configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Directory holding `ca.pem`, `ca.key`, `server.pem` and `server.key`.
    /// Created with mode 0700 if missing.
    pub dir: PathBuf,
    /// Extra DNS names for the generated server certificate.
    pub extra_dns_names: Vec<String>,
    /// Extra IP addresses for the generated server certificate.
    pub extra_ips: Vec<IpAddr>,
    /// Lifetime of a generated server certificate (suggested default: 90
    /// days; accepted range 1 hour to 825 days).
    pub server_cert_lifetime: Duration,
    /// Reissue the generated server certificate when it expires within this
    /// time (suggested default: 30 days).
    pub renew_before: Duration,
    /// User-provided certificate chain (PEM). Overrides the generated server
    /// certificate; must be given together with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// User-provided private key (PEM; PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// Errors of the TLS module. Messages name the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file or directory could not be written or created.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS directory path exists but is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A private key file can be read by other users.
    #[error(
        "private key file {} is accessible by group or others (mode {mode:03o}); \
         refusing to use it. Fix with: chmod 600 {}",
        path.display(),
        path.display()
    )]
    InsecureKeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A PEM file is malformed.
    #[error("{}: invalid PEM: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A PEM file contains no certificate.
    #[error("{}: no PEM certificate (\"BEGIN CERTIFICATE\") found", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file contains no private key.
    #[error("{}: no PEM private key found", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate could not be parsed or is unsuitable.
    #[error("{}: bad certificate: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A private key could not be parsed or is unsupported.
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A private key does not belong to its certificate.
    #[error(
        "private key {} does not match the certificate in {}",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
    /// The CA certificate exists but its key is gone.
    #[error(
        "local CA certificate {} exists but its private key {} is missing; restore the key, \
         or delete {} to create a new local CA (devices trusting the old CA must then be \
         given the new one)",
        cert_path.display(),
        key_path.display(),
        cert_path.display()
    )]
    MissingCaKey {
        /// `ca.pem`.
        cert_path: PathBuf,
        /// `ca.key`.
        key_path: PathBuf,
    },
    /// No local CA has been created yet.
    #[error(
        "local CA certificate {} does not exist yet; start the server once to create it",
        path.display()
    )]
    CaNotFound {
        /// `ca.pem`.
        path: PathBuf,
    },
    /// Certificate or key generation failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// rustls rejected the configuration or a key.
    #[error("TLS configuration error: {0}")]
    Rustls(#[from] rustls::Error),
    /// The settings are inconsistent.
    #[error("invalid TLS settings: {0}")]
    Settings(String),
}

/// Result alias for this module.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;
