//! The broker: handing out access tokens, refreshing them single-flight,
//! marking connections that can no longer refresh, and disconnecting.
//!
//! A valid cached token is served from memory. Otherwise the caller takes
//! the connection's async mutex and checks the cache again (another caller
//! may just have refreshed); only the holder that still finds nothing
//! fresh reads the row, decrypts it and, if due, refreshes at the
//! provider. The new tokens (a rotated refresh token included) are
//! committed before the new access token is cached or returned; a response
//! without a refresh token keeps the old one.

use super::store::{self, Status};
use super::{
    Cached, ConnectionError, Connections, IssuedToken, ProviderRuntime, Revocation, Slot,
    TokenSecrets, blocking, flow, now, refresh_after, refresher, row_digest,
};
use crate::audit::{AuditEvent, Outcome};
use crate::auth::store::UserId;
use crate::secrecy::{ExposeSecret, SecretString};
use crate::vault::VaultError;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Connections {
    /// The broker: a valid access token of `user`'s connection to
    /// `provider`, refreshed first when it is within the margin of expiry.
    /// `actor` and `ip` go to the audit entry of the issuance.
    pub async fn token(
        &self,
        user: UserId,
        provider: &str,
        actor: &str,
        ip: Option<std::net::IpAddr>,
    ) -> Result<IssuedToken, ConnectionError> {
        let rt = self.provider(provider)?;
        if self.vault.is_sealed() {
            self.clear_cache();
            return Err(VaultError::Sealed.into());
        }
        let t = now();
        let slot = self.slot(user, provider);
        let cached = match slot.fresh(t) {
            Some(c) => c,
            None => {
                // Single flight: whoever holds the lock refreshes; the rest
                // find the new token in the cache when they get it. The
                // shared lock makes it one flight across every replica:
                // `load_or_refresh` reads the row again under it, so a
                // token another replica just refreshed is used, not
                // refreshed a second time.
                let _flight = slot.refresh.lock().await;
                let _shared = self.lock_shared(user, provider).await?;
                match slot.fresh(now()) {
                    Some(c) => c,
                    None => {
                        self.load_or_refresh(rt, user, &slot, Due::Margin(0))
                            .await?
                    }
                }
            }
        };
        slot.served.store(true, Ordering::Relaxed);
        self.note_use(user, provider, t);
        let event = AuditEvent::new(actor, "connection.token", Outcome::Success)
            .target(provider)
            .ip(ip);
        if self.queue_audit(event) {
            // The batch writer is far behind: write now (backpressure).
            let events = match self.audit_queue.lock() {
                Ok(mut q) => std::mem::take(&mut *q),
                Err(_) => Vec::new(),
            };
            let st = Arc::clone(self.vault.store());
            blocking(move || store::append_audit(&st, events)).await?;
        }
        Ok(cached.issued())
    }

    /// Under the slot's lock: the stored token if still fresh (after a
    /// restart), else a refresh at the provider. `due` says how early a
    /// refresh is wanted.
    pub(super) async fn load_or_refresh(
        &self,
        rt: &ProviderRuntime,
        user: UserId,
        slot: &Slot,
        due: Due,
    ) -> Result<Arc<Cached>, ConnectionError> {
        let current = rt.provider();
        let p = current.as_ref();
        let name = p.name.clone();
        let st = Arc::clone(self.vault.store());
        let row = blocking(move || store::get(&st, user, &name)).await?;
        let Some(row) = row else {
            slot.set(None);
            return Err(ConnectionError::NoConnection(p.name.clone()));
        };
        if row.status == Status::NeedsReconnect {
            slot.set(None);
            return Err(ConnectionError::NeedsReconnect(p.name.clone()));
        }
        let ctx = store::seal_context(user, &p.name);
        let secrets = TokenSecrets::open(&self.vault, &ctx, &row.sealed)?;
        let margin = i64::try_from(p.refresh_margin.as_secs()).unwrap_or(i64::MAX);
        let issued_at = row.last_refresh_at.unwrap_or(row.connected_at);
        let current = Arc::new(Cached {
            access_token: SecretString::from(secrets.access_token.as_str()),
            token_type: row.token_type.clone(),
            expires_at: row.expires_at,
            refresh_after: refresh_after(row.expires_at, issued_at, margin),
            scopes: row.scopes.clone(),
            row: row_digest(&row.sealed),
        });
        let t = now();
        let wanted = match due {
            Due::Margin(lead) => current.refresh_after.is_some_and(|r| t >= r - lead),
            // Checked on the row read under the lock: another replica's
            // scan may have done the daily refresh while this one waited.
            Due::Idle(age) => t - issued_at >= age,
        };
        if !wanted {
            slot.set(Some(Arc::clone(&current)));
            return Ok(current);
        }
        // In backoff after a failed refresh: do not hammer the provider
        // (every caller queued on the lock would otherwise try again).
        if matches!(due, Due::Margin(_)) && row.next_attempt_at.is_some_and(|n| t < n) {
            if current.expires_at.is_none_or(|e| t < e) {
                return Ok(current);
            }
            return Err(ConnectionError::ProviderUnreachable {
                provider: p.name.clone(),
                source: format!(
                    "the last refresh failed ({}); retrying after the backoff",
                    row.last_error.as_deref().unwrap_or("error")
                )
                .into(),
            });
        }
        let Some(refresh_token) = secrets.refresh_token.as_deref() else {
            if current.expires_at.is_some_and(|e| t >= e) {
                self.mark_needs_reconnect(user, &p.name, "no_refresh_token")
                    .await?;
                slot.set(None);
                return Err(ConnectionError::NeedsReconnect(p.name.clone()));
            }
            slot.set(Some(Arc::clone(&current)));
            return Ok(current);
        };
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        match flow::refresh(self, rt, refresh_token).await {
            Ok(fresh) => {
                let new_refresh = fresh
                    .refresh_token
                    .clone()
                    .or_else(|| secrets.refresh_token.clone());
                let new_secrets = TokenSecrets {
                    access_token: fresh.access_token.expose_secret().to_string(),
                    refresh_token: new_refresh,
                };
                let sealed = new_secrets.seal(&self.vault, &ctx)?;
                let stored = row_digest(&sealed);
                let t = now();
                let expires_at = fresh.expires_in.map(|s| t.saturating_add(s));
                let scopes = fresh.scopes.clone().unwrap_or_else(|| row.scopes.clone());
                let rt_expiry = fresh.refresh_token_expires_in.map(|s| t.saturating_add(s));
                let token_type = fresh.token_type.clone();
                let (st, name) = (Arc::clone(self.vault.store()), p.name.clone());
                let scopes_c = scopes.clone();
                let event = AuditEvent::new("latchkey", "connection.refresh", Outcome::Success)
                    .target(format!("{}/{:032x}", p.name, user.0));
                // Committed before anyone sees the new access token: a
                // rotated refresh token is never lost to a crash after use.
                blocking(move || {
                    store::update(
                        &st,
                        user,
                        &name,
                        |c| {
                            c.status = Status::Connected;
                            c.sealed = sealed;
                            c.expires_at = expires_at;
                            c.scopes = scopes_c;
                            c.token_type = token_type;
                            c.last_refresh_at = Some(t);
                            c.failures = 0;
                            c.next_attempt_at = None;
                            c.last_error = None;
                            if rt_expiry.is_some() {
                                c.refresh_token_expires_at = rt_expiry;
                            }
                        },
                        Some(event),
                    )
                })
                .await?
                .ok_or_else(|| ConnectionError::NoConnection(p.name.clone()))?;
                let cached = Arc::new(Cached {
                    access_token: fresh.access_token.clone(),
                    token_type: fresh.token_type.clone(),
                    expires_at,
                    refresh_after: refresh_after(expires_at, t, margin),
                    scopes,
                    row: stored,
                });
                slot.served.store(false, Ordering::Relaxed);
                slot.set(Some(Arc::clone(&cached)));
                Ok(cached)
            }
            Err(ConnectionError::ExchangeFailed { code, .. }) if code == "invalid_grant" => {
                self.mark_needs_reconnect(user, &p.name, "invalid_grant")
                    .await?;
                slot.set(None);
                Err(ConnectionError::NeedsReconnect(p.name.clone()))
            }
            Err(e) => {
                // Transient (or a provider problem): back off, keep the
                // connection; the current token serves until it expires.
                let reason = e.audit_code();
                tracing::warn!(provider = %p.name, error = %e, "connection refresh failed");
                let (st, name) = (Arc::clone(self.vault.store()), p.name.clone());
                let t = now();
                let event = AuditEvent::new("latchkey", "connection.refresh", Outcome::Failure)
                    .target(format!("{}/{:032x}", p.name, user.0))
                    .detail(reason.clone());
                blocking(move || {
                    store::update(
                        &st,
                        user,
                        &name,
                        |c| {
                            c.failures = c.failures.saturating_add(1);
                            c.next_attempt_at = Some(t + refresher::backoff_secs(c.failures));
                            c.last_error = Some(reason);
                        },
                        Some(event),
                    )
                })
                .await?;
                if current.expires_at.is_none_or(|e| t < e) {
                    slot.set(Some(Arc::clone(&current)));
                    return Ok(current);
                }
                slot.set(None);
                Err(e)
            }
        }
    }

    /// Marks a connection "needs reconnect" and audits it (one
    /// transaction): it stays listed until the user reconnects or
    /// disconnects it.
    async fn mark_needs_reconnect(
        &self,
        user: UserId,
        provider: &str,
        reason: &'static str,
    ) -> Result<(), ConnectionError> {
        tracing::warn!(provider, reason, "connection needs to be reconnected");
        let (st, name) = (Arc::clone(self.vault.store()), provider.to_string());
        let event = AuditEvent::new("latchkey", "connection.needs_reconnect", Outcome::Failure)
            .target(format!("{provider}/{:032x}", user.0))
            .detail(reason);
        blocking(move || {
            store::update(
                &st,
                user,
                &name,
                |c| {
                    c.status = Status::NeedsReconnect;
                    c.last_error = Some(reason.to_string());
                    c.next_attempt_at = None;
                },
                Some(event),
            )
        })
        .await?;
        Ok(())
    }

    /// Revokes the connection at the provider (RFC 7009, best effort) and
    /// deletes it.
    pub async fn disconnect(
        &self,
        user: UserId,
        provider: &str,
        actor: &str,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Revocation, ConnectionError> {
        let rt = self.provider(provider)?;
        let slot = self.slot(user, provider);
        let _flight = slot.refresh.lock().await;
        let _shared = self.lock_shared(user, provider).await?;
        let (st, name) = (Arc::clone(self.vault.store()), provider.to_string());
        let row = blocking(move || store::get(&st, user, &name))
            .await?
            .ok_or_else(|| ConnectionError::NoConnection(provider.to_string()))?;
        let secrets = TokenSecrets::open(
            &self.vault,
            &store::seal_context(user, provider),
            &row.sealed,
        )?;
        let revocation = flow::revoke(self, rt, &secrets).await;
        let detail = match &revocation {
            Revocation::Revoked => "revoked".to_string(),
            Revocation::Unsupported => "revocation_unsupported".to_string(),
            Revocation::Failed(r) => {
                tracing::warn!(provider, reason = %r, "revocation at the provider failed");
                "revocation_failed".to_string()
            }
        };
        let event = AuditEvent::new(actor, "connection.disconnect", Outcome::Success)
            .target(provider)
            .ip(ip)
            .detail(detail);
        let (st, name) = (Arc::clone(self.vault.store()), provider.to_string());
        blocking(move || store::remove(&st, user, &name, Some(event))).await?;
        self.forget(user, provider);
        Ok(revocation)
    }

    /// The background refresher's work for one connection: refresh when
    /// `due`, unless someone else is refreshing it right now.
    pub(super) async fn refresh_in_background(
        &self,
        user: UserId,
        provider: &str,
        due: Due,
    ) -> Result<(), ConnectionError> {
        let rt = self.provider(provider)?;
        if self.vault.is_sealed() {
            return Ok(());
        }
        let slot = self.slot(user, provider);
        let Ok(_flight) = slot.refresh.try_lock() else {
            return Ok(());
        };
        // Every replica's scan may find the same row due: the first to get
        // the shared lock refreshes, the others then read a row that is no
        // longer due (`Due::Idle` included, see `load_or_refresh`).
        let _shared = self.lock_shared(user, provider).await?;
        self.load_or_refresh(rt, user, &slot, due).await.map(drop)
    }

    /// The lock one connection's refresh holds across every replica
    /// sharing the store (on one process: an in-process lock).
    pub(super) async fn lock_shared(
        &self,
        user: UserId,
        provider: &str,
    ) -> Result<crate::store::SharedLock, ConnectionError> {
        let name = format!("connection:{:032x}:{provider}", user.0);
        Ok(self.vault.store().lock_shared(&name).await?)
    }
}

/// How early a refresh is wanted.
#[derive(Debug, Clone, Copy)]
pub(super) enum Due {
    /// When `now >= refresh_after - lead` (seconds).
    Margin(i64),
    /// When the stored token was issued at least this many seconds ago
    /// (the daily refresh of idle connections; 0: now).
    Idle(i64),
}
