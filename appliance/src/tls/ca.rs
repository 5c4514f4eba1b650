//! The appliance's local certificate authority.
//!
//! An ECDSA P-256 CA valid for ten years, common name
//! `Latchkey local CA (<hostname>)`, kept as `<tls_dir>/ca.pem` and
//! `<tls_dir>/ca.key` (mode 0600, directory 0700). It is created on first
//! run and reused afterwards; a key file that group or others can access is
//! refused. The CA is never replaced automatically, because devices have
//! been told to trust it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::asn1_rs::Tag;

use super::certinfo::{self, CertFacts};
use super::files::{self, CA_CERT_FILE, CA_KEY_FILE, CERT_FILE_MODE, KEY_FILE_MODE};
use super::server_cert::local_host_name;
use super::{Result, TlsError};

/// Lifetime of a newly created local CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);

/// How far back `not_before` is set, to tolerate clients with a slow clock.
pub(crate) const BACKDATE: Duration = Duration::from_secs(3600);

/// The local CA: certificate plus signing key.
pub struct LocalCa {
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    facts: CertFacts,
    cert_path: PathBuf,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("subject", &self.facts.subject)
            .field("cert_path", &self.cert_path)
            .field("key", &"[elided]")
            .finish()
    }
}

impl LocalCa {
    /// Loads the CA from `dir`, creating it (and `dir`) on first run.
    ///
    /// If `ca.pem` is missing a new CA is made (a stray `ca.key` without its
    /// certificate was never trusted by anyone and is replaced). If `ca.pem`
    /// exists without `ca.key`, that is an error: silently replacing a
    /// trusted CA would break every device that trusts it.
    ///
    /// The check and the creation happen under the directory's lock
    /// ([`files::lock_dir`]): of two processes starting at once, one
    /// creates the CA and the other loads that one.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        files::ensure_private_dir(dir)?;
        let _lock = files::lock_dir(dir)?;
        let cert_path = dir.join(CA_CERT_FILE);
        if files::exists(&cert_path)? {
            return Self::load(dir);
        }
        let key_path = dir.join(CA_KEY_FILE);
        if files::exists(&key_path)? {
            tracing::warn!(
                path = %key_path.display(),
                "found a local CA key without its certificate; creating a new local CA"
            );
        }
        Self::create(dir)
    }

    /// Loads an existing CA from `dir` (never creates one).
    pub fn load(dir: &Path) -> Result<Self> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let Some(cert_bytes) = files::read_optional(&cert_path)? else {
            return Err(TlsError::CaNotFound { path: cert_path });
        };
        if !files::exists(&key_path)? {
            return Err(TlsError::MissingCaKey {
                cert_path,
                key_path,
            });
        }
        files::check_private_key_mode(&key_path)?;
        let key_bytes = files::read(&key_path)?;
        let key_text = files::as_text(&key_path, &key_bytes)?;
        let key = KeyPair::from_pem(key_text).map_err(|e| TlsError::BadKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let cert_der = files::parse_pem_certs(&cert_path, &cert_bytes)?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::NoCertificate {
                path: cert_path.clone(),
            })?;
        let facts = certinfo::facts(&cert_path, &cert_der)?;
        if !facts.is_ca {
            return Err(TlsError::BadCertificate {
                path: cert_path,
                reason: "not a CA certificate (basicConstraints CA:FALSE or missing)".to_owned(),
            });
        }
        if facts.public_key != key.public_key_raw() {
            return Err(TlsError::KeyMismatch {
                cert_path,
                key_path,
            });
        }
        if facts.not_after <= OffsetDateTime::now_utc() {
            tracing::error!(
                path = %cert_path.display(),
                not_after = %certinfo::rfc3339(facts.not_after),
                "the local CA has expired; delete ca.pem and ca.key to create a new one \
                 and install it on your devices again"
            );
        }
        Ok(Self {
            cert_der,
            key,
            facts,
            cert_path,
        })
    }

    fn create(dir: &Path) -> Result<Self> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let host = local_host_name().unwrap_or_else(|| "unknown host".to_owned());
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Latchkey local CA ({host})"));
        dn.push(DnType::OrganizationName, "Latchkey");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = ca_key_usages();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(super::server_cert::random_serial()?);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            TlsError::Generate {
                what: "local CA key",
                source,
            }
        })?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| TlsError::Generate {
                what: "local CA certificate",
                source,
            })?;
        // Key first: a crash in between leaves a key without a certificate,
        // which the next start replaces. The caller holds the directory
        // lock, so no other process writes either file meanwhile.
        files::write_atomic(&key_path, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
        files::write_atomic(&cert_path, cert.pem().as_bytes(), CERT_FILE_MODE)?;
        tracing::info!(
            path = %cert_path.display(),
            fingerprint = %certinfo::fingerprint_sha256(cert.der()),
            "created local CA"
        );
        let cert_der = cert.der().clone();
        let facts = certinfo::facts(&cert_path, &cert_der)?;
        Ok(Self {
            cert_der,
            key,
            facts,
            cert_path,
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Path of `ca.pem`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// SHA-256 fingerprint of the CA certificate (`AB:CD:...`).
    pub fn fingerprint_sha256(&self) -> String {
        certinfo::fingerprint_sha256(&self.cert_der)
    }

    /// Parsed facts about the CA certificate.
    pub fn facts(&self) -> &CertFacts {
        &self.facts
    }

    /// An rcgen issuer that signs with this CA. The issuer name is rebuilt
    /// from the stored certificate, attribute by attribute with the same
    /// string types, so issued certificates chain to it.
    pub(crate) fn issuer(&self) -> Result<Issuer<'_, &KeyPair>> {
        let mut params = CertificateParams::default();
        params.distinguished_name = self.distinguished_name()?;
        params.key_usages = ca_key_usages();
        Ok(Issuer::new(params, &self.key))
    }

    fn distinguished_name(&self) -> Result<DistinguishedName> {
        let bad = |reason: String| TlsError::BadCertificate {
            path: self.cert_path.clone(),
            reason,
        };
        let (_, cert) =
            x509_parser::parse_x509_certificate(&self.cert_der).map_err(|e| bad(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        for attr in cert.subject().iter_attributes() {
            let oid: Vec<u64> = attr
                .attr_type()
                .iter()
                .ok_or_else(|| bad("subject attribute OID too large".to_owned()))?
                .collect();
            let text = attr
                .as_str()
                .map_err(|e| bad(format!("subject attribute: {e}")))?;
            let value = match attr.attr_value().tag() {
                Tag::PrintableString => DnValue::PrintableString(
                    PrintableString::try_from(text).map_err(|e| bad(e.to_string()))?,
                ),
                Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
                other => {
                    return Err(bad(format!(
                        "unsupported string type {other} in the CA subject"
                    )));
                }
            };
            dn.push(DnType::from_oid(&oid), value);
        }
        Ok(dn)
    }
}

fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn created_once_then_reused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("tls");
        let first = LocalCa::load_or_create(&dir).expect("create");
        assert_eq!(files::mode_of(&dir).expect("mode"), 0o700);
        assert_eq!(files::mode_of(&dir.join(CA_KEY_FILE)).expect("mode"), 0o600);
        let cn = first.facts().common_name.clone().expect("cn");
        assert!(cn.starts_with("Latchkey local CA ("), "{cn}");
        assert!(first.facts().is_ca);
        let lifetime = first.facts().not_after - first.facts().not_before;
        assert!(lifetime >= time::Duration::days(3650), "{lifetime}");

        let second = LocalCa::load_or_create(&dir).expect("reuse");
        assert_eq!(first.cert_der(), second.cert_der());
        assert_eq!(first.fingerprint_sha256(), second.fingerprint_sha256());
    }

    #[test]
    fn loose_key_permissions_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        LocalCa::load_or_create(tmp.path()).expect("create");
        let key_path = tmp.path().join(CA_KEY_FILE);
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = LocalCa::load_or_create(tmp.path()).expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", key_path.display())),
            "{msg}"
        );
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).expect("chmod");
        LocalCa::load_or_create(tmp.path()).expect("accepted after chmod");
    }

    #[test]
    fn missing_key_is_an_error_not_a_new_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::load_or_create(tmp.path()).expect("create");
        fs::remove_file(tmp.path().join(CA_KEY_FILE)).expect("rm");
        let err = LocalCa::load_or_create(tmp.path()).expect_err("missing key");
        assert!(matches!(err, TlsError::MissingCaKey { .. }), "{err}");
        // ca.pem untouched
        let pem = fs::read(tmp.path().join(CA_CERT_FILE)).expect("read");
        let der = files::parse_pem_certs(Path::new("ca.pem"), &pem).expect("pem");
        assert_eq!(&der[0], ca.cert_der());
    }

    #[test]
    fn stray_key_without_cert_is_replaced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        LocalCa::load_or_create(tmp.path()).expect("create");
        fs::remove_file(tmp.path().join(CA_CERT_FILE)).expect("rm");
        LocalCa::load_or_create(tmp.path()).expect("recreated");
    }

    #[test]
    fn mismatched_key_detected() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        LocalCa::load_or_create(a.path()).expect("a");
        LocalCa::load_or_create(b.path()).expect("b");
        fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).expect("copy");
        let err = LocalCa::load(a.path()).expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    /// Issue #19 item 6: many creators at once end with one CA whose key
    /// matches, and every one of them holds that CA.
    #[test]
    fn concurrent_first_runs_agree_on_one_ca() {
        for _ in 0..5 {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("tls");
            let fps: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| LocalCa::load_or_create(&dir).map(|c| c.fingerprint_sha256()))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("join").expect("ca"))
                    .collect()
            });
            let on_disk = LocalCa::load(&dir).expect("pair on disk matches");
            for fp in fps {
                assert_eq!(fp, on_disk.fingerprint_sha256());
            }
        }
    }

    #[test]
    fn load_without_ca_reports_not_found() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = LocalCa::load(tmp.path()).expect_err("none");
        assert!(matches!(err, TlsError::CaNotFound { .. }), "{err}");
    }
}
