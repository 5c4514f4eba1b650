//! `[agents.<name>]`: the settings of one local agent backend, and turning
//! them into a checked [`Agent`] once at startup.
//!
//! Every error names its key (`agents.notes.upstream: …`), like the rest of
//! the configuration.

use crate::auth::scope::{AgentName, Role, Scope};
use axum::http::Uri;
use axum::http::uri::{Authority, Scheme};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[agents.<name>]` as written in the file. Only `upstream` is required.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// The backend's origin and optional base path, e.g.
    /// `http://127.0.0.1:3000` or `https://notes.internal/app`.
    pub upstream: Option<String>,
    /// Roles whose members may reach the backend (default: admin, user).
    pub roles: Vec<Role>,
    /// Whether WebSocket upgrades are passed through.
    pub websocket: bool,
    /// Extra CA certificates (PEM) trusted for an `https` upstream, beside
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    #[serde(with = "crate::config::duration_str")]
    pub connect_timeout: Duration,
    /// Until the backend's response headers arrive.
    #[serde(with = "crate::config::duration_str")]
    pub first_byte_timeout: Duration,
    /// Longest silence inside a response body or a WebSocket.
    #[serde(with = "crate::config::duration_str")]
    pub idle_timeout: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            upstream: None,
            roles: vec![Role::Admin, Role::User],
            websocket: true,
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// One checked agent backend.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    /// `agent:<name>`: what an API key needs.
    pub scope: Scope,
    pub scheme: Scheme,
    pub authority: Authority,
    /// The base path without a trailing slash (often empty).
    pub base_path: String,
    pub roles: Vec<Role>,
    pub websocket: bool,
    /// The PEM certificates of `ca_file`, read at startup.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Checks every section; the error is `(key, message)`.
pub fn resolve_all(
    agents: &BTreeMap<String, AgentSettings>,
) -> Result<Vec<Agent>, (String, String)> {
    agents.iter().map(|(name, s)| resolve(name, s)).collect()
}

/// Checks one `[agents.<name>]` section.
pub fn resolve(name: &str, s: &AgentSettings) -> Result<Agent, (String, String)> {
    let key = |field: &str| format!("agents.{name}.{field}");
    AgentName::new(name).map_err(|e| (format!("agents.{name}"), e))?;
    let scope = Scope::agent(name).map_err(|e| (format!("agents.{name}"), e.to_string()))?;
    let upstream = s.upstream.as_deref().ok_or_else(|| {
        (
            key("upstream"),
            "the backend's URL is needed, e.g. upstream = \"http://127.0.0.1:3000\"".to_string(),
        )
    })?;
    let (scheme, authority, base_path) =
        parse_upstream(upstream).map_err(|m| (key("upstream"), m))?;
    if s.roles.is_empty() {
        return Err((
            key("roles"),
            "at least one role (admin, user or guest) is needed".into(),
        ));
    }
    let extra_roots = match &s.ca_file {
        None => Vec::new(),
        Some(_) if scheme != Scheme::HTTPS => {
            return Err((
                key("ca_file"),
                "a CA file only applies to an https upstream".into(),
            ));
        }
        Some(path) => read_ca_file(path).map_err(|m| (key("ca_file"), m))?,
    };
    for (field, d) in [
        ("connect_timeout", s.connect_timeout),
        ("first_byte_timeout", s.first_byte_timeout),
        ("idle_timeout", s.idle_timeout),
    ] {
        if d.is_zero() {
            return Err((key(field), "must be greater than zero".into()));
        }
    }
    let mut roles = s.roles.clone();
    roles.dedup();
    Ok(Agent {
        name: name.to_string(),
        scope,
        scheme,
        authority,
        base_path,
        roles,
        websocket: s.websocket,
        extra_roots,
        connect_timeout: s.connect_timeout,
        first_byte_timeout: s.first_byte_timeout,
        idle_timeout: s.idle_timeout,
    })
}

fn read_ca_file(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// `scheme://host[:port][/base]`: no user info, query or fragment. Plain
/// `http` only to hosts that are plainly local: loopback, private and
/// link-local addresses, and single-label or `.local`/`.internal`/`.lan`/
/// `.home.arpa` names (containers, the LAN) — identity headers and the
/// assertion must not cross the internet in clear.
fn parse_upstream(u: &str) -> Result<(Scheme, Authority, String), String> {
    let uri: Uri = u
        .parse()
        .map_err(|_| format!("`{u}` is not a URL like http://127.0.0.1:3000"))?;
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
        if !is_local_host(authority.host()) {
            return Err(
                "plain http is only allowed to local backends (loopback, private addresses, \
                 single-label or .local/.internal/.lan names); use https"
                    .into(),
            );
        }
    } else if scheme != Scheme::HTTPS {
        return Err(format!("`{u}` needs http:// or https://"));
    }
    let base = uri.path().trim_end_matches('/').to_string();
    if base.contains("//") || base.split('/').any(|s| s == ".." || s == ".") || base.contains('%') {
        return Err("the upstream path must be plain".into());
    }
    Ok((scheme, authority, base))
}

fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
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

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml: &str) -> AgentSettings {
        toml::from_str(toml).expect("section")
    }

    #[test]
    fn defaults_and_base_paths() {
        let a = resolve(
            "notes",
            &section("upstream = \"http://127.0.0.1:3000/app/\""),
        )
        .expect("notes");
        assert_eq!(a.authority.as_str(), "127.0.0.1:3000");
        assert_eq!(a.base_path, "/app");
        assert_eq!(a.roles, vec![Role::Admin, Role::User]);
        assert!(a.websocket);
        assert_eq!(a.scope.to_string(), "agent:notes");
        for ok in [
            "http://notes:8080",
            "http://10.1.2.3",
            "http://192.168.1.20:8000",
            "http://[::1]:9",
            "http://[fd00::1]",
            "http://nas.local",
            "http://box.home.arpa",
            "https://notes.example.com",
        ] {
            assert!(
                resolve("a", &section(&format!("upstream = \"{ok}\""))).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn errors_name_the_key() {
        let err = |name: &str, t: &str| resolve(name, &section(t)).expect_err("error").0;
        assert_eq!(err("notes", ""), "agents.notes.upstream");
        assert_eq!(
            err("notes", "upstream = \"http://notes.example.com\""),
            "agents.notes.upstream"
        );
        assert_eq!(
            err("notes", "upstream = \"http://8.8.8.8\""),
            "agents.notes.upstream"
        );
        assert_eq!(
            err("notes", "upstream = \"https://u:p@x.example\""),
            "agents.notes.upstream"
        );
        assert_eq!(
            err("notes", "upstream = \"https://x.example/?a=1\""),
            "agents.notes.upstream"
        );
        assert_eq!(
            err("notes", "upstream = \"ftp://x\""),
            "agents.notes.upstream"
        );
        assert_eq!(
            err("notes", "upstream = \"https://x.example/a/../b\""),
            "agents.notes.upstream"
        );
        assert_eq!(
            err("notes", "upstream = \"http://127.0.0.1\"\nroles = []"),
            "agents.notes.roles"
        );
        assert_eq!(
            err(
                "notes",
                "upstream = \"http://127.0.0.1\"\nca_file = \"/x.pem\""
            ),
            "agents.notes.ca_file"
        );
        assert_eq!(
            err(
                "notes",
                "upstream = \"https://x.example\"\nca_file = \"/nonexistent/ca.pem\""
            ),
            "agents.notes.ca_file"
        );
        assert_eq!(
            err(
                "notes",
                "upstream = \"http://127.0.0.1\"\nidle_timeout = \"0s\""
            ),
            "agents.notes.idle_timeout"
        );
        assert_eq!(
            err("Notes", "upstream = \"http://127.0.0.1\""),
            "agents.Notes"
        );
        assert_eq!(err("a/b", "upstream = \"http://127.0.0.1\""), "agents.a/b");
    }

    #[test]
    fn bad_role_names_are_refused_by_serde() {
        assert!(toml::from_str::<AgentSettings>("roles = [\"owner\"]").is_err());
        assert!(toml::from_str::<AgentSettings>("websocket = \"yes\"").is_err());
        assert!(toml::from_str::<AgentSettings>("nope = 1").is_err());
        let s = section("roles = [\"guest\", \"admin\"]\nwebsocket = false");
        assert_eq!(s.roles, vec![Role::Guest, Role::Admin]);
        assert!(!s.websocket);
    }
}
