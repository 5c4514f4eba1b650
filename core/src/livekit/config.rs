//! `[livekit.<name>]`: one LiveKit project Latchkey mints room tokens for,
//! and turning it into a checked [`Section`] once at startup.
//!
//! Every error names its key (`livekit.home.rooms: …`), like the rest of
//! the configuration. The defaults are the safe end of each setting: no
//! room unless listed, identities only under the caller's own username,
//! only the grants an ordinary participant needs, tokens valid for ten
//! minutes and never more than an hour.

use super::grants::{Grant, PublishSource};
use crate::auth::scope::{EntryName, ProviderName, Scope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest `max_ttl` a section may set: a LiveKit token only has to live
/// until its holder joins (the server refreshes a connected participant's
/// token itself), so a day is already generous.
pub const MAX_TTL_CAP: Duration = Duration::from_secs(24 * 3600);
/// Longest room name, identity or pattern, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The placeholder a room or identity pattern may use for the caller's
/// username.
pub const USER_PLACEHOLDER: &str = "{user}";

/// `[livekit.<name>]` as written in the file. `api_key`, `secret`, `url`
/// and `rooms` are required.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveKitSettings {
    /// The LiveKit API key (the token's `iss`; not a secret).
    pub api_key: Option<String>,
    /// The vault entry holding the API secret that signs tokens.
    pub secret: Option<String>,
    /// The LiveKit server's URL handed back with each token
    /// (`wss://…`, or `ws://` on a local network).
    pub url: Option<String>,
    /// Room names or patterns a token may name (`*` matches any run of
    /// characters; `{user}` stands for the caller's username).
    pub rooms: Vec<String>,
    /// Participant identities a token may carry, as patterns like `rooms`.
    pub identities: Vec<String>,
    /// The video grants a token may carry (LiveKit's names, e.g.
    /// `roomJoin`, `canPublish`).
    pub grants: Vec<String>,
    /// If not empty: the only track sources a participant may publish
    /// (`camera`, `microphone`, `screen_share`, `screen_share_audio`).
    pub publish_sources: Vec<String>,
    /// A token's lifetime when the request names none.
    #[serde(with = "crate::duration_str")]
    pub default_ttl: Duration,
    /// The longest lifetime a request may ask for.
    #[serde(with = "crate::duration_str")]
    pub max_ttl: Duration,
}

impl Default for LiveKitSettings {
    fn default() -> Self {
        LiveKitSettings {
            api_key: None,
            secret: None,
            url: None,
            rooms: Vec::new(),
            identities: vec![USER_PLACEHOLDER.into(), format!("{USER_PLACEHOLDER}-*")],
            grants: Grant::PARTICIPANT
                .iter()
                .map(|g| g.name().to_string())
                .collect(),
            publish_sources: Vec::new(),
            default_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(3600),
        }
    }
}

/// One checked section.
#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    /// `livekit:<name>`: what an API key needs.
    pub scope: Scope,
    pub api_key: String,
    /// The vault entry of the API secret.
    pub secret_entry: String,
    pub url: String,
    pub rooms: Vec<Pattern>,
    pub identities: Vec<Pattern>,
    /// Sorted, without duplicates.
    pub grants: Vec<Grant>,
    /// Empty: any source.
    pub publish_sources: Vec<PublishSource>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

/// Checks every section; the error is `(key, message)`.
pub fn resolve_all(
    sections: &BTreeMap<String, LiveKitSettings>,
) -> Result<Vec<Section>, (String, String)> {
    sections.iter().map(|(name, s)| resolve(name, s)).collect()
}

/// Checks one `[livekit.<name>]` section.
pub fn resolve(name: &str, s: &LiveKitSettings) -> Result<Section, (String, String)> {
    let key = |field: &str| format!("livekit.{name}.{field}");
    ProviderName::new(name).map_err(|e| {
        (
            format!("livekit.{name}"),
            e.replace("a provider name", "a LiveKit section's name"),
        )
    })?;
    let scope = Scope::livekit(name).map_err(|e| (format!("livekit.{name}"), e.to_string()))?;
    let api_key = s.api_key.as_deref().map(str::trim).unwrap_or_default();
    if api_key.is_empty() {
        return Err((
            key("api_key"),
            "the LiveKit API key is needed, e.g. api_key = \"APIxxxxxxxx\"".into(),
        ));
    }
    if api_key.len() > MAX_NAME_LEN || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err((
            key("api_key"),
            format!("an API key is 1 to {MAX_NAME_LEN} printable ASCII characters without spaces"),
        ));
    }
    let secret_entry = s.secret.as_deref().ok_or_else(|| {
        (
            key("secret"),
            "the vault entry holding the API secret is needed, e.g. secret = \"livekit-secret\""
                .to_string(),
        )
    })?;
    EntryName::new(secret_entry).map_err(|e| (key("secret"), e))?;
    let url = s
        .url
        .as_deref()
        .ok_or_else(|| {
            (
                key("url"),
                "the LiveKit server's URL is needed, e.g. url = \"wss://my-project.livekit.cloud\""
                    .to_string(),
            )
        })
        .and_then(|u| check_url(u).map_err(|m| (key("url"), m)))?;
    if s.rooms.is_empty() {
        return Err((
            key("rooms"),
            "at least one room name or pattern is needed, e.g. rooms = [\"agent-*\"]".into(),
        ));
    }
    let patterns = |field: &str, list: &[String]| {
        list.iter()
            .map(|p| Pattern::new(p).map_err(|m| (key(field), m)))
            .collect::<Result<Vec<_>, _>>()
    };
    let rooms = patterns("rooms", &s.rooms)?;
    if s.identities.is_empty() {
        return Err((
            key("identities"),
            "at least one identity or pattern is needed (default: [\"{user}\", \"{user}-*\"])"
                .into(),
        ));
    }
    let identities = patterns("identities", &s.identities)?;
    let mut grants = s
        .grants
        .iter()
        .map(|g| Grant::parse(g).map_err(|m| (key("grants"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    grants.sort();
    grants.dedup();
    let mut publish_sources = s
        .publish_sources
        .iter()
        .map(|p| PublishSource::parse(p).map_err(|m| (key("publish_sources"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    publish_sources.sort();
    publish_sources.dedup();
    if s.max_ttl.is_zero() || s.max_ttl > MAX_TTL_CAP {
        return Err((
            key("max_ttl"),
            format!(
                "must be between 1s and {}",
                crate::duration_str::format(&MAX_TTL_CAP)
            ),
        ));
    }
    if s.default_ttl.is_zero() || s.default_ttl > s.max_ttl {
        return Err((
            key("default_ttl"),
            format!(
                "must be between 1s and max_ttl ({})",
                crate::duration_str::format(&s.max_ttl)
            ),
        ));
    }
    Ok(Section {
        name: name.to_string(),
        scope,
        api_key: api_key.to_string(),
        secret_entry: secret_entry.to_string(),
        url,
        rooms,
        identities,
        grants,
        publish_sources,
        default_ttl: s.default_ttl,
        max_ttl: s.max_ttl,
    })
}

/// A server URL clients can connect to: `wss`, `ws`, `https` or `http`,
/// a host, no credentials, query or fragment. Returned without a trailing
/// slash.
fn check_url(raw: &str) -> Result<String, String> {
    let u = url::Url::parse(raw.trim()).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    if !matches!(u.scheme(), "wss" | "ws" | "https" | "http") {
        return Err("the URL must start with wss://, ws://, https:// or http://".into());
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("the URL needs a host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("the URL must not carry credentials".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("the URL must not have a query or fragment".into());
    }
    Ok(u.as_str().trim_end_matches('/').to_string())
}

/// Whether `s` is a room name or identity Latchkey accepts: 1 to
/// [`MAX_NAME_LEN`] characters from `A–Z a–z 0–9 . _ - : @ +`. LiveKit
/// itself allows more; a narrow alphabet keeps names plain in the audit
/// log and makes patterns mean what they look like.
pub fn valid_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len()) && s.bytes().all(name_byte)
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@' | b'+')
}

/// A room or identity pattern: literal characters, `*` (any run of
/// characters, possibly none) and `{user}` (the caller's username).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Checks a pattern's alphabet; the error is a reason.
    pub fn new(p: &str) -> Result<Pattern, String> {
        let plain = p.replace(USER_PLACEHOLDER, "");
        let ok = !p.is_empty()
            && p.len() <= MAX_NAME_LEN
            && plain.bytes().all(|b| b == b'*' || name_byte(b));
        if ok {
            Ok(Pattern(p.to_string()))
        } else {
            Err(format!(
                "`{}` is not a pattern: 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ - : @ +, `*` and `{USER_PLACEHOLDER}`",
                p.escape_debug()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches for a caller called `user`. The username is
    /// literal text in the pattern, whatever it contains.
    pub fn matches(&self, name: &str, user: &str) -> bool {
        let mut tokens = Vec::with_capacity(self.0.len() + user.len());
        let mut rest = self.0.as_str();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix(USER_PLACEHOLDER) {
                tokens.extend(user.bytes().map(Token::Byte));
                rest = after;
            } else {
                let b = rest.as_bytes()[0];
                tokens.push(if b == b'*' {
                    Token::Star
                } else {
                    Token::Byte(b)
                });
                // The alphabet is ASCII: one byte is one character.
                rest = &rest[1..];
            }
        }
        glob(&tokens, name.as_bytes())
    }
}

/// One element of an expanded pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    Star,
}

/// `*`-only glob matching, linear in practice: on a mismatch only the
/// last `*` is retried one character further.
fn glob(pattern: &[Token], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == Token::Star {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == Token::Byte(text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&tok| tok == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml: &str) -> LiveKitSettings {
        toml::from_str(toml).expect("section")
    }

    const MINIMAL: &str = "api_key = \"APIabc\"\nsecret = \"lk-secret\"\nurl = \"wss://lk.example.com/\"\nrooms = [\"agent-*\"]\n";

    #[test]
    fn defaults_are_the_safe_ones() {
        let s = resolve("home", &section(MINIMAL)).expect("home");
        assert_eq!(s.scope.to_string(), "livekit:home");
        assert_eq!(s.url, "wss://lk.example.com");
        assert_eq!(s.default_ttl, Duration::from_secs(600));
        assert_eq!(s.max_ttl, Duration::from_secs(3600));
        let names: Vec<&str> = s.grants.iter().map(|g| g.name()).collect();
        assert_eq!(
            names,
            ["roomJoin", "canPublish", "canSubscribe", "canPublishData"]
        );
        assert!(s.publish_sources.is_empty());
        let ids: Vec<&str> = s.identities.iter().map(Pattern::as_str).collect();
        assert_eq!(ids, ["{user}", "{user}-*"]);
    }

    #[test]
    fn errors_name_the_key() {
        let err = |name: &str, t: &str| resolve(name, &section(t)).expect_err("error").0;
        assert_eq!(err("Home", MINIMAL), "livekit.Home");
        assert_eq!(err("home", ""), "livekit.home.api_key");
        let without = |field: &str| {
            MINIMAL
                .lines()
                .filter(|l| !l.starts_with(field))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(err("home", &without("secret")), "livekit.home.secret");
        assert_eq!(err("home", &without("url")), "livekit.home.url");
        assert_eq!(err("home", &without("rooms")), "livekit.home.rooms");
        let with = |line: &str| {
            format!(
                "{}\n{line}\n",
                without(line.split(' ').next().unwrap_or(""))
            )
        };
        for (line, key) in [
            ("api_key = \"has space\"", "api_key"),
            ("secret = \"../x\"", "secret"),
            ("url = \"ftp://lk.example.com\"", "url"),
            ("url = \"wss://u:p@lk.example.com\"", "url"),
            ("url = \"wss://lk.example.com/?a=1\"", "url"),
            ("url = \"not a url\"", "url"),
            ("rooms = [\"a b\"]", "rooms"),
            ("rooms = [\"\"]", "rooms"),
            ("identities = []", "identities"),
            ("identities = [\"{other}\"]", "identities"),
            ("grants = [\"canFly\"]", "grants"),
            ("grants = [\"can_publish\"]", "grants"),
            ("publish_sources = [\"radio\"]", "publish_sources"),
            ("max_ttl = \"2d\"", "max_ttl"),
            ("max_ttl = 0", "max_ttl"),
            ("default_ttl = \"2h\"", "default_ttl"),
            ("default_ttl = 0", "default_ttl"),
        ] {
            assert_eq!(
                err("home", &with(line)),
                format!("livekit.home.{key}"),
                "{line}"
            );
        }
    }

    #[test]
    fn patterns_match_whole_names() {
        let p = |s: &str| Pattern::new(s).expect("pattern");
        assert!(p("standup").matches("standup", "alice"));
        assert!(!p("standup").matches("standup2", "alice"));
        assert!(!p("standup").matches("xstandup", "alice"));
        assert!(p("agent-*").matches("agent-", "alice"));
        assert!(p("agent-*").matches("agent-kitchen", "alice"));
        assert!(!p("agent-*").matches("agent", "alice"));
        assert!(!p("agent-*").matches("my-agent-x", "alice"));
        assert!(p("*-room-*").matches("a-room-b", "alice"));
        assert!(p("a*b*c").matches("aXbYbZc", "alice"));
        assert!(!p("a*b*c").matches("aXbYbZ", "alice"));
        assert!(p("*").matches("anything", "alice"));
        assert!(p("{user}").matches("alice", "alice"));
        assert!(!p("{user}").matches("bob", "alice"));
        assert!(p("{user}-*").matches("alice-phone", "alice"));
        assert!(!p("{user}-*").matches("bob-phone", "alice"));
        assert!(!p("{user}-*").matches("alice", "alice"));
        // A username is literal text in the pattern, never a wildcard.
        assert!(!p("{user}").matches("alice", "a*"));
        // Many stars and a long name stay quick.
        let long = "a".repeat(MAX_NAME_LEN);
        assert!(!p("*a*a*a*a*a*a*a*a*a*b").matches(&long, "u"));
    }

    #[test]
    fn names_have_a_narrow_alphabet() {
        for ok in ["r", "agent-1", "alice@example.com", "a.b_c:d+e"] {
            assert!(valid_name(ok), "{ok}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["", "a b", "a/b", "a*", "é", "a\nb", "{user}", long.as_str()] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
