//! Where requests are forwarded to, as the configuration says it:
//! `upstream = "scheme://host[:port][/base]"` of `[providers.<name>]` and
//! `[agents.<name>]`, and the PEM `ca_file` of extra CA certificates
//! (providers, agents, OAuth connections). The callers put the key in
//! front of the messages (`providers.openai.upstream: …`).

use axum::http::Uri;
use axum::http::uri::{Authority, Scheme};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::net::IpAddr;
use std::path::Path;

/// An upstream's origin and base path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The path below which requests go, without a trailing `/` (empty:
    /// the root).
    pub base_path: String,
}

/// Where plain `http` may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainHttp {
    /// Loopback hosts only (providers: a model server on this machine).
    Loopback,
    /// Hosts that are plainly local: loopback, private and link-local
    /// addresses, single-label or `.local`/`.internal`/`.lan`/`.home.arpa`/
    /// `.localhost` names (agent backends in containers or on the LAN) —
    /// identity headers and the assertion must not cross the internet in
    /// clear.
    Local,
}

impl PlainHttp {
    /// The example an error shows.
    fn example(self) -> &'static str {
        match self {
            PlainHttp::Loopback => "https://api.example.com",
            PlainHttp::Local => "http://127.0.0.1:3000",
        }
    }

    fn allows(self, host: &str) -> bool {
        match self {
            PlainHttp::Loopback => is_loopback_host(host),
            PlainHttp::Local => is_local_host(host),
        }
    }

    fn refusal(self) -> &'static str {
        match self {
            PlainHttp::Loopback => "plain http is only allowed to loopback upstreams; use https",
            PlainHttp::Local => {
                "plain http is only allowed to local backends (loopback, private addresses, \
                 single-label or .local/.internal/.lan names); use https"
            }
        }
    }
}

/// `scheme://host[:port][/base]`: `http` (to the hosts `plain_http`
/// allows) or `https`; no user info, query or fragment; a plain base path
/// (no `//`, `.` or `..` segments, no percent-encoding).
pub fn parse_upstream(u: &str, plain_http: PlainHttp) -> Result<Upstream, String> {
    let uri: Uri = u
        .parse()
        .map_err(|_| format!("`{u}` is not a URL like {}", plain_http.example()))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("`{u}` needs http:// or https://"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{u}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err("user info (`user@`) is not allowed in an upstream".into());
    }
    if uri.query().is_some() || u.contains('#') {
        return Err("an upstream has no query or fragment".into());
    }
    if scheme == Scheme::HTTP {
        if !plain_http.allows(authority.host()) {
            return Err(plain_http.refusal().into());
        }
    } else if scheme != Scheme::HTTPS {
        return Err(format!("`{u}` needs http:// or https://"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    if base_path.contains("//")
        || base_path.split('/').any(|s| s == ".." || s == ".")
        || base_path.contains('%')
    {
        return Err("the upstream path must be plain".into());
    }
    Ok(Upstream {
        scheme,
        authority,
        base_path,
    })
}

fn unbracketed(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

fn is_loopback_host(host: &str) -> bool {
    let host = unbracketed(host);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_local_host(host: &str) -> bool {
    let host = unbracketed(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
            IpAddr::V6(v6) => {
                v6.is_loopback()
                    || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                    || (v6.segments()[0] & 0xffc0) == 0xfe80 // link-local
            }
        };
    }
    let host = host.to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    !host.contains('.')
        || [".local", ".internal", ".lan", ".home.arpa", ".localhost"]
            .iter()
            .any(|s| host.ends_with(s))
}

/// Every certificate of a PEM file (`ca_file`): at least one, each usable
/// as a trust anchor.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{shown}` is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "`{shown}` holds no certificate (expected -----BEGIN CERTIFICATE-----)"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in &certs {
        roots
            .add(c.clone())
            .map_err(|e| format!("`{shown}` holds a certificate that cannot be a CA: {e}"))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_base_paths() {
        let u = parse_upstream("https://api.example.com/v1/", PlainHttp::Loopback).expect("ok");
        assert_eq!(u.scheme, Scheme::HTTPS);
        assert_eq!(u.authority.as_str(), "api.example.com");
        assert_eq!(u.base_path, "/v1");
        let u = parse_upstream("http://[::1]:8080", PlainHttp::Loopback).expect("ok");
        assert_eq!(u.base_path, "");
        for bad in [
            "ftp://x.example",
            "https://u@x.example",
            "https://x.example/?a=1",
            "https://x.example/#f",
            "https://x.example/a//b",
            "https://x.example/a/../b",
            "https://x.example/a/%2e",
            "/relative",
        ] {
            assert!(parse_upstream(bad, PlainHttp::Local).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_goes_only_where_the_rule_allows() {
        for (host, loopback, local) in [
            ("127.0.0.1:1", true, true),
            ("localhost", true, true),
            ("[::1]", true, true),
            ("10.1.2.3", false, true),
            ("192.168.1.5", false, true),
            ("[fd00::5]", false, true),
            ("notes", false, true),
            ("nas.lan", false, true),
            ("svc.internal.", false, true),
            ("api.example.com", false, false),
            ("8.8.8.8", false, false),
        ] {
            let u = format!("http://{host}");
            assert_eq!(
                parse_upstream(&u, PlainHttp::Loopback).is_ok(),
                loopback,
                "{u}"
            );
            assert_eq!(parse_upstream(&u, PlainHttp::Local).is_ok(), local, "{u}");
        }
        let e = parse_upstream("http://api.example.com", PlainHttp::Loopback).expect_err("no");
        assert!(e.contains("loopback upstreams"), "{e}");
        let e = parse_upstream("not a url", PlainHttp::Local).expect_err("no");
        assert!(e.contains("http://127.0.0.1:3000"), "{e}");
    }

    #[test]
    fn ca_files_must_hold_usable_certificates() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing.pem");
        assert!(
            read_ca_file(&missing)
                .expect_err("missing")
                .contains("cannot read")
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").expect("write");
        assert!(
            read_ca_file(&empty)
                .expect_err("empty")
                .contains("holds no certificate")
        );
        // Well-formed PEM whose contents are no certificate.
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let e = read_ca_file(&junk).expect_err("junk");
        assert!(e.contains("cannot be a CA"), "{e}");
    }
}
