//! The generated server certificate: which names it must cover, issuing it
//! from the local CA, and deciding when to reissue it.
//!
//! The certificate is ECDSA P-256, signed by the [`LocalCa`], stored as
//! `<tls_dir>/server.pem` + `<tls_dir>/server.key` (0600), and covers
//! `localhost`, `127.0.0.1`, `::1`, the host name, `<host>.local`, every
//! non-loopback interface address (IPv6 link-local addresses excepted: they
//! need a zone index and cannot be used in a URL or certificate), and the
//! extra names and addresses from the settings.
//!
//! It is reissued when it is missing or unreadable, its key file is
//! accessible by group or others, it expires within `renew_before`, it does
//! not verify against the current CA, or its SAN set differs from the
//! wanted set.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use super::ca::{BACKDATE, LocalCa};
use super::certinfo::{self, CertFacts, San, normalize_dns};
use super::files::{self, CERT_FILE_MODE, KEY_FILE_MODE, SERVER_CERT_FILE, SERVER_KEY_FILE};
use super::{Result, TlsError, TlsSettings};

/// Longest accepted server certificate lifetime (Apple's limit for
/// certificates from user-installed roots).
pub const MAX_SERVER_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(825 * 24 * 3600);

/// This machine's host name, lower case, if it is a usable DNS name.
pub fn local_host_name() -> Option<String> {
    let name = gethostname::gethostname().into_string().ok()?;
    let name = normalize_dns(&name);
    valid_dns_name(&name, false).then_some(name)
}

/// Whether `name` is a syntactically valid DNS name (letters, digits and
/// hyphens in labels of 1..=63 characters). `allow_wildcard` permits a
/// leading `*.` label.
pub fn valid_dns_name(name: &str, allow_wildcard: bool) -> bool {
    let rest = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        _ => name,
    };
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A random positive 128-bit serial number from the ring provider's RNG.
pub fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| TlsError::Generate {
            what: "certificate serial number",
            source: rcgen::Error::RingUnspecified,
        })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // keep it 16 bytes long and non-zero
    Ok(SerialNumber::from_slice(&bytes))
}

/// The set of SANs the generated server certificate must carry.
pub fn wanted_sans(settings: &TlsSettings) -> Result<BTreeSet<San>> {
    let mut sans = BTreeSet::new();
    sans.insert(San::Dns("localhost".to_owned()));
    sans.insert(San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    sans.insert(San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    if let Some(host) = local_host_name() {
        let short = host.split('.').next().unwrap_or(&host).to_owned();
        if host.ends_with(".local") {
            sans.insert(San::Dns(host));
        } else {
            sans.insert(San::Dns(format!("{short}.local")));
            sans.insert(San::Dns(host));
        }
    }
    match if_addrs::get_if_addrs() {
        Ok(ifaces) => {
            for iface in ifaces {
                let ip = iface.ip();
                let v6_link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
                if !iface.is_loopback() && !v6_link_local {
                    sans.insert(San::Ip(ip));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list network interfaces"),
    }
    for name in &settings.extra_dns_names {
        let trimmed = name.trim();
        if let Ok(ip) = trimmed.parse::<IpAddr>() {
            sans.insert(San::Ip(ip));
            continue;
        }
        let norm = normalize_dns(trimmed);
        if !valid_dns_name(&norm, true) {
            return Err(TlsError::Settings(format!(
                "extra DNS name {name:?} is not a valid host name"
            )));
        }
        sans.insert(San::Dns(norm));
    }
    sans.extend(settings.extra_ips.iter().copied().map(San::Ip));
    Ok(sans)
}

/// Why a server certificate was (re)issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReissueReason {
    /// `server.pem` or `server.key` does not exist.
    Missing,
    /// The key file is accessible by group or others.
    InsecureKey,
    /// The files could not be read, parsed, or do not belong together.
    Unusable(String),
    /// Expires within `renew_before`.
    ExpiringSoon {
        /// Expiry, RFC 3339.
        not_after: String,
    },
    /// Does not verify against the current local CA (other CA, not yet
    /// valid, ...).
    NotFromCurrentCa(String),
    /// The names differ from the wanted set.
    SanMismatch {
        /// Wanted but absent.
        missing: Vec<String>,
        /// Present but not wanted.
        extra: Vec<String>,
    },
}

impl fmt::Display for ReissueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no server certificate yet"),
            Self::InsecureKey => f.write_str("server key file was accessible by group or others"),
            Self::Unusable(why) => write!(f, "existing server certificate unusable: {why}"),
            Self::ExpiringSoon { not_after } => write!(f, "expires soon ({not_after})"),
            Self::NotFromCurrentCa(why) => {
                write!(f, "does not verify against the local CA: {why}")
            }
            Self::SanMismatch { missing, extra } => write!(
                f,
                "names changed (missing: [{}], no longer wanted: [{}])",
                missing.join(", "),
                extra.join(", ")
            ),
        }
    }
}

/// A server certificate ready to serve.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// Chain (server certificate, then CA certificate) and key for rustls.
    pub certified_key: Arc<CertifiedKey>,
    /// Facts about the server certificate.
    pub facts: CertFacts,
}

impl ServerCert {
    /// The server (end-entity) certificate.
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.certified_key.cert.first()
    }
}

/// Inputs for [`load_or_issue`].
#[derive(Debug, Clone, Copy)]
pub struct IssuePolicy<'a> {
    /// Names the certificate must carry.
    pub wanted: &'a BTreeSet<San>,
    /// Lifetime of a new certificate.
    pub lifetime: std::time::Duration,
    /// Reissue when expiring within this.
    pub renew_before: std::time::Duration,
    /// The current time.
    pub now: OffsetDateTime,
}

/// Loads `server.pem`/`server.key` from `dir` if they are still good,
/// otherwise issues, stores and returns a new pair together with the reason.
pub fn load_or_issue(
    dir: &Path,
    ca: &LocalCa,
    provider: &Arc<CryptoProvider>,
    policy: IssuePolicy<'_>,
) -> Result<(ServerCert, Option<ReissueReason>)> {
    // Check and reissue as one step against any other writer of the pair.
    let _lock = files::lock_dir(dir)?;
    match check_existing(dir, ca, provider, policy)? {
        Ok(existing) => Ok((existing, None)),
        Err(reason) => {
            let cert = issue(dir, ca, provider, policy)?;
            Ok((cert, Some(reason)))
        }
    }
}

/// Returns the stored certificate if it needs no reissue, else the reason.
/// Only unexpected I/O problems (e.g. permission denied on the directory)
/// are errors.
fn check_existing(
    dir: &Path,
    ca: &LocalCa,
    provider: &Arc<CryptoProvider>,
    policy: IssuePolicy<'_>,
) -> Result<std::result::Result<ServerCert, ReissueReason>> {
    let cert_path = dir.join(SERVER_CERT_FILE);
    let key_path = dir.join(SERVER_KEY_FILE);
    let (Some(cert_bytes), true) = (files::read_optional(&cert_path)?, files::exists(&key_path)?)
    else {
        return Ok(Err(ReissueReason::Missing));
    };
    match files::check_private_key_mode(&key_path) {
        Ok(()) => {}
        Err(TlsError::InsecureKeyPermissions { .. }) => {
            tracing::warn!(
                path = %key_path.display(),
                "server key file is accessible by group or others; not using it"
            );
            return Ok(Err(ReissueReason::InsecureKey));
        }
        Err(e) => return Err(e),
    }
    let key_bytes = files::read(&key_path)?;
    let loaded = (|| -> Result<ServerCert> {
        let certs = files::parse_pem_certs(&cert_path, &cert_bytes)?;
        let key = files::parse_pem_key(&key_path, &key_bytes)?;
        let leaf = certs
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::NoCertificate {
                path: cert_path.clone(),
            })?;
        let facts = certinfo::facts(&cert_path, &leaf)?;
        let chain = vec![leaf, ca.cert_der().clone()];
        let certified_key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert_path: cert_path.clone(),
                key_path: key_path.clone(),
            },
            other => TlsError::BadKey {
                path: key_path.clone(),
                reason: other.to_string(),
            },
        })?;
        Ok(ServerCert {
            certified_key: Arc::new(certified_key),
            facts,
        })
    })();
    let existing = match loaded {
        Ok(c) => c,
        Err(e) => return Ok(Err(ReissueReason::Unusable(e.to_string()))),
    };
    if existing.facts.sans != *policy.wanted {
        let to_strings = |it: &mut dyn Iterator<Item = &San>| it.map(|s| s.to_string()).collect();
        return Ok(Err(ReissueReason::SanMismatch {
            missing: to_strings(&mut policy.wanted.difference(&existing.facts.sans)),
            extra: to_strings(&mut existing.facts.sans.difference(policy.wanted)),
        }));
    }
    if existing.facts.not_after - policy.renew_before <= policy.now {
        return Ok(Err(ReissueReason::ExpiringSoon {
            not_after: certinfo::rfc3339(existing.facts.not_after),
        }));
    }
    if let Err(why) = verify_against_ca(&existing, ca, provider, policy.now) {
        return Ok(Err(ReissueReason::NotFromCurrentCa(why)));
    }
    Ok(Ok(existing))
}

/// Full WebPKI verification of the stored chain against the CA as the only
/// root, for the name `localhost` (always among the wanted names).
fn verify_against_ca(
    cert: &ServerCert,
    ca: &LocalCa,
    provider: &Arc<CryptoProvider>,
    now: OffsetDateTime,
) -> std::result::Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der().clone())
        .map_err(|e| format!("CA certificate rejected: {e}"))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let leaf = cert.leaf().ok_or("empty chain")?;
    let secs = u64::try_from(now.unix_timestamp()).map_err(|_| "clock before 1970")?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(
            leaf,
            &[],
            &name,
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Issues a new server certificate, writes it to `dir`, and returns it.
pub fn issue(
    dir: &Path,
    ca: &LocalCa,
    provider: &Arc<CryptoProvider>,
    policy: IssuePolicy<'_>,
) -> Result<ServerCert> {
    let cert_path = dir.join(SERVER_CERT_FILE);
    let key_path = dir.join(SERVER_KEY_FILE);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let cn = local_host_name().unwrap_or_else(|| "localhost".to_owned());
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Latchkey");
    params.distinguished_name = dn;
    params.subject_alt_names = policy
        .wanted
        .iter()
        .map(|san| match san {
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            San::Dns(d) => d
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|source| TlsError::Generate {
                    what: "server certificate name",
                    source,
                }),
        })
        .collect::<Result<_>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = policy.now - BACKDATE;
    params.not_after = (policy.now + policy.lifetime).min(ca.facts().not_after);

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Generate {
            what: "server key",
            source,
        })?;
    let issuer = ca.issuer()?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| TlsError::Generate {
            what: "server certificate",
            source,
        })?;
    let facts = certinfo::facts(&cert_path, cert.der())?;
    if facts.issuer_raw != ca.facts().subject_raw {
        return Err(TlsError::BadCertificate {
            path: ca.cert_path().to_path_buf(),
            reason: "cannot reproduce the CA subject name when signing".to_owned(),
        });
    }
    let chain = vec![cert.der().clone(), ca.cert_der().clone()];
    let key_der = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    let certified_key = CertifiedKey::from_der(chain, key_der, provider)?;
    files::write_atomic(&key_path, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    files::write_atomic(&cert_path, cert.pem().as_bytes(), CERT_FILE_MODE)?;
    Ok(ServerCert {
        certified_key: Arc::new(certified_key),
        facts,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::tls::test_util::settings;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn policy(wanted: &BTreeSet<San>, lifetime: Duration, renew: Duration) -> IssuePolicy<'_> {
        IssuePolicy {
            wanted,
            lifetime,
            renew_before: renew,
            now: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn sans_include_loopback_host_and_extras() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = settings(tmp.path());
        s.extra_dns_names = vec!["Vault.Example.COM.".into(), "10.9.8.7".into()];
        s.extra_ips = vec!["192.0.2.10".parse().expect("ip")];
        let wanted = wanted_sans(&s).expect("sans");
        let ca = LocalCa::load_or_create(tmp.path()).expect("ca");
        let provider = crate::tls::config::crypto_provider();
        let (cert, reason) = load_or_issue(
            tmp.path(),
            &ca,
            &provider,
            policy(&wanted, 90 * DAY, 30 * DAY),
        )
        .expect("issue");
        assert_eq!(reason, Some(ReissueReason::Missing));
        let names: Vec<String> = cert.facts.sans.iter().map(ToString::to_string).collect();
        for want in [
            "localhost",
            "127.0.0.1",
            "::1",
            "vault.example.com",
            "10.9.8.7",
            "192.0.2.10",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing in {names:?}"
            );
        }
        if let Some(host) = local_host_name() {
            assert!(names.contains(&host), "{host} missing in {names:?}");
            let short = host.split('.').next().unwrap_or_default();
            assert!(names.contains(&format!("{short}.local")), "{names:?}");
        }
        assert_eq!(
            files::mode_of(&tmp.path().join(SERVER_KEY_FILE)).expect("mode"),
            0o600
        );
        assert_eq!(cert.certified_key.cert.len(), 2, "leaf + CA");
        assert_eq!(&cert.certified_key.cert[1], ca.cert_der());
        let lifetime = cert.facts.not_after - cert.facts.not_before;
        assert!(
            lifetime <= time::Duration::days(90) + time::Duration::hours(2),
            "{lifetime}"
        );

        // Reused when nothing changed.
        let (again, reason) = load_or_issue(
            tmp.path(),
            &ca,
            &provider,
            policy(&wanted, 90 * DAY, 30 * DAY),
        )
        .expect("reuse");
        assert_eq!(reason, None);
        assert_eq!(again.leaf(), cert.leaf());
    }

    #[test]
    fn invalid_extra_name_rejected() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = settings(tmp.path());
        s.extra_dns_names = vec!["bad name!".into()];
        let err = wanted_sans(&s).expect_err("invalid");
        assert!(err.to_string().contains("bad name!"), "{err}");
    }

    #[test]
    fn reissued_on_san_change() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::load_or_create(tmp.path()).expect("ca");
        let provider = crate::tls::config::crypto_provider();
        let mut s = settings(tmp.path());
        let wanted = wanted_sans(&s).expect("sans");
        let (first, _) = load_or_issue(
            tmp.path(),
            &ca,
            &provider,
            policy(&wanted, 90 * DAY, 30 * DAY),
        )
        .expect("issue");
        s.extra_dns_names = vec!["new.example".into()];
        let wanted2 = wanted_sans(&s).expect("sans");
        let (second, reason) = load_or_issue(
            tmp.path(),
            &ca,
            &provider,
            policy(&wanted2, 90 * DAY, 30 * DAY),
        )
        .expect("reissue");
        match reason {
            Some(ReissueReason::SanMismatch { missing, extra }) => {
                assert_eq!(missing, vec!["new.example".to_owned()]);
                assert!(extra.is_empty());
            }
            other => panic!("unexpected reason {other:?}"),
        }
        assert_ne!(first.leaf(), second.leaf());
        assert!(second.facts.sans.contains(&San::Dns("new.example".into())));
    }

    #[test]
    fn reissued_near_expiry() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::load_or_create(tmp.path()).expect("ca");
        let provider = crate::tls::config::crypto_provider();
        let wanted = wanted_sans(&settings(tmp.path())).expect("sans");
        let p = policy(&wanted, 2 * DAY, 3 * DAY);
        let (first, _) = load_or_issue(tmp.path(), &ca, &provider, p).expect("issue");
        let lifetime = first.facts.not_after - first.facts.not_before;
        assert!(lifetime < time::Duration::days(3), "{lifetime}");
        let (second, reason) = load_or_issue(tmp.path(), &ca, &provider, p).expect("reissue");
        assert!(
            matches!(reason, Some(ReissueReason::ExpiringSoon { .. })),
            "{reason:?}"
        );
        assert_ne!(first.leaf(), second.leaf());
    }

    #[test]
    fn reissued_when_ca_changes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::load_or_create(tmp.path()).expect("ca");
        let other_ca = LocalCa::load_or_create(other.path()).expect("other ca");
        let provider = crate::tls::config::crypto_provider();
        let wanted = wanted_sans(&settings(tmp.path())).expect("sans");
        let p = policy(&wanted, 90 * DAY, 30 * DAY);
        load_or_issue(tmp.path(), &other_ca, &provider, p).expect("issue by other CA");
        let (_, reason) = load_or_issue(tmp.path(), &ca, &provider, p).expect("reissue");
        assert!(
            matches!(reason, Some(ReissueReason::NotFromCurrentCa(_))),
            "{reason:?}"
        );
        let (_, reason) = load_or_issue(tmp.path(), &ca, &provider, p).expect("stable");
        assert_eq!(reason, None);
    }

    #[test]
    fn reissued_when_key_loose_or_garbage() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::load_or_create(tmp.path()).expect("ca");
        let provider = crate::tls::config::crypto_provider();
        let wanted = wanted_sans(&settings(tmp.path())).expect("sans");
        let p = policy(&wanted, 90 * DAY, 30 * DAY);
        load_or_issue(tmp.path(), &ca, &provider, p).expect("issue");
        let key_path = tmp.path().join(SERVER_KEY_FILE);
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let (_, reason) = load_or_issue(tmp.path(), &ca, &provider, p).expect("reissue");
        assert_eq!(reason, Some(ReissueReason::InsecureKey));
        assert_eq!(files::mode_of(&key_path).expect("mode"), 0o600);
        fs::write(tmp.path().join(SERVER_CERT_FILE), "garbage").expect("write");
        let (_, reason) = load_or_issue(tmp.path(), &ca, &provider, p).expect("reissue");
        assert!(
            matches!(reason, Some(ReissueReason::Unusable(_))),
            "{reason:?}"
        );
    }

    #[test]
    fn dns_name_validation() {
        assert!(valid_dns_name("nas", false));
        assert!(valid_dns_name("my-nas.example.com", false));
        assert!(!valid_dns_name("-bad", false));
        assert!(!valid_dns_name("a..b", false));
        assert!(!valid_dns_name("*.example.com", false));
        assert!(valid_dns_name("*.example.com", true));
        assert!(!valid_dns_name("", false));
    }
}
