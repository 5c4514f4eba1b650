//! `[connections.<name>]`: the OAuth 2.0 / OpenID Connect providers users
//! connect accounts with, the presets, and turning a section into a checked
//! [`Provider`] once at startup (errors name the key).
//!
//! A section named after a preset (`spotify`, `google`, `github`,
//! `microsoft`, `slack`, `notion`) starts from the preset's endpoints,
//! scopes and client-authentication method; any other name is a generic
//! provider and needs either `issuer` (OpenID Connect discovery, fetched on
//! first use) or both `authorization_endpoint` and `token_endpoint`.
//! `client_id` may be left out and set by an administrator over the API
//! (`PUT /api/connections/{p}/client`, kept in the `meta` table). Plain `http://` is accepted only for
//! loopback hosts (a local test server).

use crate::auth::scope::{EntryName, ProviderName, Scope, Target};
use crate::net::upstream::read_ca_file;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Default `refresh_margin_secs`: refresh a token this long before expiry.
pub const DEFAULT_REFRESH_MARGIN_SECS: u64 = 60;

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret.
    Basic,
    /// `client_secret_post`: id and secret in the request body.
    Post,
}

/// One `[connections.<name>]` section as written (everything optional
/// here; [`resolve`] says what is required).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionSettings {
    /// A preset to start from; defaults to the section's name when that
    /// names a preset.
    pub preset: Option<String>,
    /// OpenID Connect issuer: `{issuer}/.well-known/openid-configuration`
    /// gives the endpoints unless they are set explicitly.
    pub issuer: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    /// RFC 7009 revocation endpoint (used on disconnect).
    pub revocation_endpoint: Option<String>,
    pub client_id: Option<String>,
    /// The vault entry holding the client secret (none: a public client).
    pub client_secret_entry: Option<String>,
    /// Scopes requested; default: the preset's.
    pub scopes: Option<Vec<String>>,
    pub client_auth: Option<ClientAuth>,
    /// Refresh this many seconds before expiry (at most half a token's
    /// lifetime is used, so short-lived tokens are not refreshed on every
    /// use).
    pub refresh_margin_secs: Option<u64>,
    /// PEM file of extra CA certificates for this provider's endpoints.
    pub ca_file: Option<PathBuf>,
    /// Extra authorization-request parameters (merged over the preset's).
    pub extra_auth_params: BTreeMap<String, String>,
    /// How long a refresh token lives before the provider forces a new
    /// consent (e.g. `"365d"`): shown as `reconnect_by`.
    pub refresh_token_lifetime: Option<String>,
}

/// A preset's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub issuer: Option<&'static str>,
    pub authorization_endpoint: &'static str,
    pub token_endpoint: &'static str,
    pub revocation_endpoint: Option<&'static str>,
    pub scopes: &'static [&'static str],
    pub client_auth: ClientAuth,
    /// Whether the provider supports PKCE. Latchkey sends S256 to every
    /// provider anyway (ignored where unsupported, RFC 9700 §2.1.1).
    pub pkce: bool,
    /// Whether a refresh returns a new refresh token (the old one then
    /// stops working): the reason refreshes are single-flight.
    pub rotating_refresh_tokens: bool,
    pub extra_auth_params: &'static [(&'static str, &'static str)],
    /// The token response's `scope` is comma-separated (GitHub).
    pub comma_scopes: bool,
    /// Accept a `token_type` other than `bearer` (Slack answers `bot`/`user`).
    pub any_token_type: bool,
}

/// The presets. Endpoints as each provider documents them; a section may
/// override any of them.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "spotify",
        issuer: None,
        authorization_endpoint: "https://accounts.spotify.com/authorize",
        token_endpoint: "https://accounts.spotify.com/api/token",
        revocation_endpoint: None,
        scopes: &["user-read-private", "user-read-email"],
        client_auth: ClientAuth::Basic,
        pkce: true,
        rotating_refresh_tokens: true,
        extra_auth_params: &[],
        comma_scopes: false,
        any_token_type: false,
    },
    Preset {
        name: "google",
        issuer: Some("https://accounts.google.com"),
        authorization_endpoint: "https://accounts.google.com/o/oauth2/v2/auth",
        token_endpoint: "https://oauth2.googleapis.com/token",
        revocation_endpoint: Some("https://oauth2.googleapis.com/revoke"),
        scopes: &["openid", "email"],
        client_auth: ClientAuth::Post,
        pkce: true,
        rotating_refresh_tokens: false,
        // Without these Google issues no refresh token (or only on the very
        // first consent).
        extra_auth_params: &[("access_type", "offline"), ("prompt", "consent")],
        comma_scopes: false,
        any_token_type: false,
    },
    Preset {
        name: "github",
        issuer: None,
        authorization_endpoint: "https://github.com/login/oauth/authorize",
        token_endpoint: "https://github.com/login/oauth/access_token",
        revocation_endpoint: None,
        scopes: &["read:user"],
        client_auth: ClientAuth::Post,
        pkce: true,
        rotating_refresh_tokens: true,
        extra_auth_params: &[],
        comma_scopes: true,
        any_token_type: false,
    },
    Preset {
        name: "microsoft",
        issuer: None,
        authorization_endpoint: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_endpoint: "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        revocation_endpoint: None,
        scopes: &["openid", "offline_access", "User.Read"],
        client_auth: ClientAuth::Post,
        pkce: true,
        rotating_refresh_tokens: true,
        extra_auth_params: &[],
        comma_scopes: false,
        any_token_type: false,
    },
    Preset {
        name: "slack",
        issuer: None,
        authorization_endpoint: "https://slack.com/oauth/v2/authorize",
        token_endpoint: "https://slack.com/api/oauth.v2.access",
        revocation_endpoint: None,
        scopes: &["channels:read"],
        client_auth: ClientAuth::Post,
        pkce: false,
        rotating_refresh_tokens: true,
        extra_auth_params: &[],
        comma_scopes: true,
        any_token_type: true,
    },
    Preset {
        name: "notion",
        issuer: None,
        authorization_endpoint: "https://api.notion.com/v1/oauth/authorize",
        token_endpoint: "https://api.notion.com/v1/oauth/token",
        revocation_endpoint: None,
        scopes: &[],
        client_auth: ClientAuth::Basic,
        pkce: false,
        rotating_refresh_tokens: true,
        extra_auth_params: &[("owner", "user")],
        comma_scopes: false,
        any_token_type: false,
    },
];

/// The preset called `name`, if any.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// One checked provider.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    /// `connections:<name>`: what a key needs to use it.
    pub scope: Scope,
    pub preset: Option<&'static str>,
    /// For discovery (when the endpoints are not all given) and the
    /// RFC 9207 `iss` check of authorization responses.
    pub issuer: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub client_id: String,
    pub client_secret_entry: Option<String>,
    pub scopes: Vec<String>,
    /// `None`: from discovery (`client_secret_basic` unless only `post` is
    /// supported).
    pub client_auth: Option<ClientAuth>,
    pub refresh_margin: Duration,
    pub extra_auth_params: Vec<(String, String)>,
    pub refresh_token_lifetime: Option<Duration>,
    pub comma_scopes: bool,
    pub any_token_type: bool,
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Provider {
    /// Whether the endpoints come from OpenID Connect discovery.
    pub fn needs_discovery(&self) -> bool {
        self.authorization_endpoint.is_none() || self.token_endpoint.is_none()
    }
}

/// Checks every section; the error is `(key, message)`.
pub fn resolve_all(
    sections: &BTreeMap<String, ConnectionSettings>,
) -> Result<Vec<Provider>, (String, String)> {
    sections.iter().map(|(name, s)| resolve(name, s)).collect()
}

/// Checks one section.
pub fn resolve(name: &str, s: &ConnectionSettings) -> Result<Provider, (String, String)> {
    let key = |k: &str| format!("connections.{name}.{k}");
    let provider_name =
        ProviderName::new(name).map_err(|reason| (format!("connections.{name}"), reason))?;
    if name == "providers" {
        // `/api/connections/providers` is the list of providers.
        return Err((
            format!("connections.{name}"),
            "`providers` is reserved; choose another name".into(),
        ));
    }
    let preset = match &s.preset {
        Some(p) => Some(preset(p).ok_or_else(|| {
            (
                key("preset"),
                format!(
                    "unknown preset `{p}`; presets: {}",
                    PRESETS
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?),
        None => preset(name),
    };
    // Optional: an administrator may set it from the UI instead
    // (`PUT /api/connections/{p}/client`); until then connecting answers
    // `client_id_missing`. An empty string is "not set".
    let client_id = s.client_id.as_deref().unwrap_or("").trim().to_string();
    if client_id.chars().any(char::is_control) || client_id.len() > 512 {
        return Err((key("client_id"), "not a plausible client id".into()));
    }
    if let Some(entry) = &s.client_secret_entry {
        EntryName::new(entry).map_err(|reason| (key("client_secret_entry"), reason))?;
    }
    let url = |k: &str, v: &Option<String>| -> Result<Option<String>, (String, String)> {
        v.as_deref()
            .map(|u| check_url(u).map_err(|m| (key(k), m)))
            .transpose()
    };
    let issuer = url("issuer", &s.issuer)?.or(preset.and_then(|p| p.issuer.map(String::from)));
    let authorization_endpoint = url("authorization_endpoint", &s.authorization_endpoint)?
        .or(preset.map(|p| p.authorization_endpoint.to_string()));
    let token_endpoint =
        url("token_endpoint", &s.token_endpoint)?.or(preset.map(|p| p.token_endpoint.to_string()));
    let revocation_endpoint = url("revocation_endpoint", &s.revocation_endpoint)?
        .or(preset.and_then(|p| p.revocation_endpoint.map(String::from)));
    if issuer.is_none() && (authorization_endpoint.is_none() || token_endpoint.is_none()) {
        return Err((
            key("issuer"),
            "a provider that is not a preset needs `issuer` (OpenID Connect discovery) or both \
             `authorization_endpoint` and `token_endpoint`"
                .into(),
        ));
    }
    let scopes = match &s.scopes {
        Some(list) => list.clone(),
        None => preset
            .map(|p| p.scopes.iter().map(|s| s.to_string()).collect())
            .unwrap_or_else(|| vec!["openid".to_string()]),
    };
    for sc in &scopes {
        // RFC 6749 §3.3 scope-token: printable ASCII except space, `"`, `\`.
        let ok = !sc.is_empty()
            && sc
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err((key("scopes"), format!("{sc:?} is not a valid OAuth scope")));
        }
    }
    let margin = s.refresh_margin_secs.unwrap_or(DEFAULT_REFRESH_MARGIN_SECS);
    if margin > 86400 {
        return Err((key("refresh_margin_secs"), "at most 86400 (1 day)".into()));
    }
    let mut extra: Vec<(String, String)> = preset
        .map(|p| {
            p.extra_auth_params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in &s.extra_auth_params {
        if RESERVED_AUTH_PARAMS.contains(&k.as_str()) {
            return Err((
                key("extra_auth_params"),
                format!("`{k}` is set by Latchkey itself and cannot be overridden"),
            ));
        }
        if k.is_empty() || k.chars().chain(v.chars()).any(char::is_control) {
            return Err((key("extra_auth_params"), format!("bad parameter `{k}`")));
        }
        extra.retain(|(ek, _)| ek != k);
        extra.push((k.clone(), v.clone()));
    }
    // OpenID Connect Core §11: a provider ignores `offline_access` (and
    // issues no refresh token) unless the request has `prompt=consent`.
    if preset.is_none()
        && scopes.iter().any(|s| s == "offline_access")
        && !extra.iter().any(|(k, _)| k == "prompt")
    {
        extra.push(("prompt".into(), "consent".into()));
    }
    let refresh_token_lifetime = s
        .refresh_token_lifetime
        .as_deref()
        .map(|d| crate::duration_str::parse(d).map_err(|m| (key("refresh_token_lifetime"), m)))
        .transpose()?;
    let extra_roots = match &s.ca_file {
        Some(path) => read_ca_file(path).map_err(|m| (key("ca_file"), m))?,
        None => Vec::new(),
    };
    Ok(Provider {
        name: name.to_string(),
        scope: Scope::Connections(Target::Only(provider_name)),
        preset: preset.map(|p| p.name),
        issuer,
        authorization_endpoint,
        token_endpoint,
        revocation_endpoint,
        client_id,
        client_secret_entry: s.client_secret_entry.clone(),
        scopes,
        client_auth: s.client_auth.or(preset.map(|p| p.client_auth)),
        refresh_margin: Duration::from_secs(margin),
        extra_auth_params: extra,
        refresh_token_lifetime,
        comma_scopes: preset.is_some_and(|p| p.comma_scopes),
        any_token_type: preset.is_some_and(|p| p.any_token_type),
        extra_roots,
    })
}

/// Authorization parameters Latchkey sets; `extra_auth_params` may not
/// replace them (a config typo must not turn PKCE or state off).
const RESERVED_AUTH_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "nonce",
];

/// An endpoint or issuer URL: `https://…`, or `http://` to a loopback host
/// only; no user info or fragment. Returns it without a trailing slash for
/// issuers' sake (discovery appends the well-known path).
pub fn check_url(u: &str) -> Result<String, String> {
    let parsed =
        url::Url::parse(u).map_err(|_| format!("`{u}` is not a URL like https://example.com"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("user info (`user@`) is not allowed in a URL".into());
    }
    if parsed.fragment().is_some() {
        return Err("a URL here has no fragment".into());
    }
    let host = parsed.host().ok_or_else(|| format!("`{u}` has no host"))?;
    match parsed.scheme() {
        "https" => {}
        "http" => {
            let loopback = match host {
                url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
                url::Host::Ipv4(ip) => ip.is_loopback(),
                url::Host::Ipv6(ip) => ip.is_loopback(),
            };
            if !loopback {
                return Err(format!(
                    "`{u}`: plain http is only allowed to loopback hosts; use https"
                ));
            }
        }
        _ => return Err(format!("`{u}` needs https://")),
    }
    Ok(u.trim_end_matches('/').to_string())
}

/// `server.public_url`: the origin browsers reach Latchkey at, used for the
/// OAuth redirect URI. `https://host[:port]` (or `http://` on loopback,
/// RFC 8252, for the desktop app), no path, query or fragment.
pub fn check_public_url(u: &str) -> Result<String, String> {
    let checked = check_url(u)?;
    let parsed = url::Url::parse(&checked).map_err(|e| e.to_string())?;
    if parsed.path() != "/" && !parsed.path().is_empty() || parsed.query().is_some() {
        return Err(format!(
            "`{u}` must be an origin only (scheme, host and port), e.g. https://latchkey.home:8443"
        ));
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml: &str) -> ConnectionSettings {
        toml::from_str(toml).expect("section")
    }

    #[test]
    fn the_issue_example_resolves() {
        let s = section(
            r#"
            issuer = "http://127.0.0.1:9400"
            client_id = "latchkey"
            client_secret_entry = "testidp-client"
            scopes = ["openid", "offline_access"]
            "#,
        );
        let p = resolve("testidp", &s).expect("resolves");
        assert!(p.needs_discovery());
        assert_eq!(p.issuer.as_deref(), Some("http://127.0.0.1:9400"));
        assert_eq!(p.scopes, ["openid", "offline_access"]);
        assert_eq!(p.refresh_margin, Duration::from_secs(60));
        assert_eq!(p.scope.to_string(), "connections:testidp");
        assert_eq!(p.client_auth, None);
        assert_eq!(p.extra_auth_params, [("prompt".into(), "consent".into())]);
        // An explicit prompt wins.
        let s = section(
            r#"
            issuer = "https://idp.example"
            client_id = "c"
            scopes = ["openid", "offline_access"]
            extra_auth_params = { prompt = "login consent" }
            "#,
        );
        let p = resolve("x", &s).expect("resolves");
        assert_eq!(
            p.extra_auth_params,
            [("prompt".into(), "login consent".into())]
        );
    }

    #[test]
    fn every_preset_is_valid() {
        for preset in PRESETS {
            for u in [preset.authorization_endpoint, preset.token_endpoint]
                .into_iter()
                .chain(preset.revocation_endpoint)
                .chain(preset.issuer)
            {
                assert!(u.starts_with("https://"), "{}: {u}", preset.name);
                check_url(u).unwrap_or_else(|e| panic!("{}: {e}", preset.name));
            }
            let s = section(r#"client_id = "abc""#);
            let p = resolve(preset.name, &s).expect("preset resolves");
            assert!(!p.needs_discovery(), "{}", preset.name);
            assert_eq!(p.preset, Some(preset.name));
            assert!(p.client_auth.is_some());
            for (k, _) in preset.extra_auth_params {
                assert!(!RESERVED_AUTH_PARAMS.contains(k));
            }
        }
        let google = resolve("google", &section(r#"client_id = "x""#)).expect("google");
        assert!(
            google
                .extra_auth_params
                .contains(&("access_type".into(), "offline".into()))
        );
        assert!(google.revocation_endpoint.is_some());
    }

    #[test]
    fn a_named_preset_under_another_name() {
        let p = resolve(
            "work-google",
            &section(
                r#"
                preset = "google"
                client_id = "x"
                extra_auth_params = { prompt = "select_account", hd = "example.com" }
                "#,
            ),
        )
        .expect("resolves");
        assert_eq!(p.preset, Some("google"));
        assert!(
            p.extra_auth_params
                .contains(&("prompt".into(), "select_account".into()))
        );
        assert!(
            !p.extra_auth_params
                .contains(&("prompt".into(), "consent".into()))
        );
        assert!(
            p.extra_auth_params
                .contains(&("hd".into(), "example.com".into()))
        );
    }

    #[test]
    fn a_preset_section_may_leave_the_client_id_to_the_ui() {
        let p = resolve("spotify", &section("")).expect("resolves");
        assert_eq!(p.client_id, "");
        assert_eq!(p.client_secret_entry, None);
        let p = resolve("spotify", &section(r#"client_id = "  abc ""#)).expect("resolves");
        assert_eq!(p.client_id, "abc");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "x",
                r#"issuer = "https://a.example"
                   client_id = "a\u0007b""#,
                "connections.x.client_id",
            ),
            ("x", r#"client_id = "c""#, "connections.x.issuer"),
            (
                "x",
                r#"client_id = "c"
                   issuer = "http://idp.example""#,
                "connections.x.issuer",
            ),
            (
                "x",
                r#"client_id = "c"
                   issuer = "https://user:pw@idp.example""#,
                "connections.x.issuer",
            ),
            (
                "x",
                r#"client_id = "c"
                     preset = "nope""#,
                "connections.x.preset",
            ),
            (
                "x",
                r#"client_id = "c"
                   issuer = "https://idp.example"
                   client_secret_entry = "../etc""#,
                "connections.x.client_secret_entry",
            ),
            (
                "x",
                r#"client_id = "c"
                   issuer = "https://idp.example"
                   scopes = ["a b"]"#,
                "connections.x.scopes",
            ),
            (
                "x",
                r#"client_id = "c"
                   issuer = "https://idp.example"
                   extra_auth_params = { state = "fixed" }"#,
                "connections.x.extra_auth_params",
            ),
            (
                "x",
                r#"client_id = "c"
                   issuer = "https://idp.example"
                   ca_file = "/nonexistent/ca.pem""#,
                "connections.x.ca_file",
            ),
            (
                "x",
                r#"client_id = "c"
                   issuer = "https://idp.example"
                   refresh_token_lifetime = "soon""#,
                "connections.x.refresh_token_lifetime",
            ),
            (
                "providers",
                r#"client_id = "c"
                   issuer = "https://idp.example""#,
                "connections.providers",
            ),
            (
                "Bad",
                r#"client_id = "c"
                       issuer = "https://idp.example""#,
                "connections.Bad",
            ),
        ];
        for (name, toml, key) in cases {
            let err = resolve(name, &section(toml)).expect_err(toml);
            assert_eq!(err.0, *key, "{toml}: {}", err.1);
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ConnectionSettings>(r#"client_secret = "inline""#).is_err());
    }

    #[test]
    fn loopback_http_is_allowed() {
        for u in [
            "http://127.0.0.1:9400",
            "http://[::1]:1",
            "http://localhost:5",
        ] {
            check_url(u).unwrap_or_else(|e| panic!("{u}: {e}"));
        }
        for u in [
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "http://127.0.0.1.evil.example",
        ] {
            assert!(check_url(u).is_err(), "{u}");
        }
    }

    #[test]
    fn public_url_is_an_origin() {
        assert_eq!(
            check_public_url("https://nas.home:8443/").as_deref(),
            Ok("https://nas.home:8443")
        );
        assert!(check_public_url("https://nas.home/x").is_err());
        assert!(check_public_url("https://nas.home/?a=b").is_err());
        assert!(check_public_url("http://nas.home").is_err());
        assert!(check_public_url("http://127.0.0.1:7000").is_ok());
    }
}
