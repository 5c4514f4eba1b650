//! The members of one JSON object, found without building anything.
//!
//! Usage accounting reads four or five top-level fields of every response
//! (`model`, `usage`, …) and skips the rest — most of the bytes, the
//! generated text. Through `serde`'s derive that skipping cost about 20
//! instructions a byte, ~7 % of a proxied request's instructions
//! (docs/PERFORMANCE.md); this scanner walks the bytes once, matching
//! brackets and skipping strings (an escaped quote never ends one), and
//! hands out each member's key and the exact text of its value. The few
//! values that are read are then parsed on their own (counts as integers,
//! a model name by `serde_json` when it holds escapes).
//!
//! It checks structure — quotes, brackets, colons, commas, nesting depth,
//! control characters outside strings — but not the spelling of scalars
//! (`tru` passes as a skipped value) nor what is inside a string (a raw
//! control character there passes) where a full parser would refuse the
//! body.
//! A response that broken has no usage worth trusting either way, and the
//! upstream decides what it reports as usage regardless.

/// Deepest nesting accepted (`serde_json`'s limit too).
const MAX_DEPTH: u32 = 128;

/// What a byte means to the scanner's two byte loops, one table lookup
/// per byte instead of a chain of comparisons (the loops see every byte
/// outside strings: ~5 % fewer instructions for the scan).
/// Stops [`Cursor::nested`]: a quote, a bracket, or a control byte other
/// than the whitespace ones.
const STOPS_NESTED: u8 = 1;
/// Ends a scalar value: `,`, `}`, `]` or whitespace.
const ENDS_SCALAR: u8 = 2;
/// Cannot be inside a scalar value: `{`, `[`, `"`, `:` or a control byte.
const NOT_IN_SCALAR: u8 = 4;

static CLASS: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let ws = matches!(c, b' ' | b'\t' | b'\n' | b'\r');
        let control = c < 0x20;
        if matches!(c, b'"' | b'{' | b'}' | b'[' | b']')
            || (control && !matches!(c, b'\t' | b'\n' | b'\r'))
        {
            t[b] |= STOPS_NESTED;
        }
        if ws || matches!(c, b',' | b'}' | b']') {
            t[b] |= ENDS_SCALAR;
        }
        if control || matches!(c, b'{' | b'[' | b'"' | b':') {
            t[b] |= NOT_IN_SCALAR;
        }
        b += 1;
    }
    t
}

fn class(c: u8) -> u8 {
    CLASS[usize::from(c)]
}

/// Calls `each(key, value)` for every member of the object `json`, in
/// order: `key` as written between its quotes (escapes not decoded),
/// `value` the exact JSON text. Returns `false` when `json` is not one
/// object (whitespace around it allowed); members may have been handed out
/// before the flaw was found, so callers apply what they saw only on
/// `true`.
pub fn members<'a>(json: &'a [u8], mut each: impl FnMut(&'a [u8], &'a [u8])) -> bool {
    let mut c = Cursor { b: json, i: 0 };
    let mut object = || -> Option<()> {
        c.ws();
        c.eat(b'{')?;
        c.ws();
        if c.peek() == Some(b'}') {
            c.i += 1;
        } else {
            loop {
                let key = c.string()?;
                c.ws();
                c.eat(b':')?;
                c.ws();
                let value = c.value()?;
                each(key, value);
                c.ws();
                match c.next()? {
                    b',' => c.ws(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        c.ws();
        (c.i == json.len()).then_some(())
    };
    object().is_some()
}

/// A JSON integer from 0 to `u64::MAX`, written plainly (no sign, no
/// leading zero, no fraction or exponent): what a token count is.
pub fn count(value: &[u8]) -> Option<u64> {
    let plain = !value.is_empty()
        && value.iter().all(u8::is_ascii_digit)
        && (value.len() == 1 || value[0] != b'0');
    if !plain {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A JSON string value, decoded (`None` for anything else).
pub fn string(value: &[u8]) -> Option<String> {
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        serde_json::from_slice(value).ok()
    } else {
        std::str::from_utf8(inner).ok().map(str::to_owned)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string at the cursor; returns what is between the quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            // Most of a response's bytes are inside strings (the generated
            // text): jump to the next quote or backslash (memchr, SIMD).
            let at = memchr::memchr2(b'"', b'\\', self.b.get(self.i..)?)?;
            self.i += at;
            match self.next()? {
                b'"' => return Some(&self.b[start..self.i - 1]),
                // Whatever follows a backslash is part of the escape
                // (`\"` included), never the end of the string.
                _ => {
                    self.next()?;
                }
            }
        }
    }

    /// One value at the cursor; returns its text.
    fn value(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => self.nested()?,
            _ => {
                while let Some(c) = self.peek() {
                    let k = class(c);
                    if k & ENDS_SCALAR != 0 {
                        break;
                    }
                    if k & NOT_IN_SCALAR != 0 {
                        return None;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    return None;
                }
            }
        }
        Some(&self.b[start..self.i])
    }

    /// An object or array at the cursor, skipped to its matching close.
    /// Brackets must match in kind; strings inside are skipped whole.
    fn nested(&mut self) -> Option<()> {
        // One bit per open bracket (1: object), deepest in the low bit.
        let mut kinds: u128 = 0;
        let mut depth: u32 = 0;
        loop {
            let rest = self.b.get(self.i..)?;
            let at = rest.iter().position(|&c| class(c) & STOPS_NESTED != 0)?;
            self.i += at;
            match self.peek()? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                open @ (b'{' | b'[') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    kinds = (kinds << 1) | u128::from(open == b'{');
                }
                close @ (b'}' | b']') => {
                    if depth == 0 || (kinds & 1 == 1) != (close == b'}') {
                        return None;
                    }
                    kinds >>= 1;
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Some(());
                    }
                }
                _ => return None,
            }
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(json: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        let ok = members(json.as_bytes(), |k, v| {
            out.push((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        });
        ok.then_some(out)
    }

    fn pairs(p: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn members_and_their_exact_values() {
        assert_eq!(all("{}"), pairs(&[]));
        assert_eq!(all(" \n{ } \t"), pairs(&[]));
        assert_eq!(
            all(r#"{"a":1,"b" : [1,{"c":"]}"}], "d":{"e":[]},"f":"x\"}y","g":null , "h":-1.5e3}"#),
            pairs(&[
                ("a", "1"),
                ("b", r#"[1,{"c":"]}"}]"#),
                ("d", r#"{"e":[]}"#),
                ("f", r#""x\"}y""#),
                ("g", "null"),
                ("h", "-1.5e3"),
            ])
        );
        // Keys are handed out as written.
        assert_eq!(all(r#"{"u\u0073age":1}"#), pairs(&[(r"u\u0073age", "1")]));
    }

    #[test]
    fn text_inside_strings_never_counts_as_structure() {
        // Generated text that imitates JSON stays inside its string.
        let body =
            r#"{"content":"\",\"usage\":{\"prompt_tokens\":999}} \\","usage":{"prompt_tokens":1}}"#;
        let got = all(body).expect("an object");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], ("usage".into(), r#"{"prompt_tokens":1}"#.into()));
        let body = r#"{"choices":[{"text":"}]},\"usage\":{\"x\":1},{["}],"model":"m"}"#;
        let got = all(body).expect("an object");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], ("model".into(), r#""m""#.into()));
    }

    #[test]
    fn broken_objects_are_refused() {
        for bad in [
            "",
            "[]",
            "\"x\"",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":1}}",
            "{\"a\":1} x",
            "{\"a\":[1,2}",
            "{\"a\":{\"b\":1]}",
            "{\"a\":\"unterminated}",
            "{\"a\":\"x\\",
            "{a:1}",
            "{\"a\":1:2}",
            "{\"a\":]}",
        ] {
            assert_eq!(all(bad), None, "{bad:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(129), "]".repeat(129));
        assert_eq!(all(&deep), None, "too deep");
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(128), "]".repeat(128));
        assert!(all(&ok).is_some(), "deep but within the limit");
    }

    #[test]
    fn counts_are_plain_integers() {
        assert_eq!(count(b"0"), Some(0));
        assert_eq!(count(b"14"), Some(14));
        assert_eq!(count(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"01",
            b"1.0",
            b"1e3",
            b"\"5\"",
            b"null",
            b"18446744073709551616",
        ] {
            assert_eq!(count(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn strings_are_decoded() {
        assert_eq!(string(br#""gpt-4o""#), Some("gpt-4o".into()));
        assert_eq!(string(br#""a\"b\u00e9""#), Some("a\"bé".into()));
        assert_eq!(string(b"7"), None);
        assert_eq!(string(b"\""), None);
        assert_eq!(string(br#""bad \q escape""#), None);
    }
}
