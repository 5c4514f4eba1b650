//! Reading facts out of an X.509 certificate (subject, SANs, validity,
//! fingerprint) with `x509-parser`, for status reports and renewal decisions.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{Result, TlsError};

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertSource {
    /// Made by this appliance (local CA or server certificate it signed).
    Generated,
    /// Supplied by the administrator (`cert_file` / `key_file`).
    UserProvided,
}

/// A subject alternative name, normalised for comparison.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    /// A DNS name, lower case, without trailing dot.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(d) => f.write_str(d),
            San::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Facts about one certificate, as reported by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=Latchkey local CA (nas)`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Subject alternative names (DNS names and IP addresses).
    pub sans: Vec<String>,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// SHA-256 of the DER certificate, `AB:CD:...` like `openssl x509 -fingerprint -sha256`.
    pub fingerprint_sha256: String,
    /// Serial number, hex.
    pub serial: String,
    /// Where it came from.
    pub source: CertSource,
}

/// Parsed essentials of a certificate used internally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject DN as text.
    pub subject: String,
    /// Issuer DN as text.
    pub issuer: String,
    /// Raw DER of the subject name.
    pub subject_raw: Vec<u8>,
    /// Raw DER of the issuer name.
    pub issuer_raw: Vec<u8>,
    /// First common name of the subject, if any.
    pub common_name: Option<String>,
    /// SANs.
    pub sans: BTreeSet<San>,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
    /// Whether basic constraints say CA.
    pub is_ca: bool,
    /// Raw subject public key bits.
    pub public_key: Vec<u8>,
    /// Serial number, hex.
    pub serial: String,
}

/// Colon-separated upper-case hex SHA-256 of `der`, like openssl prints.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex = hex::encode_upper(digest);
    let mut out = String::with_capacity(hex.len() + hex.len() / 2);
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(pair[0]));
        if let Some(&c) = pair.get(1) {
            out.push(char::from(c));
        }
    }
    out
}

/// Formats a timestamp as RFC 3339.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn parse<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Extracts [`CertFacts`] from DER. `path` is only used in errors.
pub fn facts(path: &Path, der: &[u8]) -> Result<CertFacts> {
    let cert = parse(path, der)?;
    let bad = |reason: String| TlsError::BadCertificate {
        path: path.to_path_buf(),
        reason,
    };
    let mut sans = BTreeSet::new();
    let san_ext = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("subjectAltName: {e}")))?;
    if let Some(ext) = san_ext {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    sans.insert(San::Dns(normalize_dns(d)));
                }
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        sans.insert(San::Ip(ip));
                    }
                }
                _ => {}
            }
        }
    }
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| bad(format!("basicConstraints: {e}")))?
        .map(|bc| bc.value.ca)
        .unwrap_or(false);
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(CertFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        subject_raw: cert.subject().as_raw().to_vec(),
        issuer_raw: cert.issuer().as_raw().to_vec(),
        common_name,
        sans,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        serial: hex::encode(cert.raw_serial()),
    })
}

/// Builds the reported [`CertInfo`] from DER.
pub fn cert_info(path: &Path, der: &[u8], source: CertSource) -> Result<CertInfo> {
    let f = facts(path, der)?;
    Ok(CertInfo {
        subject: f.subject,
        issuer: f.issuer,
        sans: f.sans.iter().map(ToString::to_string).collect(),
        not_before: rfc3339(f.not_before),
        not_after: rfc3339(f.not_after),
        fingerprint_sha256: fingerprint_sha256(der),
        serial: f.serial,
        source,
    })
}

/// Lower-cases a DNS name and strips a trailing dot.
pub fn normalize_dns(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(b)));
    }
    if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        return Some(IpAddr::V6(Ipv6Addr::from(b)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format_matches_openssl_style() {
        let fp = fingerprint_sha256(b"abc");
        // SHA-256("abc") = ba7816bf...
        assert!(fp.starts_with("BA:78:16:BF:"), "{fp}");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(!fp.ends_with(':'));
    }

    #[test]
    fn garbage_certificate_names_the_file() {
        let err = facts(Path::new("/tls/server.pem"), b"\x30\x03abc").expect_err("bad");
        assert!(err.to_string().contains("/tls/server.pem"), "{err}");
    }

    #[test]
    fn dns_normalization() {
        assert_eq!(normalize_dns(" NAS.Local. "), "nas.local");
    }
}
