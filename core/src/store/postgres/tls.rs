//! TLS to PostgreSQL: rustls with the ring provider (the process's one
//! provider), the system's roots plus `store.ca_file`.
//!
//! The certificate and the host name are always verified when TLS is used,
//! so libpq's `require`, `verify-ca` and `verify-full` all mean
//! `verify-full` here; `prefer` (the default) uses TLS when the server
//! offers it, verified the same way. Unix sockets never use TLS (as with
//! libpq): a URL naming only sockets gets `sslmode=disable`.

use super::PgError;
use crate::net::tls::{Trust, client_config};
use crate::store::settings::StoreSettings;
use tokio_postgres::Socket;
use tokio_postgres::config::{Config, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// rustls for every connection of the store.
#[derive(Clone)]
pub(super) struct MakeTls(MakeRustlsConnect);

impl MakeTlsConnect<Socket> for MakeTls {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        // The driver asks for a connector before it knows whether TLS will
        // be used, also for a Unix socket (no host name; `sslmode=disable`
        // there, so this connector is never used).
        let name = if domain.is_empty() || domain.starts_with('/') {
            "localhost"
        } else {
            domain
        };
        MakeTlsConnect::<Socket>::make_tls_connect(&mut self.0, name)
    }
}

/// The connector for `config`'s `sslmode` (system roots are read only if
/// TLS may be used).
pub(super) fn make_tls(settings: &StoreSettings, config: &Config) -> Result<MakeTls, PgError> {
    let extra = match &settings.ca_file {
        Some(path) => crate::net::upstream::read_ca_file(path).map_err(PgError::Tls)?,
        None => Vec::new(),
    };
    let trust = if config.get_ssl_mode() == SslMode::Disable {
        Trust::Nothing
    } else {
        Trust::System(&extra)
    };
    let tls = client_config(trust).map_err(|e| PgError::Tls(e.to_string()))?;
    Ok(MakeTls(MakeRustlsConnect::new(tls)))
}
