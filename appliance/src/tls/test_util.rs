//! Helpers shared by the TLS unit tests.

use std::path::Path;
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SignatureAlgorithm};

use super::TlsSettings;

/// Settings for `dir` with defaults.
pub fn settings(dir: &Path) -> TlsSettings {
    TlsSettings {
        dir: dir.to_path_buf(),
        extra_dns_names: Vec::new(),
        extra_ips: Vec::new(),
        server_cert_lifetime: Duration::from_secs(90 * 24 * 3600),
        renew_before: Duration::from_secs(30 * 24 * 3600),
        cert_file: None,
        key_file: None,
    }
}

/// A self-signed certificate for `cn` (also its SAN), as (cert PEM, key PEM),
/// with an ECDSA P-384 key.
pub fn self_signed_pair(cn: &str) -> (String, String) {
    self_signed_pair_with(cn, &rcgen::PKCS_ECDSA_P384_SHA384)
}

/// Like [`self_signed_pair`] with a chosen key algorithm.
pub fn self_signed_pair_with(cn: &str, alg: &'static SignatureAlgorithm) -> (String, String) {
    let key = KeyPair::generate_for(alg).expect("keygen");
    let mut params = CertificateParams::new(vec![cn.to_owned()]).expect("params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + Duration::from_secs(7 * 24 * 3600);
    let cert = params.self_signed(&key).expect("sign");
    (cert.pem(), key.serialize_pem())
}
