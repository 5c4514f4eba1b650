//! The one typed configuration.
//!
//! Layers, later wins: built-in defaults → TOML file (`DATA_DIR/latchkey.toml`
//! or `--config`) → `LATCHKEY_<SECTION>__<KEY>` environment variables → flags
//! (applied by the shell). Unknown keys, wrong types and bad values are errors
//! that name the key, e.g. `server.listen: invalid socket address syntax`.
//! Every key is documented in `docs/CONFIGURATION.md`.

use crate::vault::MasterKeySource;
use crate::vault::keychain::KeyringBackend;

pub use crate::auth::settings::AuthSettings;
pub use crate::duration_str;
pub use crate::proxy::settings::{ProviderSettings, ProxySettings};
pub use crate::store::{Backend as StoreBackend, DatabaseUrl, StoreSettings};
pub use crate::update::UpdateSettings;
use serde::{Deserialize, Deserializer, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config file's name inside the data directory.
pub const CONFIG_FILE: &str = "latchkey.toml";
/// Default HTTPS port: unprivileged, unlikely to clash, easy to remember.
pub const DEFAULT_PORT: u16 = 8443;
/// Longest accepted `server.idle_timeout`.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(86400);
/// Largest accepted `server.max_connections`.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// Shortest accepted `tls.server_cert_lifetime`.
pub const MIN_SERVER_CERT_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest accepted `tls.server_cert_lifetime` (Apple's limit for
/// certificates from private CAs).
pub const MAX_SERVER_CERT_LIFETIME: Duration = Duration::from_secs(825 * 86400);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{origin}: `{key}`: {message}")]
    Key {
        origin: String,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MasterKeyKind {
    #[default]
    Keyfile,
    SystemdCredential,
    Passphrase,
    Keyring,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultSettings {
    /// Where the master key comes from.
    pub master_key: MasterKeyKind,
    /// Key file for `keyfile` (default `DATA_DIR/master.key`).
    pub key_file: Option<PathBuf>,
    /// Credential name for `systemd-credential`.
    pub credential_name: String,
    pub keyring_service: String,
    pub keyring_account: String,
    pub keyring_backend: KeyringBackend,
}

impl Default for VaultSettings {
    fn default() -> Self {
        VaultSettings {
            master_key: MasterKeyKind::Keyfile,
            key_file: None,
            credential_name: "latchkey-master".into(),
            keyring_service: "latchkey".into(),
            keyring_account: "master-key".into(),
            keyring_backend: KeyringBackend::Auto,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Listen addresses: HTTPS, or plain HTTP when `tls` is false.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// Whether `listen` speaks HTTPS (the appliance's certificates). False:
    /// plain HTTP, allowed only on loopback or behind a listed trusted
    /// proxy (see [`Settings::check_listeners`]).
    pub tls: bool,
    /// Optional plain-HTTP listeners that only redirect to HTTPS.
    #[serde(deserialize_with = "one_or_many")]
    pub http_redirect_listen: Vec<SocketAddr>,
    /// How long in-flight requests may run on shutdown.
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// Per-request time limit.
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/1.1 and HTTP/2 alike; streaming responses and upgraded
    /// connections are in flight).
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Most connections open at once, over all listeners.
    pub max_connections: usize,
    /// Most connections open at once from one client address (IPv6: one
    /// /64 prefix).
    pub max_connections_per_ip: usize,
    /// The origin browsers reach this server at (`https://host[:port]`),
    /// used for OAuth redirect URIs; default: the request's own origin.
    pub public_url: Option<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))],
            tls: true,
            http_redirect_listen: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_ip: 256,
            public_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Your own certificate chain (PEM); overrides the generated one.
    pub cert_file: Option<PathBuf>,
    /// The key for `cert_file` (PEM).
    pub key_file: Option<PathBuf>,
    /// Extra DNS names and IP addresses for the generated certificate.
    pub extra_names: Vec<String>,
    #[serde(with = "duration_str")]
    pub server_cert_lifetime: Duration,
    #[serde(with = "duration_str")]
    pub renew_before: Duration,
    #[serde(with = "duration_str")]
    pub check_interval: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert_file: None,
            key_file: None,
            extra_names: Vec::new(),
            server_cert_lifetime: Duration::from_secs(90 * 86400),
            renew_before: Duration::from_secs(30 * 86400),
            check_interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human on a terminal, JSON otherwise.
    #[default]
    Auto,
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `latchkey=debug,info`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MetricsAccess {
    Off,
    /// Only clients connecting from a loopback address.
    #[default]
    Loopback,
    /// Anyone presenting `metrics.token` as a bearer token.
    Token,
}

#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    pub access: MetricsAccess,
    #[serde(serialize_with = "redact")]
    pub token: Option<String>,
}

impl std::fmt::Debug for MetricsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSettings")
            .field("access", &self.access)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

/// The longest any `[auth]` lifetime may be (ten years).
pub const MAX_AUTH_DURATION: Duration = Duration::from_secs(3650 * 86400);

/// Everything configurable.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[store]`: redb (default) or a shared PostgreSQL database.
    pub store: StoreSettings,
    pub vault: VaultSettings,
    pub auth: AuthSettings,
    pub server: ServerSettings,
    pub tls: TlsSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub proxy: ProxySettings,
    /// `[providers.<name>]`: presets and custom upstreams for `/proxy/<name>/…`.
    pub providers: std::collections::BTreeMap<String, ProviderSettings>,
    /// `[agents.<name>]`: local agent backends for `/agent/<name>/…`.
    pub agents: std::collections::BTreeMap<String, crate::agent::AgentSettings>,
    /// `[connections.<name>]`: OAuth providers users connect accounts with
    /// (see `crate::connections::config`).
    pub connections: std::collections::BTreeMap<String, crate::connections::ConnectionSettings>,
    /// `[update]`: the update channel (docs/UPDATES.md).
    pub update: UpdateSettings,
    /// `[livekit.<name>]`: LiveKit projects whose room tokens Latchkey
    /// mints (docs/LIVEKIT.md).
    pub livekit: std::collections::BTreeMap<String, crate::livekit::LiveKitSettings>,
}

impl Settings {
    /// Loads `file` (if it exists, or must exist when `explicit`), then
    /// applies `LATCHKEY_<SECTION>__<KEY>` variables from `env`.
    pub fn load(
        file: &Path,
        explicit: bool,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let (mut table, origin) = match std::fs::read_to_string(file) {
            Ok(text) => {
                let table: toml::Table =
                    text.parse()
                        .map_err(|e: toml::de::Error| ConfigError::Syntax {
                            path: file.display().to_string(),
                            message: e.to_string().trim().replace('\n', " "),
                        })?;
                (table, file.display().to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                (toml::Table::new(), "defaults".to_string())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: file.to_path_buf(),
                    source,
                });
            }
        };
        let mut pg_password = None;
        let mut env_vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, v)| {
                if k == "PGPASSWORD" && !v.is_empty() {
                    pg_password = Some(v.clone());
                }
                k.starts_with("LATCHKEY_") && k.contains("__")
            })
            .collect();
        env_vars.sort();
        for (var, value) in &env_vars {
            apply_env(&mut table, var, value)?;
        }
        let origin = if env_vars.is_empty() {
            origin
        } else {
            format!("{origin} + environment")
        };
        let mut settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Key {
                origin: origin.clone(),
                key: e.path().to_string(),
                // `message()`, not `to_string()`: toml's Display appends a
                // second line ("in `server.listen`") that repeats the key.
                message: e.inner().message().trim().to_string(),
            })?;
        settings.store.env_password =
            pg_password.map(|p| crate::store::Password(secrecy::SecretString::from(p)));
        settings
            .validate()
            .map_err(|(key, message)| ConfigError::Key {
                origin: origin.clone(),
                key: key.into(),
                message,
            })?;
        crate::agent::config::resolve_all(&settings.agents).map_err(|(key, message)| {
            ConfigError::Key {
                origin: origin.clone(),
                key,
                message,
            }
        })?;
        crate::connections::config::resolve_all(&settings.connections).map_err(
            |(key, message)| ConfigError::Key {
                origin: origin.clone(),
                key,
                message,
            },
        )?;
        crate::livekit::config::resolve_all(&settings.livekit).map_err(|(key, message)| {
            ConfigError::Key {
                origin: origin.clone(),
                key,
                message,
            }
        })?;
        if let Some(u) = &settings.server.public_url {
            crate::connections::config::check_public_url(u).map_err(|message| {
                ConfigError::Key {
                    origin: origin.clone(),
                    key: "server.public_url".into(),
                    message,
                }
            })?;
        }
        let providers = crate::proxy::providers::resolve_all(&settings.providers).map_err(
            |(key, message)| ConfigError::Key {
                origin: origin.clone(),
                key,
                message,
            },
        )?;
        for p in &providers {
            if let Some(c) = &p.connection
                && !settings.connections.contains_key(c)
            {
                return Err(ConfigError::Key {
                    origin,
                    key: format!("providers.{}.connection", p.name),
                    message: format!(
                        "there is no [connections.{c}] section: the proxy injects the access token \
                         of a user's `{c}` connection (docs/CONNECTIONS.md), or set `secret` to \
                         use a vault entry instead"
                    ),
                });
            }
        }
        Ok(settings)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.check_listeners()?;
        self.store.validate()?;
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err((
                "tls.key_file",
                "tls.cert_file and tls.key_file go together: set both or neither".into(),
            ));
        }
        let lifetime = self.tls.server_cert_lifetime;
        if lifetime < MIN_SERVER_CERT_LIFETIME || lifetime > MAX_SERVER_CERT_LIFETIME {
            return Err((
                "tls.server_cert_lifetime",
                format!(
                    "`{}` is out of range: it must be between 1h and 825d",
                    duration_str::format(&lifetime)
                ),
            ));
        }
        if self.tls.renew_before >= self.tls.server_cert_lifetime {
            return Err((
                "tls.renew_before",
                "must be shorter than tls.server_cert_lifetime".into(),
            ));
        }
        if self.tls.check_interval.is_zero() {
            return Err(("tls.check_interval", "must be greater than zero".into()));
        }
        for name in &self.tls.extra_names {
            if name.parse::<IpAddr>().is_err() && !valid_dns_name(name) {
                return Err((
                    "tls.extra_names",
                    format!("`{name}` is neither an IP address nor a DNS name"),
                ));
            }
        }
        let a = &self.auth;
        if a.access_token_lifetime.is_zero()
            || a.access_token_lifetime > Duration::from_secs(15 * 60)
        {
            return Err((
                "auth.access_token_lifetime",
                "must be between 1s and 15m".into(),
            ));
        }
        if a.refresh_absolute_lifetime.is_zero() {
            return Err((
                "auth.refresh_absolute_lifetime",
                "must be greater than zero".into(),
            ));
        }
        if a.session_idle > a.session_lifetime {
            return Err((
                "auth.session_idle",
                "must not exceed auth.session_lifetime".into(),
            ));
        }
        if a.lockout_threshold == 0 {
            return Err(("auth.lockout_threshold", "must be at least 1".into()));
        }
        // Every lifetime is added to "now" somewhere: bounded here, no sum
        // can overflow or wrap into the past.
        for (name, d, max) in [
            (
                "auth.session_lifetime",
                a.session_lifetime,
                MAX_AUTH_DURATION,
            ),
            ("auth.session_idle", a.session_idle, MAX_AUTH_DURATION),
            (
                "auth.refresh_token_lifetime",
                a.refresh_token_lifetime,
                MAX_AUTH_DURATION,
            ),
            (
                "auth.lockout_duration",
                a.lockout_duration,
                MAX_AUTH_DURATION,
            ),
            ("auth.reauth_window", a.reauth_window, MAX_AUTH_DURATION),
            (
                "auth.setup_token_lifetime",
                a.setup_token_lifetime,
                MAX_AUTH_DURATION,
            ),
            ("auth.audit_retention", a.audit_retention, MAX_AUTH_DURATION),
            (
                "auth.invite_lifetime",
                a.invite_lifetime,
                crate::auth::service::MAX_INVITE_LIFETIME,
            ),
        ] {
            if d.is_zero() || d > max {
                return Err((
                    name,
                    format!(
                        "`{}` is out of range: it must be between 1s and {}",
                        duration_str::format(&d),
                        duration_str::format(&max)
                    ),
                ));
            }
        }
        if a.rate_limit_burst == 0 || a.rate_limit_per_minute == 0 {
            return Err((
                "auth.rate_limit_per_minute",
                "rate limits must be at least 1".into(),
            ));
        }
        for p in &a.trusted_proxies {
            if !valid_cidr(p) {
                return Err((
                    "auth.trusted_proxies",
                    format!("`{p}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
                ));
            }
        }
        if self.proxy.max_body_bytes == 0 {
            return Err(("proxy.max_body_bytes", "must be greater than zero".into()));
        }
        if !(1..=3600).contains(&self.proxy.usage_flush_secs) {
            return Err(("proxy.usage_flush_secs", "must be 1 to 3600 seconds".into()));
        }
        if self.proxy.sse_keepalive_secs > 3600 {
            return Err((
                "proxy.sse_keepalive_secs",
                "must be 0 (off) to 3600 seconds".into(),
            ));
        }
        let rt_session = self.proxy.realtime_max_session;
        if rt_session < Duration::from_secs(1) || rt_session > Duration::from_secs(7 * 86400) {
            return Err(("proxy.realtime_max_session", "must be 1 s to 7 days".into()));
        }
        let rt_idle = self.proxy.realtime_idle_timeout;
        if rt_idle < Duration::from_secs(1) || rt_idle > Duration::from_secs(86400) {
            return Err(("proxy.realtime_idle_timeout", "must be 1 s to 24 h".into()));
        }
        if !(126..=(1 << 30)).contains(&self.proxy.realtime_max_message_bytes) {
            return Err((
                "proxy.realtime_max_message_bytes",
                "must be 126 bytes to 1 GiB".into(),
            ));
        }
        if self.server.max_body_bytes == 0 {
            return Err(("server.max_body_bytes", "must be greater than zero".into()));
        }
        let idle = self.server.idle_timeout;
        if idle < Duration::from_secs(1) || idle > MAX_IDLE_TIMEOUT {
            return Err((
                "server.idle_timeout",
                format!(
                    "`{}` is out of range: it must be between 1s and {}",
                    duration_str::format(&idle),
                    duration_str::format(&MAX_IDLE_TIMEOUT)
                ),
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.server.max_connections) {
            return Err((
                "server.max_connections",
                format!("must be 1 to {MAX_CONNECTIONS}"),
            ));
        }
        if self.server.max_connections_per_ip == 0
            || self.server.max_connections_per_ip > self.server.max_connections
        {
            return Err((
                "server.max_connections_per_ip",
                "must be at least 1 and at most server.max_connections".into(),
            ));
        }
        if self.metrics.access == MetricsAccess::Token
            && self.metrics.token.as_deref().is_none_or(|t| t.len() < 16)
        {
            return Err((
                "metrics.token",
                "metrics.access = \"token\" needs a token of at least 16 characters".into(),
            ));
        }
        if let Err(e) = tracing_filter_ok(&self.log.level) {
            return Err(("log.level", e));
        }
        self.update.validate()
    }

    /// The rules for what the listeners may speak, checked when the
    /// configuration loads and again by the shell once its flags (e.g.
    /// `serve --listen`) are applied: at least one address; with
    /// `server.tls = false`, every address loopback unless
    /// `auth.trusted_proxies` names the reverse proxy in front (plain HTTP
    /// elsewhere would carry passwords and session cookies in the clear),
    /// and no `http_redirect_listen` (there is no HTTPS port to redirect
    /// to). Errors name the key to change.
    pub fn check_listeners(&self) -> Result<(), (&'static str, String)> {
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(("server.listen", "at least one address is needed".into()));
        }
        if s.tls {
            return Ok(());
        }
        if !s.http_redirect_listen.is_empty() {
            return Err((
                "server.http_redirect_listen",
                "must be empty with server.tls = false: there is no HTTPS listener to redirect \
                 to (the listen addresses already speak plain HTTP)"
                    .into(),
            ));
        }
        let exposed: Vec<String> = s
            .listen
            .iter()
            .filter(|a| !a.ip().to_canonical().is_loopback())
            .map(ToString::to_string)
            .collect();
        if !exposed.is_empty() && self.auth.trusted_proxies.is_empty() {
            return Err((
                "server.tls",
                format!(
                    "server.tls = false serves plain HTTP, but server.listen includes {} (not \
                     loopback) and auth.trusted_proxies is empty: list the TLS-terminating \
                     reverse proxy in auth.trusted_proxies, listen on loopback only, or set \
                     server.tls = true",
                    exposed.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The master-key source this configuration selects for `data_dir`.
    pub fn master_key_source(&self, data_dir: &Path) -> MasterKeySource {
        let v = &self.vault;
        match v.master_key {
            MasterKeyKind::Keyfile => MasterKeySource::KeyFile {
                path: v
                    .key_file
                    .clone()
                    .unwrap_or_else(|| data_dir.join("master.key")),
            },
            MasterKeyKind::SystemdCredential => MasterKeySource::SystemdCredential {
                name: v.credential_name.clone(),
            },
            MasterKeyKind::Passphrase => MasterKeySource::Passphrase,
            MasterKeyKind::Keyring => MasterKeySource::Keyring {
                service: v.keyring_service.clone(),
                account: v.keyring_account.clone(),
                backend: v.keyring_backend,
            },
        }
    }
}

fn tracing_filter_ok(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(())
}

fn valid_cidr(s: &str) -> bool {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.is_none_or(|l| l.parse::<u8>().is_ok_and(|l| l <= max))
}

fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn apply_env(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let path: Vec<String> = var["LATCHKEY_".len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(env_err(
            "malformed name; use LATCHKEY_<SECTION>__<KEY>".into(),
        ));
    }
    // A TOML literal if it parses as one (numbers, booleans, arrays),
    // otherwise the raw string.
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| env_err("empty key".into()))?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| env_err(format!("`{p}` is not a section")))?;
    }
    cur.insert(last.clone(), parsed);
    Ok(())
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        OneOrMany::Many(v) => v,
    };
    items
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>().map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{s}` is not an address:port (e.g. 127.0.0.1:8443 or [::1]:8443)"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
