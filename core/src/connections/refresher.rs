//! The background task that keeps connections alive.
//!
//! Every second it writes the batched broker audit entries; every
//! [`SCAN_EVERY`] it reads the connection rows (metadata only, no
//! decryption) and refreshes:
//! - connections **in use** (used since their last refresh) shortly before
//!   they reach their refresh point, so agents rarely wait for a refresh;
//! - **idle** connections once a day, so providers do not expire them for
//!   inactivity;
//!
//! skipping rows in backoff after a transient failure
//! ([`backoff_secs`]) and rows marked "needs reconnect" (which stay listed
//! until the user acts). Last-used times are written every 30 s and
//! expired authorization states purged every 10 minutes.

use super::store::{self, Status};
use super::{Connections, Due, now};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often rows are scanned for due refreshes.
pub const SCAN_EVERY: Duration = Duration::from_secs(5);
/// Idle connections are refreshed at least this often.
pub const IDLE_REFRESH_SECS: i64 = 86_400;

/// Seconds to wait after `failures` consecutive transient failures:
/// 30 s doubling, at most an hour.
pub fn backoff_secs(failures: u32) -> i64 {
    let exp = failures.saturating_sub(1).min(7);
    (30i64 << exp).min(3600)
}

impl Connections {
    /// Runs the background work until `stop` turns true, then flushes once
    /// more.
    pub fn spawn_refresher(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tick: u64 = 0;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => break,
                }
                tick += 1;
                let this = Arc::clone(&self);
                let flush_used = tick.is_multiple_of(30);
                let purge = tick.is_multiple_of(600);
                let done = tokio::task::spawn_blocking(move || {
                    this.flush_audit_only()?;
                    if flush_used {
                        this.flush()?;
                    }
                    if purge {
                        store::purge_states(this.vault.store(), now())?;
                    }
                    Ok::<_, crate::store::StoreError>(())
                })
                .await;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "connections: background write failed")
                    }
                    Err(e) => tracing::warn!(error = %e, "connections: background task failed"),
                }
                if tick.is_multiple_of(SCAN_EVERY.as_secs()) {
                    self.scan().await;
                }
            }
            let this = Arc::clone(&self);
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || this.flush()).await {
                tracing::warn!(error = %e, "connections: final flush failed");
            }
        })
    }

    /// Writes only the queued audit entries (every second).
    fn flush_audit_only(&self) -> Result<(), crate::store::StoreError> {
        let events = match self.audit_queue.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return Ok(()),
        };
        if let Err(e) = store::append_audit(self.vault.store(), events.clone()) {
            if let Ok(mut q) = self.audit_queue.lock() {
                let mut again = events;
                again.append(&mut q);
                *q = again;
            }
            return Err(e);
        }
        Ok(())
    }

    /// One pass over the rows: refresh what is due.
    pub async fn scan(&self) {
        if self.vault.is_sealed() {
            return;
        }
        let st = Arc::clone(self.vault.store());
        let rows = match super::blocking(move || store::list(&st, None)).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "connections: could not read connections");
                return;
            }
        };
        let pending = self
            .pending_used
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let t = now();
        let lead = i64::try_from(SCAN_EVERY.as_secs() * 2).unwrap_or(10);
        for (user, provider, row) in rows {
            if row.status != Status::Connected || !self.providers.contains_key(&provider) {
                continue;
            }
            if row.next_attempt_at.is_some_and(|n| t < n) {
                continue;
            }
            let last_refresh = row.last_refresh_at.unwrap_or(row.connected_at);
            // In use: the token of the last refresh was handed out (known
            // in memory), or — after a restart — a use is recorded after
            // the last refresh (whole seconds, so strictly after: a use in
            // the same second most likely caused that refresh).
            let in_use = match self.served_since_refresh(user, &provider) {
                Some(served) => served,
                None => pending
                    .get(&(user, provider.clone()))
                    .copied()
                    .max(row.last_used_at)
                    .is_some_and(|u| u > last_refresh),
            };
            // Tokens without an expiry (e.g. GitHub OAuth apps) have
            // nothing to renew.
            let due = if row.expires_at.is_none() {
                None
            } else if t - last_refresh >= IDLE_REFRESH_SECS {
                Some(Due::Idle(IDLE_REFRESH_SECS))
            } else if in_use {
                Some(Due::Margin(lead))
            } else {
                None
            };
            let Some(due) = due else { continue };
            match self.refresh_in_background(user, &provider, due).await {
                Ok(()) => {}
                Err(super::ConnectionError::NeedsReconnect(_)) => {}
                Err(e) => {
                    tracing::warn!(%provider, error = %e, "connections: background refresh failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_secs(1), 30);
        assert_eq!(backoff_secs(2), 60);
        assert_eq!(backoff_secs(3), 120);
        assert_eq!(backoff_secs(8), 3600);
        assert_eq!(backoff_secs(u32::MAX), 3600);
    }
}
