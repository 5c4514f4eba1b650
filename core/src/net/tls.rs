//! The one TLS client configuration for outbound HTTPS: provider
//! upstreams, agent backends and OAuth providers all speak rustls with the
//! ring provider, the system's root certificates and, per upstream, the
//! extra CA certificates of its `ca_file`.

use rustls::pki_types::CertificateDer;
use std::sync::{Arc, OnceLock};

/// Why a client configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    /// A `ca_file` certificate that cannot be a trust anchor (checked when
    /// the file is read, so not expected here).
    #[error("a certificate cannot be a CA: {0}")]
    NotACa(#[source] rustls::Error),
    #[error("TLS client configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// Which certificates a client trusts.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The system's roots and these extra ones (a `ca_file`).
    System(&'a [CertificateDer<'static>]),
    /// Nothing: a client of plain-HTTP upstreams only, which never makes a
    /// TLS connection (and need not read the system's roots).
    Nothing,
}

/// The system's root certificates, read once per process (reading them
/// parses every file of the system's store).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            tracing::warn!(
                "no system root certificates found: HTTPS upstreams will fail (install ca-certificates)"
            );
        }
        found.certs
    })
}

/// rustls with the ring provider, safe default protocol versions and the
/// roots `trust` names. One unparsable system certificate does not stop
/// the server; a bad extra one is an error.
pub fn client_config(trust: Trust<'_>) -> Result<rustls::ClientConfig, TlsClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Trust::System(extra) = trust {
        for cert in extra {
            roots.add(cert.clone()).map_err(TlsClientError::NotACa)?;
        }
        for cert in system_roots() {
            let _ = roots.add(cert.clone());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsClientError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
