//! The origin a request came from (`http::origin`): the `Host` /
//! `X-Forwarded-Host` value reduced to a plain authority, and the value of
//! a forwarding header the proxy next to us set.
//!
//! The input is a header value and a second, repeated header, separated
//! by 0xFF.
//!
//! Properties:
//! - an accepted authority is non-empty, lower-case, made only of
//!   letters, digits and `.-:[]`, accepted again unchanged, and
//!   `https://<authority>` is a URI whose authority is exactly it (so the
//!   origin we compare and build cannot smuggle a path, user info or a
//!   second host);
//! - a forwarded value is non-empty, trimmed, holds no comma, and ends the
//!   last header value (what the proxy next to us appended).
#![no_main]

use http::{HeaderMap, HeaderValue};
use latchkey_core::fuzzing::{forwarded_value, origin_authority};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0xFF);
    let host = parts.next().unwrap_or_default();
    let repeated = parts.next().unwrap_or_default();

    if let Ok(text) = std::str::from_utf8(host) {
        if let Some(a) = origin_authority(text) {
            assert!(!a.is_empty());
            assert!(
                a.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b".-:[]".contains(&b)),
                "{a:?}"
            );
            assert_eq!(origin_authority(&a).as_deref(), Some(a.as_str()), "not stable");
            let uri: http::Uri = format!("https://{a}").parse().expect("an origin parses");
            assert_eq!(uri.authority().map(|x| x.as_str()), Some(a.as_str()));
            assert_eq!(uri.path(), "/");
        }
    }

    let mut headers = HeaderMap::new();
    for value in [host, repeated] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append("x-forwarded-proto", v);
        }
    }
    if let Some(v) = forwarded_value(&headers, "x-forwarded-proto") {
        assert!(!v.is_empty() && v == v.trim() && !v.contains(','), "{v:?}");
        let last = headers
            .get_all("x-forwarded-proto")
            .iter()
            .next_back()
            .and_then(|h| h.to_str().ok())
            .expect("a value was read from the last header");
        assert!(last.trim_end().ends_with(v), "{v:?} does not end {last:?}");
    }
});
