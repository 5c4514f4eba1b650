//! Where the caller reached us: the scheme and host a browser used, for the
//! same-origin check, OAuth redirect URIs and invite links.
//!
//! Nothing here assumes HTTPS or a port. The scheme is, in order:
//! `X-Forwarded-Proto` when the peer is a trusted proxy
//! (`auth.trusted_proxies`); the connection's own [`Scheme`], which the
//! accept loop (`crate::serve`) puts on every request; and without either
//! (handler tests, embeddings that serve the router themselves) what
//! `server.tls` says. The host is `X-Forwarded-Host` from a trusted proxy,
//! else `Host` (or HTTP/2's `:authority`). From anyone else the forwarding
//! headers are ignored: a client must not choose the origin its own
//! request is checked against.

use super::AppState;
use axum::http::{Extensions, HeaderMap, Uri, header};

/// How a request reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// `http` or `https`, any case; nothing else.
    fn parse(s: &str) -> Option<Scheme> {
        if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the request's peer (the socket, not a header) is one of
/// `auth.trusted_proxies`.
fn from_trusted_proxy(state: &AppState, ext: &Extensions) -> bool {
    crate::net::client::from_trusted_proxy(&state.trusted_proxies, ext)
}

/// The value a trusted proxy set for `name`: its last entry (a header
/// repeated, or a comma list, ends with what the proxy next to us said;
/// earlier entries came from further away and may be the client's own).
pub(crate) fn forwarded<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(name)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `host` or `host:port` (a name, an IPv4 address or a bracketed IPv6
/// one), lower-cased; `None` for anything else (user info, paths, spaces).
pub(crate) fn plain_authority(value: &str) -> Option<String> {
    let authority: axum::http::uri::Authority = value.trim().parse().ok()?;
    let s = authority.as_str();
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| s.to_ascii_lowercase())
}

/// The scheme the caller used (see the module docs).
pub fn request_scheme(state: &AppState, headers: &HeaderMap, ext: &Extensions) -> Scheme {
    if from_trusted_proxy(state, ext)
        && let Some(s) = forwarded(headers, "x-forwarded-proto").and_then(Scheme::parse)
    {
        return s;
    }
    ext.get::<Scheme>()
        .copied()
        .unwrap_or(if state.settings.server.tls {
            Scheme::Https
        } else {
            Scheme::Http
        })
}

/// The origin the caller sent this request to, `scheme://host[:port]`, as
/// its browser sees it; `None` when the request names no usable host.
pub fn request_origin(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    ext: &Extensions,
) -> Option<String> {
    let scheme = request_scheme(state, headers, ext);
    let proxied_host = from_trusted_proxy(state, ext)
        .then(|| forwarded(headers, "x-forwarded-host").and_then(plain_authority))
        .flatten();
    let host = match proxied_host {
        Some(h) => h,
        None => headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
            .and_then(|h| plain_authority(&h))?,
    };
    Some(format!("{scheme}://{host}"))
}

/// The origin people reach this server at: `server.public_url` when set,
/// else the request's own origin, else the first listen address's port on
/// `localhost` with the request's scheme.
pub fn public_origin(state: &AppState, headers: &HeaderMap, uri: &Uri, ext: &Extensions) -> String {
    if let Some(u) = &state.settings.server.public_url {
        return u.trim_end_matches('/').to_string();
    }
    request_origin(state, headers, uri, ext).unwrap_or_else(|| {
        let port = state
            .settings
            .server
            .listen
            .first()
            .map_or(crate::config::DEFAULT_PORT, |a| a.port());
        format!("{}://localhost:{port}", request_scheme(state, headers, ext))
    })
}

/// The origins a cookie-authenticated request may come from: its own, and
/// `server.public_url` when set.
pub fn own_origins(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    ext: &Extensions,
) -> Vec<String> {
    let mut own: Vec<String> = request_origin(state, headers, uri, ext)
        .into_iter()
        .collect();
    if let Some(u) = &state.settings.server.public_url {
        own.push(u.trim_end_matches('/').to_ascii_lowercase());
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;

    fn state_with(edit: impl FnOnce(&mut Settings)) -> (AppState, crate::http::tests::TestApp) {
        let mut settings = Settings::default();
        edit(&mut settings);
        let app = crate::http::tests::app_with(settings);
        (app.state.clone(), app)
    }

    fn req(
        headers: &[(&str, &str)],
        peer: &str,
        scheme: Option<Scheme>,
    ) -> (HeaderMap, Extensions) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let mut ext = Extensions::new();
        ext.insert(ConnectInfo(peer.parse::<SocketAddr>().expect("peer")));
        if let Some(s) = scheme {
            ext.insert(s);
        }
        (h, ext)
    }

    #[test]
    fn scheme_and_host_from_the_connection() {
        let (state, _dir) = state_with(|s| s.auth.trusted_proxies = vec!["10.0.0.5".into()]);
        let uri = Uri::from_static("/x");
        let (h, e) = req(
            &[("host", "Vault.Example:8080")],
            "192.0.2.1:5",
            Some(Scheme::Http),
        );
        assert_eq!(
            request_origin(&state, &h, &uri, &e).as_deref(),
            Some("http://vault.example:8080")
        );
        let (h, e) = req(
            &[("host", "vault.example")],
            "192.0.2.1:5",
            Some(Scheme::Https),
        );
        assert_eq!(
            request_origin(&state, &h, &uri, &e).as_deref(),
            Some("https://vault.example")
        );
        // Bad hosts name no origin.
        for bad in ["a@b", "a/b", "a b", ""] {
            let (h, e) = req(&[("host", bad)], "192.0.2.1:5", Some(Scheme::Https));
            assert_eq!(request_origin(&state, &h, &uri, &e), None, "{bad}");
        }
    }

    /// A client cannot choose its own origin with forwarding headers; a
    /// trusted proxy can, and the last entry (its own) counts.
    #[test]
    fn forwarded_scheme_and_host_only_from_a_trusted_proxy() {
        let (state, _dir) = state_with(|s| s.auth.trusted_proxies = vec!["10.0.0.5".into()]);
        let uri = Uri::from_static("/x");
        let fwd = [
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "nas.example:8443"),
        ];
        let (h, e) = req(&fwd, "192.0.2.1:5", Some(Scheme::Http));
        assert_eq!(
            request_origin(&state, &h, &uri, &e).as_deref(),
            Some("http://127.0.0.1:8080"),
            "untrusted peer"
        );
        let (h, e) = req(&fwd, "10.0.0.5:5", Some(Scheme::Http));
        assert_eq!(
            request_origin(&state, &h, &uri, &e).as_deref(),
            Some("https://nas.example:8443")
        );
        let chain = [
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-proto", "http, https"),
            ("x-forwarded-host", "evil.example, nas.example"),
        ];
        let (h, e) = req(&chain, "10.0.0.5:5", Some(Scheme::Http));
        assert_eq!(
            request_origin(&state, &h, &uri, &e).as_deref(),
            Some("https://nas.example")
        );
        // Garbage from the proxy: the connection's own values stand.
        let junk = [
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "a@b"),
        ];
        let (h, e) = req(&junk, "10.0.0.5:5", Some(Scheme::Http));
        assert_eq!(
            request_origin(&state, &h, &uri, &e).as_deref(),
            Some("http://127.0.0.1:8080")
        );
    }

    #[test]
    fn without_a_connection_the_configuration_decides() {
        let uri = Uri::from_static("/x");
        let h = {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "localhost:1".parse().expect("v"));
            h
        };
        let (state, _dir) = state_with(|_| {});
        assert_eq!(
            request_origin(&state, &h, &uri, &Extensions::new()).as_deref(),
            Some("https://localhost:1")
        );
        let (state, _dir) = state_with(|s| s.server.tls = false);
        assert_eq!(
            request_origin(&state, &h, &uri, &Extensions::new()).as_deref(),
            Some("http://localhost:1")
        );
        assert_eq!(
            public_origin(&state, &HeaderMap::new(), &uri, &Extensions::new()),
            "http://localhost:8443"
        );
        let (state, _dir) =
            state_with(|s| s.server.public_url = Some("https://nas.home:9000".into()));
        assert_eq!(
            public_origin(&state, &h, &uri, &Extensions::new()),
            "https://nas.home:9000"
        );
        assert_eq!(
            own_origins(&state, &h, &uri, &Extensions::new()),
            ["https://localhost:1", "https://nas.home:9000"]
        );
    }
}
