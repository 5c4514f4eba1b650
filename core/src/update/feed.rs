//! The feed: one small JSON document a static web server can host
//! (`packaging/release.sh` writes it), naming the newest release and one
//! artifact per platform:
//!
//! ```json
//! { "version": "1.4.0",
//!   "artifacts": { "x86_64-unknown-linux-gnu": {
//!       "url": "latchkey-1.4.0-x86_64-unknown-linux-gnu.tar.gz",
//!       "size": 3456789, "sha256": "…64 hex…" } } }
//! ```
//!
//! Untrusted input: anyone on the path (or the host) may write it. It is
//! bounded (size, counts, lengths) and checked strictly; it decides only
//! what is downloaded and what the owner is told. What is installed is
//! decided by the artifact's signature, whose context is the artifact's
//! file name ([`artifact_name`]): version and platform are bound to it,
//! so an old or foreign signed artifact cannot pass as this one.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Largest feed accepted, in bytes.
pub const MAX_FEED_BYTES: usize = 64 * 1024;
/// Largest artifact a feed may announce (the download is capped at the
/// size the feed states).
pub const MAX_ARTIFACT_BYTES: u64 = 256 * 1024 * 1024;
/// Most platforms one feed may list.
const MAX_ARTIFACTS: usize = 32;
/// Longest version string.
const MAX_VERSION_LEN: usize = 64;
/// Longest relative URL.
const MAX_URL_LEN: usize = 256;
/// Longest release notes kept.
const MAX_NOTES_CHARS: usize = 2000;

/// Why a feed was refused. Messages quote no more than a bounded,
/// cleaned fragment of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("the feed is larger than {MAX_FEED_BYTES} bytes")]
    TooLarge,
    #[error("the feed is not the expected JSON: {0}")]
    Json(String),
    #[error("the feed's `{field}` is invalid: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

/// One release artifact: a signed `.tar.gz` holding the binary `latchkey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Relative to the feed's own URL (a plain path: no scheme, host,
    /// query, `..` or leading `/`).
    pub url: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// A parsed, checked feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    pub version: semver::Version,
    /// Short release notes, cleaned of control characters.
    pub notes: Option<String>,
    /// By target triple (e.g. `x86_64-unknown-linux-gnu`).
    pub artifacts: BTreeMap<String, Artifact>,
}

#[derive(Deserialize)]
struct RawFeed {
    version: String,
    #[serde(default)]
    notes: Option<String>,
    artifacts: BTreeMap<String, RawArtifact>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    url: String,
    size: u64,
    sha256: String,
}

/// The file name an artifact for `version` and `target` must have: the
/// signature's context, so it binds both.
pub fn artifact_name(version: &semver::Version, target: &str) -> String {
    format!("latchkey-{version}-{target}.tar.gz")
}

fn field(field: &'static str, message: impl Into<String>) -> FeedError {
    FeedError::Field {
        field,
        message: message.into(),
    }
}

/// Parses and checks a feed.
pub fn parse(bytes: &[u8]) -> Result<Feed, FeedError> {
    if bytes.len() > MAX_FEED_BYTES {
        return Err(FeedError::TooLarge);
    }
    let raw: RawFeed = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's messages may quote input; keep it short and clean.
        FeedError::Json(crate::audit::clean(&e.to_string(), 160))
    })?;
    if raw.version.len() > MAX_VERSION_LEN {
        return Err(field("version", "too long"));
    }
    let version = semver::Version::parse(raw.version.trim_start_matches('v'))
        .map_err(|e| field("version", format!("not a semantic version: {e}")))?;
    if !version.build.is_empty() {
        // `+build` is ignored by semver ordering: two builds of one
        // version would be indistinguishable. Refuse it.
        return Err(field("version", "build metadata (`+…`) is not allowed"));
    }
    if raw.artifacts.len() > MAX_ARTIFACTS {
        return Err(field(
            "artifacts",
            format!("more than {MAX_ARTIFACTS} platforms"),
        ));
    }
    let mut artifacts = BTreeMap::new();
    for (target, a) in raw.artifacts {
        if !valid_target(&target) {
            return Err(field("artifacts", "a platform name is not a target triple"));
        }
        let name = artifact_name(&version, &target);
        if a.url.len() > MAX_URL_LEN || !valid_relative(&a.url) {
            return Err(field(
                "artifacts.url",
                "must be a relative path (letters, digits, `.`, `_`, `-`, `/`; no `..`)",
            ));
        }
        if a.url.rsplit('/').next() != Some(name.as_str()) {
            return Err(field(
                "artifacts.url",
                format!("the file for {target} must be named {name}"),
            ));
        }
        if a.size == 0 || a.size > MAX_ARTIFACT_BYTES {
            return Err(field(
                "artifacts.size",
                format!("must be 1 to {MAX_ARTIFACT_BYTES} bytes"),
            ));
        }
        if a.sha256.len() != 64
            || !a
                .sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(field("artifacts.sha256", "must be 64 lowercase hex digits"));
        }
        artifacts.insert(
            target,
            Artifact {
                url: a.url,
                size: a.size,
                sha256: a.sha256,
            },
        );
    }
    let notes = raw
        .notes
        .map(|n| crate::audit::clean(&n, MAX_NOTES_CHARS))
        .filter(|n| !n.is_empty());
    Ok(Feed {
        version,
        notes,
        artifacts,
    })
}

fn valid_target(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
        })
        && t.contains('-')
}

fn valid_relative(u: &str) -> bool {
    !u.is_empty()
        && !u.starts_with('/')
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && u.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// The artifact's absolute URL: `artifact.url` resolved against the feed's.
pub fn resolve(feed_url: &url::Url, artifact: &Artifact) -> Result<url::Url, FeedError> {
    let u = feed_url
        .join(&artifact.url)
        .map_err(|e| field("artifacts.url", e.to_string()))?;
    // A plain relative path cannot change the origin; checked anyway.
    if u.origin() != feed_url.origin() {
        return Err(field("artifacts.url", "leaves the feed's origin"));
    }
    Ok(u)
}

/// Whether `candidate` is newer than `current` (semver precedence). An
/// unparsable current version is newer than nothing: an update is never
/// decided on a version we cannot compare.
pub fn is_newer(candidate: &semver::Version, current: &str) -> bool {
    semver::Version::parse(current).is_ok_and(|cur| candidate > &cur)
}
