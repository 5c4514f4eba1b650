//! Reports on the certificates straight from disk, without a running
//! server: [`export_ca_pem`] for installing the CA on devices and
//! [`status`] for the CLI and the admin API.

use std::path::Path;

use serde::Serialize;

use super::certinfo::{self, CertInfo, CertSource};
use super::files::{self, CA_CERT_FILE, SERVER_CERT_FILE};
use super::{Result, TlsError};

/// Status of the TLS certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsStatus {
    /// The local CA, `None` if it has not been created yet.
    pub ca: Option<CertInfo>,
    /// The certificate served: the user-provided one if configured, else
    /// the generated one (`None` if not issued yet).
    pub server: Option<CertInfo>,
}

/// The local CA certificate (PEM) from `tls_dir`, checked to parse as a
/// certificate. Does not create a CA: if there is none yet this is
/// [`TlsError::CaNotFound`].
pub fn export_ca_pem(tls_dir: &Path) -> Result<String> {
    let path = tls_dir.join(CA_CERT_FILE);
    let Some(bytes) = files::read_optional(&path)? else {
        return Err(TlsError::CaNotFound { path });
    };
    let certs = files::parse_pem_certs(&path, &bytes)?;
    for der in &certs {
        certinfo::facts(&path, der)?;
    }
    Ok(files::as_text(&path, &bytes)?.to_owned())
}

/// Status of the CA in `tls_dir` and of the served certificate:
/// `user_cert` (the configured `cert_file`) if given, otherwise
/// `<tls_dir>/server.pem`.
pub fn status(tls_dir: &Path, user_cert: Option<&Path>) -> Result<TlsStatus> {
    let ca = first_cert_info(&tls_dir.join(CA_CERT_FILE), CertSource::Generated, false)?;
    let server = match user_cert {
        Some(path) => first_cert_info(path, CertSource::UserProvided, true)?,
        None => first_cert_info(
            &tls_dir.join(SERVER_CERT_FILE),
            CertSource::Generated,
            false,
        )?,
    };
    Ok(TlsStatus { ca, server })
}

impl std::fmt::Display for TlsStatus {
    /// Human-readable report, one `key: value` per line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_section(f, "Local CA", self.ca.as_ref(), "not created yet")?;
        write_section(
            f,
            "Server certificate",
            self.server.as_ref(),
            "not issued yet",
        )
    }
}

fn write_section(
    f: &mut std::fmt::Formatter<'_>,
    title: &str,
    info: Option<&CertInfo>,
    missing: &str,
) -> std::fmt::Result {
    let Some(c) = info else {
        return writeln!(f, "{title}: {missing}");
    };
    let source = match c.source {
        CertSource::Generated => "generated",
        CertSource::UserProvided => "user-provided",
    };
    writeln!(f, "{title} ({source}):")?;
    writeln!(f, "  subject:     {}", c.subject)?;
    writeln!(f, "  issuer:      {}", c.issuer)?;
    if !c.sans.is_empty() {
        writeln!(f, "  names:       {}", c.sans.join(", "))?;
    }
    writeln!(f, "  not before:  {}", c.not_before)?;
    writeln!(f, "  not after:   {}", c.not_after)?;
    writeln!(f, "  SHA-256:     {}", c.fingerprint_sha256)
}

fn first_cert_info(path: &Path, source: CertSource, required: bool) -> Result<Option<CertInfo>> {
    let bytes = if required {
        files::read(path)?
    } else {
        match files::read_optional(path)? {
            Some(b) => b,
            None => return Ok(None),
        }
    };
    let certs = files::parse_pem_certs(path, &bytes)?;
    let leaf = certs.first().ok_or_else(|| TlsError::NoCertificate {
        path: path.to_path_buf(),
    })?;
    certinfo::cert_info(path, leaf, source).map(Some)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    use super::*;
    use crate::tls::TlsManager;
    use crate::tls::test_util::{self_signed_pair, settings};

    #[test]
    fn status_of_generated_certs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let empty = status(tmp.path(), None).expect("empty status");
        assert_eq!(empty.ca, None);
        assert_eq!(empty.server, None);
        assert!(matches!(
            export_ca_pem(tmp.path()),
            Err(TlsError::CaNotFound { .. })
        ));

        let mgr = TlsManager::new(settings(tmp.path())).expect("manager");
        let st = status(tmp.path(), None).expect("status");
        let ca = st.ca.expect("ca");
        let server = st.server.expect("server");

        assert!(ca.subject.contains("Latchkey local CA ("), "{}", ca.subject);
        assert_eq!(ca.source, CertSource::Generated);
        assert_eq!(ca.fingerprint_sha256, mgr.ca_fingerprint_sha256());
        assert!(ca.sans.is_empty());

        assert_eq!(server.source, CertSource::Generated);
        assert_eq!(server.issuer, ca.subject);
        for want in ["localhost", "127.0.0.1", "::1"] {
            assert!(server.sans.iter().any(|s| s == want), "{:?}", server.sans);
        }
        let nb = OffsetDateTime::parse(&server.not_before, &Rfc3339).expect("rfc3339");
        let na = OffsetDateTime::parse(&server.not_after, &Rfc3339).expect("rfc3339");
        assert!(nb < OffsetDateTime::now_utc() && na > OffsetDateTime::now_utc());
        let fp = &server.fingerprint_sha256;
        assert_eq!(fp.len(), 95);
        assert!(
            fp.chars()
                .all(|c| c == ':' || c.is_ascii_digit() || ('A'..='F').contains(&c)),
            "{fp}"
        );

        let json = serde_json::to_value(mgr.status().expect("status")).expect("json");
        assert_eq!(json["server"]["source"], "generated");
        assert_eq!(json["ca"]["source"], "generated");

        let text = mgr.status().expect("status").to_string();
        assert!(text.contains("Local CA (generated):"), "{text}");
        assert!(text.contains(&mgr.ca_fingerprint_sha256()), "{text}");
        assert!(text.contains("localhost"), "{text}");

        let pem = export_ca_pem(tmp.path()).expect("export");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert_eq!(pem, fs::read_to_string(mgr.ca().cert_path()).expect("read"));
    }

    #[test]
    fn status_of_user_cert() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cert, _) = self_signed_pair("mine.example");
        let path = tmp.path().join("mine.pem");
        fs::write(&path, cert).expect("write");
        let st = status(tmp.path(), Some(&path)).expect("status");
        assert!(st.to_string().contains("Local CA: not created yet"), "{st}");
        let server = st.server.expect("server");
        assert_eq!(server.source, CertSource::UserProvided);
        assert_eq!(server.sans, vec!["mine.example".to_owned()]);
        let json = serde_json::to_value(&server).expect("json");
        assert_eq!(json["source"], "user-provided");

        let missing = tmp.path().join("missing.pem");
        let err = status(tmp.path(), Some(&missing)).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
