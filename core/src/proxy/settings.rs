//! `[proxy]` and `[providers.<name>]` as written in the configuration.
//! Read by `crate::config`; checked into routes by [`super::providers`].

use crate::duration_str;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[proxy]`: limits of the agent proxy that apply to every provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// Largest request body forwarded to an upstream, in bytes.
    pub max_body_bytes: usize,
    /// Requests per minute allowed to each API key (0: no limit); a key's
    /// own `requests_per_minute` limit replaces it.
    pub key_rpm: u32,
    /// Seconds between writes of the proxy's usage totals to `usage_daily`.
    pub usage_flush_secs: u64,
    /// While an upstream event stream is silent this many seconds, send the
    /// client `: keep-alive` (0: never); `[providers.<name>]` may override.
    pub sse_keepalive_secs: u64,
    /// Realtime (WebSocket) sessions one API key may have open at once
    /// (0: no limit); over it the upgrade gets `429 too_many_sessions`.
    pub realtime_sessions_per_key: u32,
    /// Longest realtime session; then both sides get close 4000.
    #[serde(with = "duration_str")]
    pub realtime_max_session: Duration,
    /// A realtime session in which nothing moved either way this long is
    /// closed (4001).
    #[serde(with = "duration_str")]
    pub realtime_idle_timeout: Duration,
    /// Largest WebSocket message either way, in bytes; a larger one is
    /// not forwarded and the session is closed (1009).
    pub realtime_max_message_bytes: u64,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            max_body_bytes: 16 * 1024 * 1024,
            key_rpm: 0,
            usage_flush_secs: 5,
            sse_keepalive_secs: 15,
            realtime_sessions_per_key: 8,
            realtime_max_session: Duration::from_secs(3600),
            realtime_idle_timeout: Duration::from_secs(300),
            realtime_max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

/// `[providers.<name>]`: everything optional; a preset's name fills in
/// what is not given (see [`super::providers`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    /// The origin (and optional base path) requests are forwarded to.
    pub upstream: Option<String>,
    /// The vault entry holding the provider's credential.
    pub secret: Option<String>,
    /// Instead of `secret`: the `[connections.<name>]` whose access token
    /// (the calling key's owner's connection) is the credential.
    pub connection: Option<String>,
    /// Header that carries the credential (e.g. `authorization`).
    pub auth_header: Option<String>,
    /// The header's value with `{secret}` standing for the credential.
    pub auth_format: Option<String>,
    /// Query parameter that carries the credential instead of a header.
    pub auth_query: Option<String>,
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    #[serde(with = "duration_str")]
    pub first_byte_timeout: Duration,
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// PEM file of extra CA certificates trusted for this upstream (beside
    /// the system's roots), for self-hosted servers.
    pub ca_file: Option<std::path::PathBuf>,
    /// Overrides `proxy.sse_keepalive_secs` for this provider.
    pub sse_keepalive_secs: Option<u64>,
    /// Whether `/proxy/<name>/…` accepts WebSocket upgrades (realtime
    /// sessions). Default: on for the realtime presets (`openai`,
    /// `deepgram`, `elevenlabs`, `cartesia`), off otherwise.
    pub websocket: Option<bool>,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            upstream: None,
            secret: None,
            connection: None,
            auth_header: None,
            auth_format: None,
            auth_query: None,
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(300),
            ca_file: None,
            sse_keepalive_secs: None,
            websocket: None,
        }
    }
}
