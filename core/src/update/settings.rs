//! `[update]`: where the feed is, which keys sign releases, how often to
//! look. Checked when the configuration loads; errors name the key.

use crate::duration_str;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The project's release keys: each a 32-byte ed25519 public key file
/// that `zipsign gen-key` wrote (docs/UPDATES.md says where the private
/// halves live: never in this repository). During a key rotation both
/// the old and the new key are listed.
pub const RELEASE_KEYS: &[VerifyingKey] = &[*include_bytes!("release-key.pub")];

/// Shortest accepted `update.check_interval`.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Longest accepted `update.check_interval`.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(90 * 86400);
/// Longest accepted feed URL.
const MAX_URL_LEN: usize = 2048;
/// Most keys `update.public_keys` may list.
const MAX_KEYS: usize = 16;

/// An ed25519 public key (raw 32 bytes), as zipsign reads it.
pub type VerifyingKey = [u8; 32];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateSettings {
    /// The feed's URL (`…/latest.json`): `https://`, or `http://` to a
    /// loopback host only. Unset: the server does not look for updates.
    pub feed: Option<String>,
    /// Keys trusted beside the compiled-in release key: each the base64 of
    /// a `zipsign gen-key` public key file's bytes. A list, or one string
    /// of keys separated by commas or spaces (as an environment variable
    /// gives it).
    #[serde(deserialize_with = "one_or_many")]
    pub public_keys: Vec<String>,
    /// How often the server reads the feed.
    #[serde(with = "duration_str")]
    pub check_interval: Duration,
    /// Whether the scheduled updater (`latchkey update --scheduled`, run
    /// by `latchkey-update.timer`) installs what it finds, or only reports.
    pub auto_install: bool,
}

impl Default for UpdateSettings {
    fn default() -> Self {
        UpdateSettings {
            feed: None,
            public_keys: Vec::new(),
            check_interval: Duration::from_secs(86400),
            auto_install: false,
        }
    }
}

impl UpdateSettings {
    /// Checks every key; the error is `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(feed) = &self.feed {
            check_feed_url(feed).map_err(|m| ("update.feed", m))?;
        }
        let i = self.check_interval;
        if !(MIN_CHECK_INTERVAL..=MAX_CHECK_INTERVAL).contains(&i) {
            return Err((
                "update.check_interval",
                format!(
                    "`{}` is out of range: it must be between {} and {}",
                    duration_str::format(&i),
                    duration_str::format(&MIN_CHECK_INTERVAL),
                    duration_str::format(&MAX_CHECK_INTERVAL)
                ),
            ));
        }
        self.extra_keys().map(drop)
    }

    /// The keys in `public_keys`, decoded.
    fn extra_keys(&self) -> Result<Vec<VerifyingKey>, (&'static str, String)> {
        if self.public_keys.len() > MAX_KEYS {
            return Err((
                "update.public_keys",
                format!("at most {MAX_KEYS} keys may be listed"),
            ));
        }
        self.public_keys
            .iter()
            .enumerate()
            .map(|(n, k)| {
                decode_key(k).map_err(|m| ("update.public_keys", format!("key {}: {m}", n + 1)))
            })
            .collect()
    }

    /// Every key an artifact may be signed with: the compiled-in release
    /// keys first, then `public_keys`. Never empty.
    pub fn verifying_keys(&self) -> Result<Vec<VerifyingKey>, (&'static str, String)> {
        let mut keys = RELEASE_KEYS.to_vec();
        for k in self.extra_keys()? {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        Ok(keys)
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// One `public_keys` entry: base64 of exactly 32 bytes. The message never
/// repeats the value (it is public, but a pasted private key must not
/// reach a log).
pub fn decode_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = STANDARD.decode(text.trim()).map_err(|_| {
        "not base64 (give `base64 -w0` of the public key file `zipsign gen-key` wrote)".to_string()
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "{} bytes, but a zipsign public key file holds 32 (is this the private key?)",
            bytes.len()
        )
    })
}

/// A feed URL is `https://…`, or `http://` to a loopback host
/// (`localhost`, 127.0.0.0/8, ::1): a plain-HTTP feed elsewhere could be
/// rewritten by anyone on the path (the signature still guards what is
/// installed, but not what the owner is told).
pub fn check_feed_url(url: &str) -> Result<url::Url, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} characters"));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    match parsed.scheme() {
        "https" => {}
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if !loopback {
                return Err(
                    "plain http:// is allowed only to a loopback host (localhost, 127.0.0.1, \
                     [::1]); use https://"
                        .into(),
                );
            }
        }
        other => return Err(format!("`{other}:` is not supported; use https://")),
    }
    if parsed.host().is_none() {
        return Err("has no host".into());
    }
    Ok(parsed)
}
