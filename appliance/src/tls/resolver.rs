//! The rustls certificate resolver: hands out the current certificate and
//! lets it be swapped at run time, so a renewed or reloaded certificate is
//! used for new handshakes without restarting the server. Connections
//! already established keep the certificate they started with.

use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Holds the current certificate chain and key behind a lock.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    /// A resolver serving `initial`.
    pub fn new(initial: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(initial),
        }
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a valid Arc; keep serving it.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the certificate for new handshakes.
    pub fn set(&self, next: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::config::crypto_provider;
    use crate::tls::files;
    use crate::tls::test_util::self_signed_pair;
    use std::path::Path;

    fn certified(cn: &str) -> Arc<CertifiedKey> {
        let (cert, key) = self_signed_pair(cn);
        let p = Path::new("test");
        let chain = files::parse_pem_certs(p, cert.as_bytes()).expect("cert");
        let key = files::parse_pem_key(p, key.as_bytes()).expect("key");
        Arc::new(CertifiedKey::from_der(chain, key, &crypto_provider()).expect("pair"))
    }

    #[test]
    fn swap_replaces_current() {
        let a = certified("a.test");
        let b = certified("b.test");
        let r = CertResolver::new(Arc::clone(&a));
        assert!(Arc::ptr_eq(&r.current(), &a));
        r.set(Arc::clone(&b));
        assert!(Arc::ptr_eq(&r.current(), &b));
    }
}
