//! Small parsers of request headers and queries that decide who is
//! calling: the session cookie and the OAuth binding cookie
//! (`http::authn::session_cookie`, `http::connections::binding_cookie`),
//! `Authorization: Bearer` (`net::headers::bearer`), the client address
//! from `X-Forwarded-For` (`net::client::forwarded_client`) and the OAuth
//! callback's query (`http::connections::callback_params`).
//!
//! The input is up to six fields separated by 0xFF: two `Cookie` headers,
//! `Authorization`, `X-Forwarded-For`, the callback query, and bytes that
//! choose the peer and make a token.
//!
//! Properties:
//! - a cookie is found only under its exact name, trimmed, non-empty, and
//!   it is the first such pair; a cookie we set (`Set-Cookie` from
//!   `set_session_cookie`) sent back first is read back whatever other
//!   cookies follow;
//! - a bearer token is what follows a case-insensitive `Bearer `, trimmed;
//! - the client address is the peer unless the peer is a trusted proxy;
//!   it is always the peer or an entry of the header; and what a client
//!   writes to the left of the entries our proxies appended never changes
//!   it (no spoofing through a trusted proxy);
//! - callback parameters are the query's values, each name at most once;
//!   errors show no control characters, and `Debug` depends on neither
//!   the `code` nor the `state`.
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use ipnet::IpNet;
use latchkey_core::auth::ratelimit::bucket_key;
use latchkey_core::net::client::forwarded_client as client_ip;
use latchkey_core::connections::CallbackParams;
use latchkey_core::fuzzing::{bearer, binding_cookie, callback_params};
use latchkey_core::http::authn::{SESSION_COOKIE, session_cookie, set_session_cookie};
use latchkey_core::http::connections::BINDING_COOKIE;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};

/// Independent reading of RFC 6265 `Cookie` pairs: the first whose name is
/// exactly `name`.
fn reference_cookie<'a>(values: &[&'a str], name: &str) -> Option<&'a str> {
    for v in values {
        for pair in v.split(';') {
            let pair = pair.trim();
            if let Some(eq) = pair.find('=')
                && &pair[..eq] == name
            {
                let value = pair[eq + 1..].trim();
                return (!value.is_empty()).then_some(value);
            }
        }
    }
    None
}

fn cookies(headers: &HeaderMap) {
    let values: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for (name, got) in [
        (SESSION_COOKIE, session_cookie(headers)),
        (BINDING_COOKIE, binding_cookie(headers)),
    ] {
        assert_eq!(got, reference_cookie(&values, name), "{name} in {values:?}");
        if let Some(v) = got {
            assert!(!v.contains(';') && v == v.trim() && !v.is_empty());
        }
    }
}

fn trusted() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "fd00::/8"]
        .iter()
        .map(|s| s.parse().expect("net"))
        .collect()
}

fn parse_entry(e: &str) -> Option<IpAddr> {
    e.parse::<IpAddr>()
        .ok()
        .or_else(|| e.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| e.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

fn forwarded(xff: &str, pick: u8, left: &str) {
    let peers = [
        "127.0.0.1:1",
        "10.1.2.3:2",
        "[::1]:3",
        "203.0.113.9:4",
        "[fd00::1]:5",
        "[::ffff:127.0.0.1]:6",
    ];
    let peer: SocketAddr = peers[usize::from(pick) % peers.len()]
        .parse()
        .expect("peer");
    let nets = trusted();
    let is_trusted = |ip: &IpAddr| nets.iter().any(|n| n.contains(ip));
    let p = peer.ip().to_canonical();
    assert_eq!(client_ip(peer, None, &nets), p);
    let got = client_ip(peer, Some(xff), &nets);
    if !is_trusted(&p) {
        assert_eq!(got, p, "an untrusted peer's header was believed");
        assert_eq!(client_ip(peer, Some(xff), &[]), p);
        return;
    }
    let entries: Vec<IpAddr> = xff
        .split(',')
        .filter_map(|e| parse_entry(e.trim()))
        .map(|ip| ip.to_canonical())
        .collect();
    assert!(
        got == p || entries.contains(&got),
        "{got} from nowhere in {xff:?}"
    );
    // What the client wrote to the left cannot move an untrusted result.
    if !is_trusted(&got) {
        let spoofed = format!("{left},{xff}");
        assert_eq!(
            client_ip(peer, Some(&spoofed), &nets),
            got,
            "spoofed by {left:?}"
        );
    }
    let _ = bucket_key(got);
}

fn callback(query: &str) {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    let repeated = names.windows(2).any(|w| w[0] == w[1]);
    let find = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    match callback_params(Some(query)) {
        Ok(p) => {
            assert!(!repeated, "a repeated parameter was accepted: {query:?}");
            assert_eq!(p.code, find("code"));
            assert_eq!(p.state, find("state"));
            assert_eq!(p.error, find("error"));
            assert_eq!(p.iss, find("iss"));
            // `Debug` depends on neither the code nor the state.
            let without = CallbackParams {
                code: None,
                state: None,
                error: p.error.clone(),
                iss: p.iss.clone(),
            };
            assert_eq!(
                format!("{p:?}"),
                format!("{without:?}"),
                "Debug shows the code or state"
            );
        }
        Err(e) => {
            assert!(repeated, "refused without a repeat: {query:?}");
            let msg = e.to_string();
            assert!(
                !msg.chars().any(char::is_control),
                "control characters in {msg:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut f = data.split(|&b| b == 0xFF);
    let mut next = || f.next().unwrap_or(&[]);
    let (c1, c2, auth, xff, query, extra) = (next(), next(), next(), next(), next(), next());

    let mut headers = HeaderMap::new();
    for c in [c1, c2] {
        if let Ok(v) = HeaderValue::from_bytes(c) {
            headers.append(header::COOKIE, v);
        }
    }
    cookies(&headers);
    // Our own cookie first: read back whatever the client adds after it.
    let token = format!(
        "lks_{}",
        extra.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    if extra.len() >= 4 {
        let set = set_session_cookie(&token, 3600).expect("set-cookie");
        let pair = set
            .to_str()
            .expect("ascii")
            .split(';')
            .next()
            .expect("pair")
            .to_owned();
        let mut ours = HeaderMap::new();
        ours.append(header::COOKIE, HeaderValue::from_str(&pair).expect("value"));
        for v in headers.get_all(header::COOKIE) {
            ours.append(header::COOKIE, v.clone());
        }
        assert_eq!(session_cookie(&ours), Some(token.as_str()));
    }

    if let Ok(v) = HeaderValue::from_bytes(auth) {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v);
        if let Some(t) = bearer(&h) {
            let raw = h[header::AUTHORIZATION].to_str().expect("str");
            let (scheme, rest) = raw.split_once(' ').expect("a space");
            assert!(scheme.eq_ignore_ascii_case("bearer"));
            assert_eq!(rest.trim(), t);
            assert!(!t.is_empty());
        }
    }

    if let (Ok(xff), Ok(left)) = (std::str::from_utf8(xff), std::str::from_utf8(extra)) {
        forwarded(xff, extra.first().copied().unwrap_or(0), left);
    }
    if let Ok(q) = std::str::from_utf8(query) {
        callback(q);
    }
});
