//! Header names as the backends behind us read them, the names a client
//! never chooses for them, and where a client puts its Latchkey credential
//! (shared by the HTTP edge, `/proxy` and `/agent`).

use axum::http::{HeaderMap, HeaderName, header};
use std::borrow::Cow;

/// The API key header some SDKs use instead of `Authorization`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The token of an `Authorization: Bearer <token>` header, trimmed;
/// `None` for another scheme or an empty token.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Hop-by-hop by definition, whatever `Connection` says.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_canonical(name.as_str())
}

/// [`is_hop_by_hop`] for a name already in [`canonical_name`] form.
fn hop_by_hop_canonical(n: &str) -> bool {
    matches!(
        n,
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-connection"
    ) || n.starts_with("proxy-")
}

/// A header name as a backend may read it: lower case, every byte that is
/// not a letter or digit turned into `-`. CGI, WSGI, Rack and PHP hand
/// headers to applications as `HTTP_X_LATCHKEY_USER`, turning `-` into `_`
/// (some servers every other separator too), so `X_Latchkey_User`,
/// `x.latchkey.user` and `X-Latchkey-User` are one header to them — and
/// both spellings sent together arrive joined (`"owner,bob"`). Every
/// comparison with a reserved name goes through this. Borrowed (no
/// allocation) for the usual already-canonical names.
pub fn canonical_name(name: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if name.bytes().all(plain) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(
        name.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b.to_ascii_lowercase())
                } else {
                    '-'
                }
            })
            .collect(),
    )
}

/// Names (canonical) a client never chooses for a backend or upstream:
/// Latchkey sets them itself (`Host`, the forwarding family, framing), or
/// they would be read as something else. `Proxy` is httpoxy: CGI turns it
/// into `HTTP_PROXY`, which HTTP libraries take as their outbound proxy.
const SET_BY_LATCHKEY: [&str; 9] = [
    "host",
    "forwarded",
    "via",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "expect",
    "content-length",
    "proxy",
];

/// Whether a client's request header with this (canonical) name is
/// reserved: set by Latchkey, hop-by-hop, or an identity header
/// (`X-Latchkey-*`, including the signed assertion) a backend trusts.
/// Shared by `/proxy` and `/agent` forwarding; compared in canonical form,
/// so no spelling (`_` for `-`, case) gets one through.
pub fn is_reserved_request_header(canonical: &str) -> bool {
    hop_by_hop_canonical(canonical)
        || SET_BY_LATCHKEY.contains(&canonical)
        || canonical.starts_with("x-forwarded-")
        || canonical.starts_with("x-latchkey-")
}

/// Headers named in `Connection` (also hop-by-hop), canonical.
pub fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| canonical_name(s.trim()).into_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether the request asks for a WebSocket (RFC 6455 §4.1): `Upgrade:
/// websocket` and `Connection: upgrade`, any case, in any list position.
pub fn wants_websocket(h: &HeaderMap) -> bool {
    let has = |name: HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_compared_as_backends_read_them() {
        assert_eq!(canonical_name("x-latchkey-user"), "x-latchkey-user");
        assert!(matches!(
            canonical_name("x-latchkey-user"),
            Cow::Borrowed(_)
        ));
        assert_eq!(canonical_name("X_Latchkey_User"), "x-latchkey-user");
        assert_eq!(canonical_name("x.latchkey~user"), "x-latchkey-user");
        assert!(is_reserved_request_header(&canonical_name(
            "X_Forwarded_Host"
        )));
        assert!(is_reserved_request_header("proxy-authorization"));
        assert!(!is_reserved_request_header("x-request-id"));
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "keep-alive, X_Hop".parse().expect("hv"));
        h.append(header::CONNECTION, " ,te".parse().expect("hv"));
        assert_eq!(connection_listed(&h), ["keep-alive", "x-hop", "te"]);
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer  tok ".parse().expect("hv"));
        assert_eq!(bearer(&h), Some("tok"));
        h.insert(header::AUTHORIZATION, "bearer x".parse().expect("hv"));
        assert_eq!(bearer(&h), Some("x"));
        h.insert(header::AUTHORIZATION, "Bearer  ".parse().expect("hv"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Basic tok".parse().expect("hv"));
        assert_eq!(bearer(&h), None);
    }
}
