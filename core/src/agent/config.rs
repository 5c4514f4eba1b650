//! `[agents.<name>]`: the settings of one local agent backend, and turning
//! them into a checked [`Agent`] once at startup.
//!
//! Every error names its key (`agents.notes.upstream: …`), like the rest of
//! the configuration.

use crate::auth::scope::{AgentName, Role, Scope};
use crate::net::upstream::{PlainHttp, Upstream, parse_upstream, read_ca_file};
use axum::http::uri::{Authority, Scheme};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    #[serde(with = "crate::duration_str")]
    pub connect_timeout: Duration,
    /// Until the backend's response headers arrive.
    #[serde(with = "crate::duration_str")]
    pub first_byte_timeout: Duration,
    /// Longest silence inside a response body or a WebSocket.
    #[serde(with = "crate::duration_str")]
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
    let Upstream {
        scheme,
        authority,
        base_path,
    } = parse_upstream(upstream, PlainHttp::Local).map_err(|m| (key("upstream"), m))?;
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
