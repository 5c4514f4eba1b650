//! Providers: the presets, and turning `[providers.<name>]` into a checked
//! [`Provider`] once at startup.
//!
//! A provider exists only when its section is present. A section named
//! after a preset starts from the preset's upstream and credential style;
//! any other name is a custom provider and needs `upstream`.

use super::settings::ProviderSettings;
use crate::auth::scope::{EntryName, ProviderName, Scope};
use crate::net::upstream::{PlainHttp, Upstream, parse_upstream, read_ca_file};
use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use std::collections::BTreeMap;
use std::time::Duration;

/// How the provider's credential reaches the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// Local servers that need no key.
    None,
    /// A header whose value is `format` with `{secret}` replaced.
    Header { name: HeaderName, format: String },
    /// A query parameter (any such parameter from the client is dropped).
    Query { param: String },
}

/// One checked provider.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    /// `proxy:<name>`: what a key needs to use it.
    pub scope: Scope,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `Host` for upstream requests (the authority), made once.
    pub host: HeaderValue,
    /// The upstream's base path without a trailing slash (often empty).
    pub base_path: String,
    /// The vault entry holding the credential.
    pub secret: Option<String>,
    /// Or: the connection (`[connections.<name>]`) whose access token, of
    /// the calling key's owner, is the credential.
    pub connection: Option<String>,
    pub injection: Injection,
    /// Sent when the client did not send them (e.g. `anthropic-version`).
    pub default_headers: Vec<(HeaderName, HeaderValue)>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// `sse_keepalive_secs` of this section; `None`: the `[proxy]` default.
    pub sse_keepalive: Option<Duration>,
    /// Extra trusted CA certificates from `ca_file` (DER).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// WebSocket upgrades (realtime sessions) are accepted.
    pub websocket: bool,
}

/// A preset's defaults.
struct Preset {
    upstream: &'static str,
    /// `(header, format)`, or `None` for key-less local servers.
    header: Option<(&'static str, &'static str)>,
    default_headers: &'static [(&'static str, &'static str)],
}

const BEARER: Option<(&str, &str)> = Some(("authorization", "Bearer {secret}"));

fn preset(name: &str) -> Option<Preset> {
    let (upstream, header, default_headers): (_, _, &'static [(&str, &str)]) = match name {
        "openai" => ("https://api.openai.com", BEARER, &[]),
        "anthropic" => (
            "https://api.anthropic.com",
            Some(("x-api-key", "{secret}")),
            &[("anthropic-version", "2023-06-01")],
        ),
        "gemini" => (
            "https://generativelanguage.googleapis.com",
            Some(("x-goog-api-key", "{secret}")),
            &[],
        ),
        "mistral" => ("https://api.mistral.ai", BEARER, &[]),
        "groq" => ("https://api.groq.com/openai", BEARER, &[]),
        "openrouter" => ("https://openrouter.ai/api", BEARER, &[]),
        "ollama" => ("http://127.0.0.1:11434", None, &[]),
        "llamacpp" => ("http://127.0.0.1:8080", None, &[]),
        "vllm" => ("http://127.0.0.1:8000", None, &[]),
        // The APIs behind the connection presets: the credential is the
        // user's connection of the same name (`connection` defaults to it).
        "spotify" => ("https://api.spotify.com", BEARER, &[]),
        "google" => ("https://www.googleapis.com", BEARER, &[]),
        "github" => (
            "https://api.github.com",
            BEARER,
            &[("x-github-api-version", "2022-11-28")],
        ),
        "microsoft" => ("https://graph.microsoft.com", BEARER, &[]),
        "slack" => ("https://slack.com/api", BEARER, &[]),
        "notion" => (
            "https://api.notion.com",
            BEARER,
            &[("notion-version", "2022-06-28")],
        ),
        // Realtime (WebSocket) APIs; docs/PROXY.md says what each was
        // checked against.
        "deepgram" => (
            "https://api.deepgram.com",
            Some(("authorization", "Token {secret}")),
            &[],
        ),
        "elevenlabs" => (
            "https://api.elevenlabs.io",
            Some(("xi-api-key", "{secret}")),
            &[],
        ),
        "cartesia" => (
            "https://api.cartesia.ai",
            Some(("x-api-key", "{secret}")),
            &[("cartesia-version", "2024-06-10")],
        ),
        _ => return None,
    };
    Some(Preset {
        upstream,
        header,
        default_headers,
    })
}

/// The names of the presets, for documentation and errors.
pub const PRESETS: [&str; 18] = [
    "openai",
    "anthropic",
    "gemini",
    "mistral",
    "groq",
    "openrouter",
    "ollama",
    "llamacpp",
    "vllm",
    "spotify",
    "google",
    "github",
    "microsoft",
    "slack",
    "notion",
    "deepgram",
    "elevenlabs",
    "cartesia",
];

/// Presets whose WebSocket (realtime) endpoints are open by default
/// (`websocket = true` unless the section says otherwise).
pub const REALTIME_PRESETS: [&str; 4] = ["openai", "deepgram", "elevenlabs", "cartesia"];

/// Presets whose credential is a user's connection, not a vault entry.
const CONNECTION_PRESETS: [&str; 6] = [
    "spotify",
    "google",
    "github",
    "microsoft",
    "slack",
    "notion",
];

/// Checks every section; the error names the key, e.g.
/// `providers.openai.upstream`.
pub fn resolve_all(
    providers: &BTreeMap<String, ProviderSettings>,
) -> Result<Vec<Provider>, (String, String)> {
    providers.iter().map(|(name, s)| resolve(name, s)).collect()
}

/// Checks one `[providers.<name>]` section.
pub fn resolve(name: &str, s: &ProviderSettings) -> Result<Provider, (String, String)> {
    let key = |field: &str| format!("providers.{name}.{field}");
    ProviderName::new(name).map_err(|e| (format!("providers.{name}"), e))?;
    let scope = Scope::proxy(name).map_err(|e| (format!("providers.{name}"), e.to_string()))?;
    let preset = preset(name);
    let upstream = match (&s.upstream, &preset) {
        (Some(u), _) => u.as_str(),
        (None, Some(p)) => p.upstream,
        (None, None) => {
            return Err((
                key("upstream"),
                format!(
                    "`{name}` is not a preset ({}), so it needs an upstream URL",
                    PRESETS.join(", ")
                ),
            ));
        }
    };
    let Upstream {
        scheme,
        authority,
        base_path,
    } = parse_upstream(upstream, PlainHttp::Loopback).map_err(|m| (key("upstream"), m))?;

    if s.auth_query.is_some() && (s.auth_header.is_some() || s.auth_format.is_some()) {
        return Err((
            key("auth_query"),
            "use either auth_query or auth_header/auth_format, not both".into(),
        ));
    }
    let injection = if let Some(param) = &s.auth_query {
        if param.is_empty()
            || !param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err((
                key("auth_query"),
                "a query parameter name of letters, digits, `_`, `-` and `.`".into(),
            ));
        }
        Injection::Query {
            param: param.clone(),
        }
    } else {
        let header = match (&s.auth_header, preset.as_ref().and_then(|p| p.header)) {
            (Some(h), _) => Some(h.to_ascii_lowercase()),
            (None, Some((h, _))) => Some(h.to_string()),
            (None, None) => None,
        };
        match header {
            None if s.auth_format.is_some() => {
                return Err((key("auth_header"), "auth_format needs auth_header".into()));
            }
            None => Injection::None,
            Some(h) => {
                let name_h = HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| (key("auth_header"), format!("`{h}` is not a header name")))?;
                if crate::net::headers::is_hop_by_hop(&name_h) || name_h == "host" {
                    return Err((
                        key("auth_header"),
                        format!("`{h}` cannot carry a credential"),
                    ));
                }
                let format = match (&s.auth_format, preset.as_ref().and_then(|p| p.header)) {
                    (Some(f), _) => f.clone(),
                    (None, Some((ph, pf))) if ph == h => pf.to_string(),
                    (None, _) => "{secret}".to_string(),
                };
                if format.matches("{secret}").count() != 1 {
                    return Err((
                        key("auth_format"),
                        "must contain `{secret}` exactly once, e.g. \"Bearer {secret}\"".into(),
                    ));
                }
                if HeaderValue::from_str(&format.replace("{secret}", "x")).is_err() {
                    return Err((key("auth_format"), "not a valid header value".into()));
                }
                Injection::Header {
                    name: name_h,
                    format,
                }
            }
        }
    };
    if s.secret.is_some() && s.connection.is_some() {
        return Err((
            key("connection"),
            "use either secret (a vault entry) or connection (a user's OAuth connection), not both"
                .into(),
        ));
    }
    // Connection presets use their connection unless a vault secret is set.
    let connection = match &s.connection {
        Some(c) => Some(c.clone()),
        None if s.secret.is_none() && CONNECTION_PRESETS.contains(&name) => Some(name.to_string()),
        None => None,
    };
    if let Some(c) = &connection {
        ProviderName::new(c).map_err(|e| (key("connection"), e))?;
        if injection == Injection::None {
            return Err((
                key("auth_header"),
                "a connection is set but nothing says how to send its token: set auth_header (e.g. authorization with auth_format = \"Bearer {secret}\")".into(),
            ));
        }
    }
    let secret = match (&s.secret, &injection) {
        _ if connection.is_some() => None,
        (Some(sec), _) => {
            EntryName::new(sec).map_err(|e| (key("secret"), e))?;
            if injection == Injection::None {
                return Err((
                    key("auth_header"),
                    "a secret is set but nothing says how to send it: set auth_header or auth_query"
                        .into(),
                ));
            }
            Some(sec.clone())
        }
        (None, Injection::None) => None,
        (None, _) => {
            return Err((
                key("secret"),
                "the vault entry holding this provider's key is needed".into(),
            ));
        }
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
    if s.sse_keepalive_secs.is_some_and(|n| n > 3600) {
        return Err((
            key("sse_keepalive_secs"),
            "must be 0 (off) to 3600 seconds".into(),
        ));
    }
    let extra_roots = match &s.ca_file {
        Some(path) => read_ca_file(path).map_err(|m| (key("ca_file"), m))?,
        None => Vec::new(),
    };
    let default_headers = preset
        .map(|p| p.default_headers)
        .unwrap_or_default()
        .iter()
        .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
        .collect();
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| {
        (
            format!("providers.{name}.upstream"),
            "not a valid host".to_string(),
        )
    })?;
    Ok(Provider {
        name: name.to_string(),
        scope,
        scheme,
        host,
        authority,
        base_path,
        secret,
        connection,
        injection,
        default_headers,
        connect_timeout: s.connect_timeout,
        first_byte_timeout: s.first_byte_timeout,
        idle_timeout: s.idle_timeout,
        sse_keepalive: s.sse_keepalive_secs.map(Duration::from_secs),
        extra_roots,
        websocket: s
            .websocket
            .unwrap_or_else(|| REALTIME_PRESETS.contains(&name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml: &str) -> ProviderSettings {
        toml::from_str(toml).expect("section")
    }

    #[test]
    fn presets_fill_in() {
        let p = resolve("openai", &section("secret = \"openai-main\"")).expect("openai");
        assert_eq!(p.authority.as_str(), "api.openai.com");
        assert_eq!(
            p.injection,
            Injection::Header {
                name: HeaderName::from_static("authorization"),
                format: "Bearer {secret}".into()
            }
        );
        let a = resolve("anthropic", &section("secret = \"a\"")).expect("anthropic");
        assert_eq!(a.default_headers.len(), 1);
        let o = resolve("ollama", &section("")).expect("ollama");
        assert_eq!(o.injection, Injection::None);
        let r = resolve("openrouter", &section("secret = \"x\"")).expect("openrouter");
        assert_eq!(r.base_path, "/api");
        assert!(!r.websocket, "off unless a realtime preset or configured");
    }

    #[test]
    fn realtime_presets_speak_websocket_with_their_providers_auth() {
        let header = |name: &str| match resolve(name, &section("secret = \"s\"")) {
            Ok(Provider {
                injection: Injection::Header { name: h, format },
                websocket,
                authority,
                ..
            }) => (h.to_string(), format, websocket, authority.to_string()),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(
            header("openai"),
            (
                "authorization".into(),
                "Bearer {secret}".into(),
                true,
                "api.openai.com".into()
            )
        );
        assert_eq!(
            header("deepgram"),
            (
                "authorization".into(),
                "Token {secret}".into(),
                true,
                "api.deepgram.com".into()
            )
        );
        assert_eq!(
            header("elevenlabs"),
            (
                "xi-api-key".into(),
                "{secret}".into(),
                true,
                "api.elevenlabs.io".into()
            )
        );
        assert_eq!(
            header("cartesia"),
            (
                "x-api-key".into(),
                "{secret}".into(),
                true,
                "api.cartesia.ai".into()
            )
        );
        let c = resolve("cartesia", &section("secret = \"s\"")).expect("cartesia");
        assert_eq!(c.default_headers[0].0, "cartesia-version");
        let off = resolve("openai", &section("secret = \"s\"\nwebsocket = false")).expect("off");
        assert!(!off.websocket);
        let on = resolve(
            "mine",
            &section("upstream = \"http://127.0.0.1:9\"\nwebsocket = true"),
        )
        .expect("custom");
        assert!(on.websocket);
    }

    #[test]
    fn connection_presets_use_the_users_connection_of_the_same_name() {
        let p = resolve("spotify", &section("")).expect("spotify");
        assert_eq!(p.connection.as_deref(), Some("spotify"));
        assert_eq!(p.secret, None);
        assert_eq!(p.authority.as_str(), "api.spotify.com");
        assert_eq!(
            p.injection,
            Injection::Header {
                name: HeaderName::from_static("authorization"),
                format: "Bearer {secret}".into()
            }
        );
        // A vault secret instead turns the connection off.
        let p = resolve("github", &section("secret = \"gh-pat\"")).expect("github");
        assert_eq!((p.secret.as_deref(), p.connection), (Some("gh-pat"), None));
        assert_eq!(p.default_headers[0].0, "x-github-api-version");
        // Any provider may name a connection, e.g. a generic OIDC one.
        let p = resolve(
            "idp-api",
            &section("upstream = \"http://127.0.0.1:9400\"\nconnection = \"testidp\"\nauth_header = \"authorization\"\nauth_format = \"Bearer {secret}\""),
        )
        .expect("custom");
        assert_eq!(p.connection.as_deref(), Some("testidp"));
    }

    #[test]
    fn a_connection_needs_a_way_to_send_its_token_and_excludes_a_secret() {
        let err = |name: &str, t: &str| resolve(name, &section(t)).expect_err("error").0;
        assert_eq!(
            err("spotify", "secret = \"x\"\nconnection = \"spotify\""),
            "providers.spotify.connection"
        );
        assert_eq!(
            err(
                "mine",
                "upstream = \"https://x.example\"\nconnection = \"testidp\""
            ),
            "providers.mine.auth_header"
        );
        assert_eq!(
            err("spotify", "connection = \"not a name\""),
            "providers.spotify.connection"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = |name: &str, t: &str| resolve(name, &section(t)).expect_err("error").0;
        assert_eq!(err("openai", ""), "providers.openai.secret");
        assert_eq!(err("mine", "secret = \"x\""), "providers.mine.upstream");
        assert_eq!(
            err("openai", "secret = \"x\"\nupstream = \"http://10.0.0.1\""),
            "providers.openai.upstream"
        );
        assert_eq!(
            err(
                "openai",
                "secret = \"x\"\nupstream = \"https://u@evil.example\""
            ),
            "providers.openai.upstream"
        );
        assert_eq!(
            err("mine", "upstream = \"https://x.example\"\nsecret = \"s\""),
            "providers.mine.auth_header"
        );
        assert_eq!(
            err(
                "mine",
                "upstream = \"https://x.example\"\nsecret = \"s\"\nauth_header = \"x-k\"\nauth_format = \"nope\""
            ),
            "providers.mine.auth_format"
        );
        assert_eq!(err("Bad", ""), "providers.Bad");
        assert_eq!(
            err("openai", "secret = \"x\"\nconnect_timeout = \"0s\""),
            "providers.openai.connect_timeout"
        );
        assert_eq!(
            err("openai", "secret = \"x\"\nsse_keepalive_secs = 3601"),
            "providers.openai.sse_keepalive_secs"
        );
        assert_eq!(
            err(
                "openai",
                "secret = \"x\"\nca_file = \"/nonexistent/ca.pem\""
            ),
            "providers.openai.ca_file"
        );
    }

    #[test]
    fn custom_providers() {
        let p = resolve(
            "mine",
            &section(
                "upstream = \"https://llm.example/v2/\"\nsecret = \"s\"\nauth_query = \"key\"",
            ),
        )
        .expect("custom");
        assert_eq!(p.base_path, "/v2");
        assert_eq!(
            p.injection,
            Injection::Query {
                param: "key".into()
            }
        );
        let h = resolve(
            "other",
            &section(
                "upstream = \"http://127.0.0.1:9\"\nsecret = \"s\"\nauth_header = \"X-Token\"\nauth_format = \"Token {secret}\"",
            ),
        )
        .expect("custom header");
        assert!(
            matches!(h.injection, Injection::Header { ref format, .. } if format == "Token {secret}")
        );
    }
}
