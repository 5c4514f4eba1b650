//! `systemctl reload` (SIGHUP): re-read the configuration and apply what can
//! change safely while serving.
//!
//! Applied at once: `log.level` (unless `LATCHKEY_LOG` overrides it), and the
//! certificate in service is checked again (user-provided certificate files
//! that changed on disk are loaded, a generated certificate that needs it
//! is reissued) — the same as the periodic TLS check, now.
//!
//! Everything else is wired into listeners, the HTTP state and the
//! background tasks when serving starts; a change there takes a restart,
//! and one log line names every such key (names only: values may be
//! secrets). A file that does not load or does not validate changes
//! nothing: the running configuration stays and the log says why.
//! Differences are counted against the configuration the server started
//! with, so a key still waiting for a restart is named again on the next
//! reload.

use crate::cli::GlobalArgs;
use crate::context::Context;
use crate::logging::Logging;
use crate::tls::{RefreshOutcome, TlsManager};
use latchkey_core::config::Settings;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;

/// Keys a reload applies.
const APPLIED: &[&str] = &["log.level"];

/// What SIGHUP needs: how to find the configuration, what is running.
pub struct Reloader<'a> {
    pub global: GlobalArgs,
    /// `serve --listen`, which overrides `server.listen` in every load.
    pub listen_flag: Vec<SocketAddr>,
    /// The configuration in effect (with applied changes folded in).
    pub running: Value,
    pub logging: &'a Logging,
    pub tls: Option<Arc<TlsManager>>,
}

impl Reloader<'_> {
    /// Serializes `settings` as the baseline of later reloads.
    pub fn baseline(settings: &Settings) -> Value {
        serde_json::to_value(settings).unwrap_or(Value::Null)
    }

    /// Re-reads the configuration and applies what is safe (module docs).
    pub async fn reload(&mut self) {
        tracing::info!("reloading the configuration (SIGHUP)");
        let global = self.global.clone();
        let loaded = tokio::task::spawn_blocking(move || Context::load(&global)).await;
        let mut settings = match loaded {
            Ok(Ok(ctx)) => ctx.settings,
            Ok(Err(e)) => {
                tracing::error!(
                    error = %format!("{e:#}"),
                    "configuration reload failed; keeping the running configuration"
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed");
                return;
            }
        };
        if !self.listen_flag.is_empty() {
            settings.server.listen = self.listen_flag.clone();
        }
        let new = Self::baseline(&settings);
        let changed = changed_keys(&self.running, &new);
        let mut applied = Vec::new();
        if changed.iter().any(|k| k == "log.level") {
            match self.logging.set_level(&settings.log.level) {
                Ok(true) => {
                    applied.push("log.level");
                    if let (Some(run), Some(lvl)) = (
                        self.running.get_mut("log").and_then(|l| l.get_mut("level")),
                        new.get("log").and_then(|l| l.get("level")),
                    ) {
                        *run = lvl.clone();
                    }
                }
                Ok(false) => tracing::warn!(
                    "log.level changed but LATCHKEY_LOG is set and overrides it; left as is"
                ),
                Err(e) => tracing::error!(error = %e, "log.level not applied; keeping the old one"),
            }
        }
        if let Some(tls) = &self.tls {
            let tls = Arc::clone(tls);
            match tokio::task::spawn_blocking(move || tls.refresh()).await {
                Ok(Ok(RefreshOutcome::Unchanged)) => {}
                Ok(Ok(outcome)) => tracing::info!(?outcome, "TLS certificate reloaded"),
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    "TLS certificate check failed; keeping the current certificate"
                ),
                Err(e) => tracing::error!(error = %e, "TLS certificate check failed"),
            }
        }
        let restart: Vec<&str> = changed
            .iter()
            .map(String::as_str)
            .filter(|k| !APPLIED.contains(k))
            .collect();
        tracing::info!(applied = %applied.join(", "), "configuration reloaded");
        if !restart.is_empty() {
            tracing::warn!(
                keys = %restart.join(", "),
                "changed settings that take effect only after a restart (systemctl restart latchkey): {}",
                restart.join(", ")
            );
        }
    }
}

/// The dotted keys (two levels deep: `server.listen`, `providers.openai`)
/// whose values differ between two serialized configurations.
pub fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let empty = serde_json::Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut sections: Vec<&String> = o.keys().chain(n.keys()).collect();
    sections.sort();
    sections.dedup();
    for section in sections {
        match (o.get(section), n.get(section)) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                for key in keys {
                    if a.get(key) != b.get(key) {
                        out.push(format!("{section}.{key}"));
                    }
                }
            }
            (a, b) if a != b => out.push(section.clone()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_changed_keys_two_levels_deep() {
        let old = json!({
            "log": {"level": "info", "format": "json"},
            "server": {"listen": ["127.0.0.1:1"]},
            "providers": {"a": {"upstream": "x"}},
        });
        let new = json!({
            "log": {"level": "debug", "format": "json"},
            "server": {"listen": ["127.0.0.1:2"]},
            "providers": {"a": {"upstream": "x"}, "b": {"upstream": "y"}},
            "extra": 1,
        });
        assert_eq!(
            changed_keys(&old, &new),
            ["extra", "log.level", "providers.b", "server.listen"]
        );
        assert!(changed_keys(&new, &new).is_empty());
    }
}
