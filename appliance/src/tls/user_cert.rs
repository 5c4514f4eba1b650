//! An administrator-supplied certificate (`cert_file` + `key_file`, PEM).
//!
//! The certificate file holds the chain to serve (server certificate first,
//! then any intermediates); the key may be any type rustls supports (ECDSA,
//! RSA, Ed25519; PKCS#8, PKCS#1 or SEC1). A key file readable by *others* is
//! refused; group-readable keys are accepted because distributions commonly
//! share keys through a group such as `ssl-cert`.
//!
//! Changes are detected by a SHA-256 over both files' contents, so a
//! replaced or edited file is picked up on the next poll and an untouched
//! one is not re-parsed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::certinfo::{self, CertFacts};
use super::files;
use super::{Result, TlsError, TlsSettings};

/// The two files of a user-provided certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCertFiles {
    /// Certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Private key, PEM.
    pub key_file: PathBuf,
}

impl UserCertFiles {
    /// Both paths from the settings, `None` if neither is set, an error if
    /// only one is.
    pub fn from_settings(settings: &TlsSettings) -> Result<Option<Self>> {
        match (&settings.cert_file, &settings.key_file) {
            (Some(c), Some(k)) => Ok(Some(Self {
                cert_file: c.clone(),
                key_file: k.clone(),
            })),
            (None, None) => Ok(None),
            (Some(c), None) => Err(TlsError::Settings(format!(
                "cert_file {} is set but key_file is not; set both or neither",
                c.display()
            ))),
            (None, Some(k)) => Err(TlsError::Settings(format!(
                "key_file {} is set but cert_file is not; set both or neither",
                k.display()
            ))),
        }
    }
}

/// Content digest of the pair of files, for change detection.
pub type ContentDigest = [u8; 32];

/// A loaded user-provided certificate.
#[derive(Debug, Clone)]
pub struct UserCert {
    /// Chain and key for rustls.
    pub certified_key: Arc<CertifiedKey>,
    /// Facts about the end-entity certificate.
    pub facts: CertFacts,
    /// Digest of the files it was loaded from.
    pub digest: ContentDigest,
}

/// Reads both files and returns their contents and combined digest.
pub fn read_files(files: &UserCertFiles) -> Result<(Vec<u8>, Vec<u8>, ContentDigest)> {
    let cert = files::read(&files.cert_file)?;
    let key = files::read(&files.key_file)?;
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(&cert);
    h.update(&key);
    Ok((cert, key, h.finalize().into()))
}

/// Current digest of the files (without parsing them).
pub fn current_digest(files: &UserCertFiles) -> Result<ContentDigest> {
    read_files(files).map(|(_, _, d)| d)
}

/// Reads, checks and parses the user-provided certificate and key.
pub fn load(files: &UserCertFiles, provider: &CryptoProvider) -> Result<UserCert> {
    files::check_private_key_mode_lenient(&files.key_file)?;
    let (cert_bytes, key_bytes, digest) = read_files(files)?;
    parse(
        &files.cert_file,
        &cert_bytes,
        &files.key_file,
        &key_bytes,
        digest,
        provider,
    )
}

fn parse(
    cert_path: &Path,
    cert_bytes: &[u8],
    key_path: &Path,
    key_bytes: &[u8],
    digest: ContentDigest,
    provider: &CryptoProvider,
) -> Result<UserCert> {
    let chain = files::parse_pem_certs(cert_path, cert_bytes)?;
    let key = files::parse_pem_key(key_path, key_bytes)?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: cert_path.to_path_buf(),
    })?;
    let facts = certinfo::facts(cert_path, leaf)?;
    let certified_key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
        },
        other => TlsError::BadKey {
            path: key_path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    let now = OffsetDateTime::now_utc();
    if facts.not_after <= now {
        tracing::warn!(
            path = %cert_path.display(),
            not_after = %certinfo::rfc3339(facts.not_after),
            "user-provided certificate has expired"
        );
    }
    Ok(UserCert {
        certified_key: Arc::new(certified_key),
        facts,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tls::test_util::{self_signed_pair, settings};

    #[test]
    fn only_one_path_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = settings(tmp.path());
        assert_eq!(UserCertFiles::from_settings(&s).expect("none"), None);
        s.cert_file = Some(tmp.path().join("c.pem"));
        let err = UserCertFiles::from_settings(&s).expect_err("half");
        assert!(err.to_string().contains("c.pem"), "{err}");
    }

    #[test]
    fn loads_pair_and_detects_mismatch() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cert_a, key_a) = self_signed_pair("a.example");
        let (_, key_b) = self_signed_pair("b.example");
        let files = UserCertFiles {
            cert_file: tmp.path().join("c.pem"),
            key_file: tmp.path().join("k.pem"),
        };
        fs::write(&files.cert_file, &cert_a).expect("write");
        fs::write(&files.key_file, &key_a).expect("write");
        fs::set_permissions(&files.key_file, fs::Permissions::from_mode(0o640)).expect("chmod");
        let provider = crate::tls::config::crypto_provider();
        let loaded = load(&files, &provider).expect("load");
        assert_eq!(loaded.facts.common_name.as_deref(), Some("a.example"));

        fs::write(&files.key_file, &key_b).expect("write");
        let err = load(&files, &provider).expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert_ne!(current_digest(&files).expect("digest"), loaded.digest);

        fs::set_permissions(&files.key_file, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load(&files, &provider).expect_err("world-readable");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn missing_file_named_in_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = UserCertFiles {
            cert_file: tmp.path().join("nope.pem"),
            key_file: tmp.path().join("nope.key"),
        };
        let err = load(&files, &crate::tls::config::crypto_provider()).expect_err("missing");
        assert!(err.to_string().contains("nope.key"), "{err}");
    }
}
