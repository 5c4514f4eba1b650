//! The app's periodic work: last-used times written every 30 s, audit
//! entries past `auth.audit_retention` pruned daily, expired sessions,
//! tokens and invites pruned every 10 minutes (the caches other replicas'
//! commits reload are `super::reload`'s). Each runs its store work on the blocking
//! pool and ends when its stop signal turns true (the final last-used
//! flush is [`super::Running`]'s, after the last request).

use crate::auth::Auth;
use crate::store::Store;
use crate::vault::Vault;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often pending last-used times are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(30);
/// How often audit entries past `auth.audit_retention` are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(86400);
/// How often expired sessions, tokens, invites and in-memory auth state
/// are pruned (`Auth::prune_expired`).
pub const AUTH_PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Writes the vault's and the API keys' pending last-used times every
/// [`FLUSH_INTERVAL`].
pub fn spawn_last_used_flusher(
    vault: Arc<Vault>,
    auth: Arc<Auth>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let v = Arc::clone(&vault);
            match tokio::task::spawn_blocking(move || v.flush_last_used()).await {
                Ok(Ok(n)) if n > 0 => tracing::debug!(records = n, "wrote last-used times"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not write last-used times"),
                Err(e) => tracing::warn!(error = %e, "last-used flush task failed"),
            }
            let a = Arc::clone(&auth);
            match tokio::task::spawn_blocking(move || a.flush_key_usage()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not write key last-used times"),
                Err(e) => tracing::warn!(error = %e, "key last-used flush task failed"),
            }
        }
    })
}

/// Prunes audit entries past the retention period, at start and every
/// [`PRUNE_INTERVAL`].
pub fn spawn_audit_pruner(
    store: Arc<Store>,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let keep = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(PRUNE_INTERVAL);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let s = Arc::clone(&store);
            let now = crate::auth::service::now();
            match tokio::task::spawn_blocking(move || crate::audit::prune(&s, keep, now)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(entries = n, "pruned old audit entries"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not prune the audit log"),
                Err(e) => tracing::warn!(error = %e, "audit prune task failed"),
            }
        }
    })
}

/// Prunes what can no longer be used (`Auth::prune_expired` decides
/// what), at start and every [`AUTH_PRUNE_INTERVAL`].
pub fn spawn_auth_pruner(auth: Arc<Auth>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(AUTH_PRUNE_INTERVAL);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let a = Arc::clone(&auth);
            let now = crate::auth::service::now();
            match tokio::task::spawn_blocking(move || a.prune_expired(now)).await {
                Ok(Ok(p)) if p.total() > 0 => tracing::info!(
                    sessions = p.sessions,
                    access_tokens = p.access_tokens,
                    refresh_tokens = p.refresh_tokens,
                    families = p.families,
                    invites = p.invites,
                    "pruned expired sessions and tokens"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not prune expired sessions"),
                Err(e) => tracing::warn!(error = %e, "auth prune task failed"),
            }
        }
    })
}
