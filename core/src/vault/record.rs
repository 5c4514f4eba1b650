//! What a vault record is: its metadata, its kind, and the rules its fields
//! must follow. The secret itself never lives here in plaintext; it is the
//! `envelope` of a [`StoredRecord`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Longest secret accepted (an OAuth token set as JSON fits many times over).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
const MAX_NAME: usize = 128;
const MAX_PROVIDER: usize = 64;
const MAX_LABELS: usize = 32;
const MAX_LABEL_VALUE: usize = 256;

/// What kind of secret a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ApiKey,
    OauthToken,
    Generic,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::ApiKey, Kind::OauthToken, Kind::Generic];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ApiKey => "api_key",
            Kind::OauthToken => "oauth_token",
            Kind::Generic => "generic",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Kind::ApiKey => 0,
            Kind::OauthToken => 1,
            Kind::Generic => 2,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown kind `{s}`; expected one of api_key, oauth_token, generic")
            })
    }
}

/// A record's id: 128 random bits, shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub u128);

impl RecordId {
    pub fn random() -> Self {
        RecordId(rand::random())
    }
    pub fn to_key(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
    pub fn from_key(bytes: &[u8]) -> Option<Self> {
        Some(RecordId(u128::from_be_bytes(bytes.try_into().ok()?)))
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl Serialize for RecordId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for RecordId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a record id is 32 hex digits".into());
        }
        u128::from_str_radix(s, 16)
            .map(RecordId)
            .map_err(|_| "a record id is 32 hex digits".into())
    }
}

/// Clients of the HTTP API (the CLI talking to a server) read ids back.
impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A record as stored in the `vault_records` table (schema v1).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    pub name: String,
    pub kind: Kind,
    pub provider: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
    /// age ciphertext of the [`super::envelope`] plaintext.
    pub envelope: Vec<u8>,
}

impl fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredRecord")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field(
                "envelope",
                &format_args!("<{} encrypted bytes>", self.envelope.len()),
            )
            .finish_non_exhaustive()
    }
}

/// Everything about a record except its secret: safe to list, log and show.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordMeta {
    pub id: RecordId,
    pub name: String,
    pub kind: Kind,
    pub provider: Option<String>,
    pub labels: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<time::OffsetDateTime>,
}

fn ts(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

impl RecordMeta {
    pub(crate) fn from_stored(id: RecordId, r: &StoredRecord) -> Self {
        RecordMeta {
            id,
            name: r.name.clone(),
            kind: r.kind,
            provider: r.provider.clone(),
            labels: r.labels.clone(),
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
            last_used_at: r.last_used_at.map(ts),
        }
    }
}

/// The metadata a caller supplies when storing a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub name: String,
    pub kind: Kind,
    pub provider: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// A field that broke its rule, and which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

fn check_token(
    field: &'static str,
    value: &str,
    max: usize,
    allow_upper: bool,
) -> Result<(), InvalidField> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    let ok_first = |c: char| {
        c.is_ascii_digit() || c.is_ascii_lowercase() || (allow_upper && c.is_ascii_uppercase())
    };
    let ok_rest = |c: char| ok_first(c) || matches!(c, '.' | '_' | '-');
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(ok_first);
    if !first_ok || !chars.all(ok_rest) {
        let letters = if allow_upper {
            "letters"
        } else {
            "lower-case letters"
        };
        // The value is not quoted: error texts reach HTTP clients and logs,
        // and a secret pasted into the wrong field must not come back.
        return Err(invalid(
            field,
            format!(
                "must start with a letter or digit and contain only {letters}, digits, `.`, `_` and `-`"
            ),
        ));
    }
    Ok(())
}

/// Checks a record name (unique key of the vault).
pub fn validate_name(name: &str) -> Result<(), InvalidField> {
    check_token("name", name, MAX_NAME, true)
}

impl NewRecord {
    pub fn validate(&self) -> Result<(), InvalidField> {
        validate_name(&self.name)?;
        if let Some(p) = &self.provider {
            check_token("provider", p, MAX_PROVIDER, false)?;
        }
        if self.labels.len() > MAX_LABELS {
            return Err(invalid("labels", format!("at most {MAX_LABELS} labels")));
        }
        for (k, v) in &self.labels {
            check_token("label key", k, MAX_PROVIDER, false)?;
            if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
                return Err(invalid(
                    "label value",
                    format!(
                        "value of `{k}` must be at most {MAX_LABEL_VALUE} characters without control characters"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a secret's size and encoding before it is encrypted.
pub fn validate_secret(secret: &str) -> Result<(), InvalidField> {
    if secret.is_empty() {
        return Err(invalid("secret", "must not be empty"));
    }
    if secret.len() > MAX_SECRET_BYTES {
        return Err(invalid(
            "secret",
            format!("must be at most {MAX_SECRET_BYTES} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["openai", "OpenAI-prod", "a", "spotify.me_2"] {
            validate_name(good).expect(good);
        }
        for bad in [
            "",
            "-x",
            ".hidden",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(129),
            "a\n",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn provider_is_lower_case() {
        let mut r = NewRecord {
            name: "k".into(),
            kind: Kind::ApiKey,
            provider: Some("OpenAI".into()),
            labels: BTreeMap::new(),
        };
        assert_eq!(r.validate().expect_err("upper").field, "provider");
        r.provider = Some("openai".into());
        r.validate().expect("lower");
        r.labels.insert("env".into(), "a\u{7}".into());
        assert_eq!(r.validate().expect_err("control").field, "label value");
    }

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
        }
        assert!("apikey".parse::<Kind>().is_err());
    }

    #[test]
    fn secrets_sized() {
        assert!(validate_secret("").is_err());
        assert!(validate_secret(&"x".repeat(MAX_SECRET_BYTES + 1)).is_err());
        validate_secret("sk-123").expect("ok");
    }
}
