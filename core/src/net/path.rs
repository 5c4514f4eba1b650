//! The check of a client's path below an upstream's base path (SSRF): the
//! same rule for `/proxy/<provider>/…` and `/agent/<name>/…`.

/// Why a path was refused (shown to the client: it is their own input).
pub type PathError = &'static str;

/// Checks the raw (still percent-encoded) path after `/proxy/<provider>/`
/// (and `/agent/<name>/`): it must stay below the upstream's base path, so
/// nothing that could climb out of it, change the origin or be read
/// differently by another parser is accepted.
///
/// The rule is that no number of percent-decodings, and no parser that
/// treats `;` as the start of path parameters (Tomcat, Jetty, Spring) or
/// `\` as a separator (IIS), can find a segment structure other than the
/// one seen here. So these are refused, literal or encoded: `\`, `@`,
/// `;`, NUL and other control characters; encoded `/` and `.`; encoded `%`
/// (`%25`: a second decoding would see new escapes); percent-encoded bytes
/// that are not valid UTF-8 (overlong forms such as `%C0%AE` for `.`,
/// surrogates, stray continuation bytes); and any segment made only of dots
/// (and encoded spaces, which some servers trim). Provider paths never need
/// any of these; `:` (`models/gemini-pro:generateContent`), `%20` and other
/// encoded data bytes (`%23`, `%C3%A9`) stay allowed.
///
/// One pass over the bytes, no allocation: this runs for every proxied
/// request. The common path (`v1/chat/completions`) is accepted by
/// [`plain_path`] alone; anything else gets the full check, which also
/// names the reason.
pub fn check_path(raw: &str) -> Result<(), PathError> {
    if plain_path(raw.as_bytes()) {
        return Ok(());
    }
    check_path_thoroughly(raw)
}

/// Whether `b` is made only of unreserved bytes (`A-Z a-z 0-9 - _ ~ .`)
/// and `/`, with no leading `/`, no empty segment but a last one, and no
/// segment of dots only. Such a path passes every rule of
/// [`check_path_thoroughly`] (no `%`, `:`, `\`, `@`, `;`, control byte,
/// `#` or non-ASCII to look at), so it is accepted without the full pass:
/// a table lookup per byte, where the full check costs ~1.5k instructions
/// per request. `false` only means "not decided here".
fn plain_path(b: &[u8]) -> bool {
    let mut seg_len = 0usize;
    let mut dots_only = true;
    for &c in b {
        if c == b'/' {
            if seg_len == 0 || dots_only {
                return false;
            }
            seg_len = 0;
            dots_only = true;
        } else if UNRESERVED[usize::from(c)] {
            seg_len += 1;
            dots_only &= c == b'.';
        } else {
            return false;
        }
    }
    seg_len == 0 || !dots_only
}

/// RFC 3986 §2.3's unreserved characters.
const UNRESERVED: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b'.');
        c += 1;
    }
    t
};

/// [`check_path`] without the shortcut: every rule, and the reason for a
/// refusal. The fuzz target (through `crate::fuzzing`) holds the two equal.
pub(crate) fn check_path_thoroughly(raw: &str) -> Result<(), PathError> {
    let b = raw.as_bytes();
    let starts = |p: &[u8]| b.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    if raw.contains("://") || starts(b"http:") || starts(b"https:") {
        return Err("absolute URLs are not allowed in the path");
    }
    if raw.starts_with('/') || raw.contains("//") {
        return Err("empty path segments (`//`) are not allowed");
    }
    // One pass for what may appear neither literally nor percent-encoded;
    // the first kind found in the order below is the one reported.
    let mut found = Found::default();
    let mut utf8 = Utf8Seq::default();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    let c = (hi << 4) | lo;
                    if c >= 0x80 {
                        found.bad_utf8 |= !utf8.push(c);
                    } else {
                        found.bad_utf8 |= utf8.pending();
                        found.byte(c, true);
                    }
                    i += 3;
                    continue;
                }
                _ => found.malformed = true,
            },
            c => {
                // An encoded sequence cut short by a literal byte.
                found.bad_utf8 |= utf8.pending();
                found.byte(c, false);
            }
        }
        i += 1;
    }
    found.bad_utf8 |= utf8.pending();
    // Look-alikes, percent-encoded (seen by the decoder above) or literal
    // (only when the path is not plain ASCII: no cost in the common case).
    let lookalike = utf8.lookalike || (!raw.is_ascii() && raw.chars().any(is_lookalike));
    let refused = [
        (found.backslash, "backslashes are not allowed in the path"),
        (found.at, "`@` is not allowed in the path"),
        (
            found.encoded_slash,
            "encoded slashes are not allowed in the path",
        ),
        (
            found.encoded_dot,
            "encoded dots are not allowed in the path",
        ),
        (
            found.control,
            "control characters are not allowed in the path",
        ),
        (found.fragment, "fragments are not allowed in the path"),
        (
            found.semicolon,
            "`;` (path parameters) is not allowed in the path",
        ),
        (
            found.encoded_percent,
            "an encoded `%` (double encoding) is not allowed in the path",
        ),
        (
            found.bad_utf8,
            "percent-encoded bytes in the path must be valid UTF-8 (no overlong forms)",
        ),
        (
            lookalike,
            "characters that normalise to `.`, `/`, `\\`, `@`, `;` or `%` are not allowed in the path",
        ),
    ];
    if let Some(&(_, why)) = refused.iter().find(|(hit, _)| *hit) {
        return Err(why);
    }
    if raw.split('/').any(dot_segment) {
        return Err("`.` and `..` segments are not allowed in the path");
    }
    if found.malformed {
        return Err("malformed percent-encoding in the path");
    }
    Ok(())
}

/// A segment of dots only (`.`, `..`, `...`), allowing encoded spaces
/// (`..%20`), which some servers trim before resolving dot segments.
fn dot_segment(seg: &str) -> bool {
    let s = seg.as_bytes();
    let mut dots = 0;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'.' => dots += 1,
            b'%' if s.get(i + 1..i + 3) == Some(b"20".as_slice()) => {
                i += 3;
                continue;
            }
            _ => return false,
        }
        i += 1;
    }
    dots > 0
}

/// What [`check_path`] saw in a path.
#[derive(Default)]
struct Found {
    backslash: bool,
    at: bool,
    encoded_slash: bool,
    encoded_dot: bool,
    encoded_percent: bool,
    semicolon: bool,
    control: bool,
    fragment: bool,
    bad_utf8: bool,
    malformed: bool,
}

impl Found {
    /// Notes ASCII byte `c` of the path; `encoded`: it was written as `%XX`.
    fn byte(&mut self, c: u8, encoded: bool) {
        match c {
            b'\\' => self.backslash = true,
            b'@' => self.at = true,
            b';' => self.semicolon = true,
            b'/' if encoded => self.encoded_slash = true,
            b'.' if encoded => self.encoded_dot = true,
            b'%' if encoded => self.encoded_percent = true,
            // Control bytes in any form (a decoding upstream would see
            // them); space and `#` only literally (encoded, they are
            // data: `%20`, `%23`).
            c if c.is_ascii_control() => self.control = true,
            b'#' if !encoded => self.fragment = true,
            b' ' if !encoded => self.control = true,
            _ => {}
        }
    }
}

/// A UTF-8 sequence being read from percent-encoded bytes.
#[derive(Default)]
struct Utf8Seq {
    buf: [u8; 4],
    len: usize,
    want: usize,
    /// A completed sequence was a look-alike of `.`, `/`, `\`, … (see
    /// [`is_lookalike`]).
    lookalike: bool,
}

/// Characters that Unicode compatibility normalisation (NFKC/NFKD, which
/// some frameworks apply to paths before resolving them) or a lenient
/// parser turns into `.`, `/`, `\`, `@`, `;` or `%`: a path that holds one
/// could mean a different segment structure to such an upstream.
fn is_lookalike(c: char) -> bool {
    matches!(
        c,
        // dots: one/two-dot leaders, ellipsis, small and fullwidth full
        // stops, ideographic and halfwidth ideographic full stops
        '\u{2024}' | '\u{2025}' | '\u{2026}' | '\u{FE52}' | '\u{FF0E}' | '\u{3002}' | '\u{FF61}'
        // slashes: fullwidth solidus, division and fraction slashes, big solidus
        | '\u{FF0F}' | '\u{2215}' | '\u{2044}' | '\u{29F8}'
        // backslashes: fullwidth and small reverse solidus, set minus, big reverse solidus
        | '\u{FF3C}' | '\u{FE68}' | '\u{2216}' | '\u{29F5}'
        // `@`, `;`, `%` in fullwidth and small forms
        | '\u{FF20}' | '\u{FE6B}' | '\u{FF1B}' | '\u{FE54}' | '\u{FF05}' | '\u{FE6A}'
    )
}

impl Utf8Seq {
    /// Takes encoded byte `c` (≥ 0x80); `false` if the bytes so far cannot
    /// be valid UTF-8.
    fn push(&mut self, c: u8) -> bool {
        if self.want == 0 {
            // Lead bytes only: C0/C1 (always overlong) and F5.. never
            // start a valid sequence, nor does a continuation byte.
            self.want = match c {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => return false,
            };
            self.len = 0;
        }
        self.buf[self.len] = c;
        self.len += 1;
        if self.len < self.want {
            return true;
        }
        // Complete: the standard check refuses overlong forms, surrogates
        // and code points past U+10FFFF.
        let decoded = std::str::from_utf8(&self.buf[..self.len]);
        if let Ok(text) = decoded {
            self.lookalike |= text.chars().any(is_lookalike);
        }
        self.want = 0;
        self.len = 0;
        decoded.is_ok()
    }

    /// Whether a sequence was started and not finished; forgets it.
    fn pending(&mut self) -> bool {
        let open = self.want != 0;
        self.want = 0;
        self.len = 0;
        open
    }
}

/// The value of one hex digit.
fn hex(c: &u8) -> Option<u8> {
    // A hex digit's value is below 16: fits in u8.
    (*c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortcut_agrees_with_the_full_check() {
        // Every path of up to five bytes over an alphabet with each kind
        // of byte the shortcut has to get right, and a few longer ones:
        // the shortcut never accepts what the full check refuses.
        let alphabet = [b'a', b'.', b'/', b'%', b'2', b'e', b'~', b':', b'@', b' '];
        let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = paths.clone();
        for _ in 0..5 {
            last = last
                .iter()
                .flat_map(|p| {
                    alphabet.iter().map(move |&c| {
                        let mut q = p.clone();
                        q.push(c);
                        q
                    })
                })
                .collect();
            paths.extend(last.iter().cloned());
        }
        for extra in [
            "v1/chat/completions",
            "v1/models/",
            "a/.../b",
            "a/..",
            ".x/y.",
            "-_~/",
        ] {
            paths.push(extra.as_bytes().to_vec());
        }
        let mut shortcut = 0;
        for p in &paths {
            let raw = std::str::from_utf8(p).expect("ascii");
            if plain_path(p) {
                shortcut += 1;
                assert_eq!(check_path_thoroughly(raw), Ok(()), "{raw:?}");
            }
            assert_eq!(check_path(raw), check_path_thoroughly(raw), "{raw:?}");
        }
        // The shortcut is taken for the usual paths, not only for "".
        assert!(plain_path(b"v1/chat/completions"));
        assert!(shortcut > 1000, "{shortcut}");
        for refused in [
            "/v1", "v1//x", "a/./b", "..", "a/..", "v1/%2e", "a b", "x@y",
        ] {
            assert!(!plain_path(refused.as_bytes()), "{refused:?}");
        }
    }

    #[test]
    fn unicode_lookalikes_of_separators_are_refused() {
        for bad in [
            "%EF%BC%8E%EF%BC%8E/x",
            "a/%E2%80%A4%E2%80%A4/x",
            "a/%E3%80%82%E3%80%82/x",
            "a/%EF%B9%92/x",
            "a/..%ef%bc%8f",
            "a/%E2%80%A6/x",
            "a/%E2%88%95etc",
            "a/%EF%BC%BCx",
            "\u{FF0E}\u{FF0E}/x",
            "a/\u{2024}\u{2024}/b",
            "v1/x\u{FF20}evil",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        // Other non-ASCII data stays allowed, encoded or not.
        for ok in [
            "v1/caf%C3%A9",
            "v1/%E6%97%A5%E6%9C%AC",
            "v1/café",
            "v1/models/gpt-4o",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn ssrf_paths_are_refused() {
        for ok in [
            "v1/chat/completions",
            "v1/models/gpt-4o",
            "v1beta/models/gemini-pro:generateContent",
            "",
            "v1/files/file-abc%20x",
            "v1/a.b/c..d",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "../admin",
            "v1/../../etc",
            "v1/./x",
            "%2e%2e/x",
            "%2E%2e/x",
            ".%2e/x",
            "v1//x",
            "/x",
            "http://evil.example/x",
            "https:/evil.example",
            "x/http://evil",
            "evil.example@x",
            "v1%40evil",
            "v1\\..\\x",
            "v1%5c..%5cx",
            "v1%2f..%2fx",
            "v1%2F..",
            "v1%00",
            "v1/%zz",
            "v1/%2",
            "v1/a#b",
            "v1/a b",
            "v1/a\tb",
            "v1/a\x7fb",
            "HTTPS:evil",
            "%%2e%2e/x",
        ] {
            assert!(check_path(bad).is_err(), "{bad} must be refused");
        }
        // Encoded bytes that are data, not structure, pass; the reason
        // given is the first kind found.
        for ok in [
            "v1/a%23b",
            "v1/a%20b",
            "v1/%C3%A9t%C3%A9",
            "v1/%F0%9F%94%91",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check_path("v1%5c%2f%2e%00"),
            Err("backslashes are not allowed in the path")
        );
        assert_eq!(
            check_path("v1/%2E%2E/%zz"),
            Err("encoded dots are not allowed in the path")
        );
        assert_eq!(
            check_path("v1/%zz/.."),
            Err("`.` and `..` segments are not allowed in the path")
        );
        assert_eq!(
            check_path("v1/%zz"),
            Err("malformed percent-encoding in the path")
        );
    }

    /// Issue #19 item 15: what Tomcat/Jetty-style (`;` path parameters),
    /// double-decoding and lenient UTF-8 upstreams would read as a climb
    /// out of the base path, next to the provider paths that must keep
    /// working.
    #[test]
    fn traversal_variants_for_other_parsers_are_refused() {
        let attacks = [
            // `;` path parameters next to dot segments, and anywhere.
            ("..;/admin", "`;` (path parameters)"),
            ("v1/..;/..;/admin", "`;` (path parameters)"),
            ("v1/..%3B/admin", "`;` (path parameters)"),
            ("v1/..%3b/admin", "`;` (path parameters)"),
            ("v1/.;/x", "`;` (path parameters)"),
            ("v1/x;jsessionid=1/../y", "`;` (path parameters)"),
            ("v1/models;x=1", "`;` (path parameters)"),
            // Double (and triple) encodings of `.`, `/`, `\`.
            ("v1/%252e%252e/admin", "double encoding"),
            ("v1/%25%32%65%25%32%65/admin", "double encoding"),
            ("v1/%25252e%25252e/admin", "double encoding"),
            ("v1%252f..%252fadmin", "double encoding"),
            ("v1/%255c..", "double encoding"),
            ("v1/%25", "double encoding"),
            // Overlong and otherwise invalid UTF-8.
            ("v1/%C0%AE%C0%AE/admin", "valid UTF-8"),
            ("v1/%c0%ae./admin", "valid UTF-8"),
            ("v1/%E0%80%AE%E0%80%AE/x", "valid UTF-8"),
            ("v1/%F0%80%80%AE/x", "valid UTF-8"),
            ("v1/%C0%AF../x", "valid UTF-8"),
            ("v1/%C1%9C/x", "valid UTF-8"),
            ("v1/%ED%A0%80", "valid UTF-8"),
            ("v1/%F5%80%80%80", "valid UTF-8"),
            ("v1/%80", "valid UTF-8"),
            ("v1/%C3", "valid UTF-8"),
            ("v1/%C3/x", "valid UTF-8"),
            ("v1/%C3a", "valid UTF-8"),
            ("v1/%E2%82", "valid UTF-8"),
            // Encoded control bytes (a decoding upstream sees them).
            ("v1/a%0Ab", "control characters"),
            ("v1/a%0d%0aHost:%20x", "control characters"),
            ("v1/..%00/x", "control characters"),
            ("v1/a%7Fb", "control characters"),
            ("v1/a%09", "control characters"),
            // Encoded structure, and dot-only segments with trimmed spaces.
            ("v1/%2e%2e/x", "encoded dots"),
            ("v1/%2F..%2Fx", "encoded slashes"),
            ("v1/%5C..%5Cx", "backslashes"),
            ("v1\\..\\x", "backslashes"),
            ("v1/..%20/x", "`.` and `..` segments"),
            ("v1/.../x", "`.` and `..` segments"),
            ("v1/%20../x", "`.` and `..` segments"),
            ("..", "`.` and `..` segments"),
            ("v1/..", "`.` and `..` segments"),
        ];
        for (path, why) in attacks {
            let err = check_path(path).expect_err(path);
            assert!(err.contains(why), "{path}: {err} (wanted {why})");
        }
        for ok in [
            "v1/chat/completions",
            "v1/messages",
            "v1/messages/count_tokens",
            "v1/models",
            "v1/models/gpt-4o-2024-08-06",
            "v1beta/models/gemini-2.0-flash:generateContent",
            "v1beta/models/gemini-pro:streamGenerateContent",
            "v1/projects/p-1/locations/us-central1/publishers/google/models/gemini-pro:predict",
            "api/v1/models/meta-llama/Llama-3-70b-instruct",
            "v1/files/file-abc/content",
            "v1/files/a%20b",
            "v1/a.b/c..d/.well-known/x",
            "v1/threads/thread_1/runs/run_2/steps",
            "v1/vector_stores/vs_1/files",
            "v1/%C3%A9t%C3%A9/%E2%82%AC/%F0%9F%94%91",
            "v1/a%23b",
            "v1/a%3Fb",
            "v1/models/llama3%3A8b",
            "v1/~user/x",
            "v1/a+b,c=d!$&'()*",
            "",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
    }

    /// Random bytes never panic the check, and whatever it accepts has no
    /// dot segment, `;`, `\`, or encoded `%`, `.`, `/` in it.
    #[test]
    fn accepted_paths_have_no_hidden_structure() {
        let alphabet: &[&str] = &[
            "a", ".", "..", "/", "%", "%2e", "%2E", "%25", "%3b", ";", "%c0", "%ae", "%C3", "%A9",
            "%2f", "%5c", "\\", "%20", "%00", "2", "e", "%0a", ":", "@",
        ];
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut p = String::new();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let n = (rng % 9) as usize;
            for k in 0..n {
                let r = rng.rotate_left((k * 7) as u32);
                p.push_str(alphabet[(r % alphabet.len() as u64) as usize]);
            }
            if check_path(&p).is_ok() {
                let lower = p.to_ascii_lowercase();
                for bad in [
                    "%2e", "%2f", "%25", "%3b", "%5c", "%00", "%0a", ";", "\\", "@",
                ] {
                    assert!(!lower.contains(bad), "{p} accepted");
                }
                assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p} accepted");
                assert!(!lower.contains("%c0"), "{p} accepted");
            }
        }
    }
}
