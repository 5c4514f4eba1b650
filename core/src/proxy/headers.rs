//! What crosses the proxy: the headers kept in each direction (the path
//! is checked by [`crate::net::path::check_path`]).
//!
//! Requests lose the client's Latchkey key (`Authorization`, `x-api-key`,
//! `x-goog-api-key`), hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and
//! every header it lists, `Keep-Alive`, `TE`, `Trailer`,
//! `Transfer-Encoding`, `Upgrade`, `Proxy-*`), `Host`, `Cookie`,
//! `Forwarded`/`X-Forwarded-*`/`X-Real-IP` and any `X-Latchkey-*` the client
//! made up — each compared in [`canonical_name`] form (`crate::net::headers`), so `X_Api_Key` or
//! `X_Latchkey_User` (which a CGI/WSGI upstream reads as the hyphenated
//! header) is dropped too. Responses lose hop-by-hop headers and `Set-Cookie` (upstream
//! cookies would land on Latchkey's own origin).

use crate::net::headers::{
    canonical_name, connection_listed, is_hop_by_hop, is_reserved_request_header,
};
use axum::http::{HeaderMap, HeaderName, header};

/// The credential headers a client may put its Latchkey key in (and the
/// cookie, never an upstream's business), canonical.
fn never_forwarded(canonical: &str) -> bool {
    matches!(
        canonical,
        "authorization" | "x-api-key" | "x-goog-api-key" | "cookie"
    ) || is_reserved_request_header(canonical)
}

/// Drops, in place, the client's headers that may not go upstream.
/// `Content-Length` is set again by the caller from the body. In place
/// rather than copied into a new map: the copy (a map allocated, every
/// kept name and value cloned) was ~2 % of a proxied request's
/// instructions. The order of the names kept may change (a removal moves
/// the last entry into the gap); HTTP gives it no meaning across names,
/// and the values of one name keep theirs.
pub fn filter_request_headers(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    remove_where(headers, |name| {
        let n = canonical_name(name.as_str());
        never_forwarded(&n) || listed.iter().any(|l| *l == n)
    });
}

/// Removes every value of each name `drop` picks. `HeaderMap` has no
/// `retain`: the names are gathered, then removed (each `remove` takes
/// every value of its name). The usual few (`Authorization`, `Host`) fit
/// on the stack.
fn remove_where(headers: &mut HeaderMap, mut drop: impl FnMut(&HeaderName) -> bool) {
    let mut few: [Option<HeaderName>; 4] = Default::default();
    let mut more: Vec<HeaderName> = Vec::new();
    let mut n_few = 0;
    for name in headers.keys() {
        if drop(name) {
            match few.get_mut(n_few) {
                Some(slot) => {
                    *slot = Some(name.clone());
                    n_few += 1;
                }
                None => more.push(name.clone()),
            }
        }
    }
    for name in few.iter().flatten().chain(&more) {
        headers.remove(name);
    }
}

/// Drops, in place, the upstream's headers that may not go back to the
/// client: hop-by-hop ones (and those `Connection` lists), `Set-Cookie`,
/// `Strict-Transport-Security` and `Alt-Svc` (they would speak for
/// Latchkey's own origin). In place, as [`filter_request_headers`], and
/// with room made for the request id and security headers added on the way
/// out: building a new map (every kept entry hashed and cloned again) was
/// ~2 % of a proxied request's instructions.
pub fn filter_response_headers(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    remove_where(headers, |name| {
        is_hop_by_hop(name)
            || name == header::SET_COOKIE
            || name == header::STRICT_TRANSPORT_SECURITY
            || name == header::ALT_SVC
            || listed.iter().any(|l| l == name.as_str())
    });
    headers.reserve(8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn client_keys_and_hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer lk_secret"),
            ("x-api-key", "lk_secret"),
            ("x-goog-api-key", "lk_secret"),
            ("host", "evil.example"),
            ("cookie", "__Host-latchkey_session=abc"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-latchkey-user", "admin"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("content-length", "12"),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
            ("openai-organization", "org"),
        ] {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        filter_request_headers(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["anthropic-version", "content-type", "openai-organization"]
        );
        assert_eq!(h["openai-organization"], "org", "values kept as they were");
    }

    #[test]
    fn response_hop_by_hop_and_cookies_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("set-cookie", HeaderValue::from_static("a=b"));
        h.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("9"));
        h.append("x-hop", HeaderValue::from_static("2"));
        filter_response_headers(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-ratelimit-remaining"]);
        assert_eq!(h.len(), 2, "every value of a dropped name goes");
    }

    #[test]
    fn reserved_headers_are_dropped_in_every_spelling() {
        assert_eq!(canonical_name("x-latchkey-user"), "x-latchkey-user");
        assert_eq!(canonical_name("X_Latchkey_User"), "x-latchkey-user");
        assert_eq!(canonical_name("x.latchkey~user"), "x-latchkey-user");
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x_api_key", "lk_secret"),
            ("X_Goog_Api_Key", "lk_secret"),
            ("x_latchkey_user", "admin"),
            ("x.latchkey.role", "admin"),
            ("X_Latchkey_Assertion", "forged"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x_real_ip", "1.2.3.4"),
            ("proxy", "http://evil.example:8080"),
            ("transfer_encoding", "chunked"),
            ("content_length", "5"),
            ("connection", "x_hop"),
            ("x-hop", "1"),
            ("x_request_id", "kept"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        filter_request_headers(&mut h);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x_request_id"]);
    }
}
