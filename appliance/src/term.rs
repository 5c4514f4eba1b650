//! Text from the database or the network, made safe for a terminal.
//!
//! Whatever the CLI prints that it did not write itself (usernames, audit
//! fields, vault names and labels, server messages) goes through [`safe`]
//! first: a control character (newline, carriage return, escape, the C1
//! range, DEL) or a bidirectional override could otherwise move the cursor,
//! recolour the screen, or forge a line that looks like a real entry. Such
//! characters are shown as visible `\u{…}` escapes instead, so nothing is
//! hidden and nothing acts.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters that change how a terminal shows the text around them.
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// `s` with every character that acts on a terminal written as `\u{hex}`
/// (and a literal backslash before `u{` doubled, so an escape cannot be
/// faked by the text itself).
pub fn safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| acts_on_terminal(c) || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if acts_on_terminal(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`safe`] for an optional field, `-` when absent.
pub fn safe_or_dash(s: Option<&str>) -> Cow<'_, str> {
    s.map_or(Cow::Borrowed("-"), safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert!(matches!(safe("owner@example.com"), Cow::Borrowed(_)));
        assert_eq!(safe("ünïcödé ok"), "ünïcödé ok");
    }

    #[test]
    fn controls_and_overrides_are_escaped() {
        let forged = "x\n    42  2026-01-01T00:00:00Z  success  login  owner\x1b[2K\r\u{202E}";
        let shown = safe(forged);
        assert!(!shown.chars().any(acts_on_terminal), "{shown}");
        assert!(shown.contains("\\u{a}") && shown.contains("\\u{1b}"));
        assert!(shown.contains("\\u{d}") && shown.contains("\\u{202e}"));
        assert_eq!(safe("\u{7f}\u{85}"), "\\u{7f}\\u{85}");
    }

    #[test]
    fn a_literal_escape_cannot_pass_for_a_real_one() {
        assert_eq!(safe("a\\u{a}"), "a\\\\u{a}");
        assert_eq!(safe_or_dash(None), "-");
    }
}
