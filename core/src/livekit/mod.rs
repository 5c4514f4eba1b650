//! LiveKit room tokens (docs/LIVEKIT.md): an agent with scope
//! `livekit:<name>` asks for a token for one room and identity; Latchkey
//! checks the request against the `[livekit.<name>]` section (room and
//! identity patterns, grants, TTL cap), signs a LiveKit access token with
//! the API secret from the vault, audits it, and hands back only the
//! token. The secret never leaves the vault but to sign: it is read from
//! the vault's in-memory cache for the one signature and dropped.
//!
//! A token is a JWT (HS256) as LiveKit's SDKs make it: `iss` the API key,
//! `sub` the identity, `nbf`/`exp`, `name`, `jti` and the `video` grant
//! claim ([`grants::video_claim`]). Knows no HTTP: `http/livekit.rs` is the
//! edge and `http/error.rs` maps [`LiveKitError`].

pub mod config;
pub mod grants;

#[cfg(test)]
mod tests;

pub use config::{LiveKitSettings, Section};

use crate::audit::{AuditEvent, Outcome};
use crate::store::StoreError;
use crate::vault::{Vault, VaultError};
use grants::{Grant, GrantsRefusal, PublishSource, Requested};
use secrecy::ExposeSecret;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Longest display `name` accepted, in characters.
pub const MAX_DISPLAY_NAME: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum LiveKitError {
    #[error("no LiveKit section `{0}` is configured")]
    Unknown(String),
    /// A malformed request (400 `invalid_field`).
    #[error("`{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("room `{0}` is not allowed by this LiveKit section")]
    RoomNotAllowed(String),
    #[error("identity `{0}` is not allowed by this LiveKit section")]
    IdentityNotAllowed(String),
    /// The message names the grant or source and what is allowed.
    #[error("{0}")]
    GrantNotAllowed(String),
    #[error("a token may live at most {max} seconds here (asked: {asked})")]
    TtlTooLong { asked: u64, max: u64 },
    #[error("LiveKit section `{name}`: its API secret (vault entry `{entry}`) is not in the vault")]
    SecretMissing { name: String, entry: String },
    #[error(transparent)]
    Vault(VaultError),
    #[error("signing the LiveKit token failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// Writing the audit entry failed: no token is handed out.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LiveKitError {
    /// The short reason written to the audit log for a refusal.
    fn reason(&self) -> &'static str {
        match self {
            LiveKitError::Unknown(_) => "unknown_livekit",
            LiveKitError::Invalid { .. } => "invalid_field",
            LiveKitError::RoomNotAllowed(_) => "room_not_allowed",
            LiveKitError::IdentityNotAllowed(_) => "identity_not_allowed",
            LiveKitError::GrantNotAllowed(_) => "grant_not_allowed",
            LiveKitError::TtlTooLong { .. } => "ttl_too_long",
            LiveKitError::SecretMissing { .. } => "livekit_secret_missing",
            LiveKitError::Vault(_) | LiveKitError::Sign(_) | LiveKitError::Store(_) => "internal",
        }
    }
}

/// What a caller asks for (the request body, checked by [`LiveKit::mint`]).
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub room: String,
    pub identity: String,
    pub name: Option<String>,
    /// `None`: the participant grants the section allows.
    pub grants: Option<serde_json::Map<String, serde_json::Value>>,
    pub ttl: Option<Duration>,
}

/// Who asks: the username patterns' `{user}` stands for, and the audit
/// log's actor.
#[derive(Debug, Clone)]
pub struct Caller {
    pub username: String,
    pub actor: String,
    pub ip: Option<IpAddr>,
}

/// A minted token. `Debug` leaves the token out.
pub struct Minted {
    pub token: String,
    pub url: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("token", &"<redacted>")
            .field("url", &self.url)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The configured sections and the vault that holds their secrets.
pub struct LiveKit {
    sections: BTreeMap<String, Section>,
    vault: Arc<Vault>,
}

impl std::fmt::Debug for LiveKit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKit")
            .field("sections", &self.sections.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl LiveKit {
    /// Checks every section (the error names the key and why).
    pub fn new(
        settings: &BTreeMap<String, LiveKitSettings>,
        vault: Arc<Vault>,
    ) -> Result<LiveKit, String> {
        let sections = config::resolve_all(settings)
            .map_err(|(key, message)| format!("{key}: {message}"))?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        Ok(LiveKit { sections, vault })
    }

    /// The section called `name`.
    pub fn section(&self, name: &str) -> Result<&Section, LiveKitError> {
        self.sections
            .get(name)
            .ok_or_else(|| LiveKitError::Unknown(name.to_string()))
    }

    /// Checks `req` against section `name`, signs the token and audits it
    /// (`livekit.token`; a refusal by the section's rules too). The caller
    /// has already been found to hold `livekit:<name>`. Blocking: reads the
    /// vault on a cold cache and writes the audit entry.
    pub fn mint(
        &self,
        name: &str,
        req: &MintRequest,
        who: &Caller,
        now: i64,
    ) -> Result<Minted, LiveKitError> {
        let section = self.section(name)?;
        let checked = match check(section, req, who) {
            Ok(c) => c,
            Err(e) => {
                self.audit(
                    AuditEvent::new(&who.actor, "livekit.token", Outcome::Failure)
                        .target(name)
                        .ip(who.ip)
                        .detail(format!("{}: {}", e.reason(), describe(req, None, None))),
                )?;
                return Err(e);
            }
        };
        let secret = match self.vault.reveal_cached(&section.secret_entry) {
            Ok(s) => s,
            Err(VaultError::NotFound(_)) => {
                return Err(LiveKitError::SecretMissing {
                    name: name.to_string(),
                    entry: section.secret_entry.clone(),
                });
            }
            Err(e) => return Err(LiveKitError::Vault(e)),
        };
        let exp = now.saturating_add(i64::try_from(checked.ttl.as_secs()).unwrap_or(i64::MAX));
        let claims = grants::Claims {
            iss: section.api_key.clone(),
            sub: req.identity.clone(),
            nbf: now,
            exp,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            name: req.name.clone(),
            video: grants::video_claim(&req.room, &checked.grants, &checked.sources),
        };
        let token = {
            // The key's copy of the secret lives only for this signature.
            let key = jsonwebtoken::EncodingKey::from_secret(secret.expose_secret().as_bytes());
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &key,
            )?
        };
        drop(secret);
        // Audited before it is handed out: a token the log does not know
        // is never returned.
        self.audit(
            AuditEvent::new(&who.actor, "livekit.token", Outcome::Success)
                .target(name)
                .ip(who.ip)
                .detail(describe(req, Some(&checked), Some(&claims.jti))),
        )?;
        Ok(Minted {
            token,
            url: section.url.clone(),
            expires_at: exp,
        })
    }

    fn audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        crate::audit::append(self.vault.store(), event).map(|_| ())
    }
}

/// A request that passed the section's rules.
#[derive(Debug)]
struct Checked {
    grants: Vec<Grant>,
    sources: Vec<PublishSource>,
    ttl: Duration,
}

/// The section's rules, in the order the documentation gives them: the
/// fields' shapes, the room, the identity, the grants, the TTL.
fn check(section: &Section, req: &MintRequest, who: &Caller) -> Result<Checked, LiveKitError> {
    let invalid = |field, reason: &str| LiveKitError::Invalid {
        field,
        reason: reason.to_string(),
    };
    let name_rule = "1 to 128 characters from A-Z a-z 0-9 . _ - : @ +";
    if !config::valid_name(&req.room) {
        return Err(invalid("room", name_rule));
    }
    if !config::valid_name(&req.identity) {
        return Err(invalid("identity", name_rule));
    }
    if let Some(n) = &req.name
        && (n.is_empty() || n.chars().count() > MAX_DISPLAY_NAME || n.chars().any(char::is_control))
    {
        return Err(invalid(
            "name",
            "1 to 128 characters, no control characters",
        ));
    }
    if !section
        .rooms
        .iter()
        .any(|p| p.matches(&req.room, &who.username))
    {
        return Err(LiveKitError::RoomNotAllowed(req.room.clone()));
    }
    if !section
        .identities
        .iter()
        .any(|p| p.matches(&req.identity, &who.username))
    {
        return Err(LiveKitError::IdentityNotAllowed(req.identity.clone()));
    }
    let asked = match &req.grants {
        None => Requested::default_for(&section.grants),
        Some(object) => Requested::parse(object).map_err(refusal)?,
    };
    let sources = asked
        .check(&section.grants, &section.publish_sources)
        .map_err(refusal)?;
    let ttl = req.ttl.unwrap_or(section.default_ttl);
    if ttl.is_zero() {
        return Err(invalid("ttl", "must be at least one second"));
    }
    if ttl > section.max_ttl {
        return Err(LiveKitError::TtlTooLong {
            asked: ttl.as_secs(),
            max: section.max_ttl.as_secs(),
        });
    }
    Ok(Checked {
        grants: asked.grants,
        sources,
        ttl,
    })
}

fn refusal(r: GrantsRefusal) -> LiveKitError {
    match r {
        GrantsRefusal::Invalid(reason) => LiveKitError::Invalid {
            field: "grants",
            reason,
        },
        GrantsRefusal::NotAllowed(m) => LiveKitError::GrantNotAllowed(m),
    }
}

/// The audit detail: room, identity, grants, TTL and `jti` — never the
/// token. Capped and cleaned by the audit log like every field.
fn describe(req: &MintRequest, checked: Option<&Checked>, jti: Option<&str>) -> String {
    let mut s = format!("room={} identity={}", req.room, req.identity);
    if let Some(c) = checked {
        let grants: Vec<&str> = c.grants.iter().map(|g| g.name()).collect();
        s.push_str(&format!(" grants={}", grants.join(",")));
        if !c.sources.is_empty() {
            let sources: Vec<&str> = c.sources.iter().map(|p| p.name()).collect();
            s.push_str(&format!(" sources={}", sources.join(",")));
        }
        s.push_str(&format!(" ttl={}s", c.ttl.as_secs()));
    }
    if let Some(j) = jti {
        s.push_str(&format!(" jti={j}"));
    }
    s
}
