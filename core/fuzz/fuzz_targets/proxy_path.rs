//! The proxy's path check (`net::path::check_path`), which stands
//! between a client's path and every upstream (and agent backend).
//!
//! Properties:
//! - an accepted path means the same thing to every parser we know of: no
//!   number of percent-decodings (0, 1, 2), no reading of overlong UTF-8
//!   (`%C0%AE` as `.`), of `;` as path parameters (Tomcat/Jetty/Spring) or
//!   of `\` as a separator (IIS) finds a `.`/`..` segment, an empty
//!   segment, a leading `/` or a NUL;
//! - the verdict is local: every prefix of an accepted path that ends
//!   before a `/` is accepted, and two accepted paths joined by `/` are
//!   accepted;
//! - the verdict is deterministic (checked twice, same answer), and the
//!   shortcut for plain paths gives the full check's verdict.
#![no_main]

use latchkey_core::net::path::check_path;
use libfuzzer_sys::fuzz_target;

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// One percent-decoding (malformed escapes kept as they are).
fn decode(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Overlong UTF-8 forms of `.`, `/` and `\` read as the ASCII byte, as a
/// lax decoder would.
fn overlong(b: &[u8]) -> Vec<u8> {
    const FORMS: [(&[u8], u8); 9] = [
        (&[0xC0, 0xAE], b'.'),
        (&[0xE0, 0x80, 0xAE], b'.'),
        (&[0xF0, 0x80, 0x80, 0xAE], b'.'),
        (&[0xC0, 0xAF], b'/'),
        (&[0xE0, 0x80, 0xAF], b'/'),
        (&[0xF0, 0x80, 0x80, 0xAF], b'/'),
        (&[0xC1, 0x9C], b'\\'),
        (&[0xE0, 0x81, 0x9C], b'\\'),
        (&[0xC1, 0x1C], b'\\'),
    ];
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    'outer: while i < b.len() {
        for (form, c) in FORMS {
            if b[i..].starts_with(form) {
                out.push(c);
                i += form.len();
                continue 'outer;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// What some parser could see as climbing out of the base path, or as
/// another origin.
fn escapes(p: &[u8]) -> Option<&'static str> {
    let p: Vec<u8> = p
        .iter()
        .map(|&c| if c == b'\\' { b'/' } else { c })
        .collect();
    if p.contains(&0) {
        return Some("NUL");
    }
    if p.first() == Some(&b'/') {
        return Some("leading /");
    }
    if p.windows(2).any(|w| w == b"//") {
        return Some("empty segment");
    }
    for seg in p.split(|&c| c == b'/') {
        // `;params` dropped (Tomcat, Jetty), spaces trimmed.
        let seg = seg.split(|&c| c == b';').next().unwrap_or(seg);
        let mut seg = seg;
        while let [b' ', rest @ ..] = seg {
            seg = rest;
        }
        while let [rest @ .., b' '] = seg {
            seg = rest;
        }
        if seg == b"." || seg == b".." {
            return Some("dot segment");
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let verdict = check_path(raw);
    assert_eq!(verdict, check_path(raw), "not deterministic: {raw:?}");
    assert_eq!(
        verdict,
        latchkey_core::fuzzing::check_path_thoroughly(raw),
        "the plain-path shortcut disagrees with the full check: {raw:?}"
    );
    if verdict.is_err() {
        return;
    }
    let d0 = raw.as_bytes().to_vec();
    let d1 = decode(&d0);
    let d2 = decode(&d1);
    for (level, text) in [(0, &d0), (1, &d1), (2, &d2)] {
        for (how, t) in [("as is", text.clone()), ("overlong UTF-8", overlong(text))] {
            if let Some(why) = escapes(&t) {
                panic!("{raw:?} accepted, but after {level} decoding(s), {how}, it has a {why}");
            }
        }
    }
    // Local verdict: prefixes ending before a `/` pass too…
    for (i, _) in raw.match_indices('/') {
        assert_eq!(
            check_path(&raw[..i]),
            Ok(()),
            "{raw:?} accepted but its prefix {:?} refused",
            &raw[..i]
        );
    }
    // …and two accepted paths joined by `/` pass.
    if let Some((a, b)) = raw.split_once('/')
        && !a.is_empty()
        && !b.is_empty()
    {
        let swapped = format!("{b}/{a}");
        if check_path(b).is_ok() && !b.ends_with('/') {
            assert_eq!(
                check_path(&swapped),
                Ok(()),
                "{a:?} and {b:?} accepted, {swapped:?} refused"
            );
        }
    }
});
