//! The hardened `rustls::ServerConfig`: TLS 1.2 and 1.3 only, AEAD suites
//! with ephemeral (EC)DHE key exchange only, ALPN `h2` and `http/1.1`, and
//! the ring crypto provider passed explicitly, so nothing depends on a
//! process-wide default provider.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{self, cipher_suite};
use rustls::server::ResolvesServerCert;
use rustls::{ServerConfig, version};

use super::Result;

/// ALPN protocols offered, in preference order.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The ring provider restricted to modern cipher suites: the TLS 1.3 suites
/// and the TLS 1.2 ECDHE suites with AES-GCM or ChaCha20-Poly1305 (no CBC,
/// no static-RSA key exchange). RSA suites remain for user-provided RSA
/// certificates (still ECDHE key exchange).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Builds the server configuration around `resolver`.
pub fn build_server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use rustls::{CipherSuite, ProtocolVersion};

    use super::*;

    #[test]
    fn only_modern_suites_and_versions() {
        let provider = crypto_provider();
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(!name.contains("CBC"), "{name}");
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name}"
            );
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
        }
        let versions: Vec<ProtocolVersion> = provider
            .cipher_suites
            .iter()
            .map(|s| s.version().version)
            .collect();
        assert!(versions.contains(&ProtocolVersion::TLSv1_2));
        assert!(versions.contains(&ProtocolVersion::TLSv1_3));
        assert!(
            provider
                .cipher_suites
                .iter()
                .any(|s| s.suite() == CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}
