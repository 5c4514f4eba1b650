//! What replicas tell each other through the database: the change feed
//! (`NOTIFY latchkey_changes` at commit, one `LISTEN` connection per
//! process) and locks held across processes (session advisory locks).
//!
//! The feed reports what *other* processes committed: each notice names
//! its origin (a random id per open store) and this process skips its own.
//! A notice is sent inside the committing transaction, so it arrives only
//! if the commit did. When the `LISTEN` connection is lost, notices sent
//! meanwhile are lost too: after reconnecting the feed says
//! [`Changed::Unknown`] so every cache reloads.

use super::PgError;
use super::pool::Connector;
use crate::store::Changed;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use tokio_postgres::AsyncMessage;
use tokio_postgres::types::Type;

/// Longest payload PostgreSQL accepts is 8000 bytes; past this the notice
/// names no tables and receivers reload everything.
const MAX_PAYLOAD: usize = 7900;

#[derive(Serialize, Deserialize)]
struct Notice {
    /// The committing store's id.
    o: String,
    /// The tables it wrote; `None`: too many to name.
    t: Option<Vec<String>>,
}

/// The NOTIFY payload for a commit by `origin` that wrote `tables`.
pub(super) fn payload(origin: &str, tables: &BTreeSet<String>) -> String {
    let full = Notice {
        o: origin.to_string(),
        t: Some(tables.iter().cloned().collect()),
    };
    let text = serde_json::to_string(&full).unwrap_or_default();
    if !text.is_empty() && text.len() <= MAX_PAYLOAD {
        return text;
    }
    serde_json::to_string(&Notice {
        o: origin.to_string(),
        t: None,
    })
    .unwrap_or_default()
}

/// What a received payload means to `me`: nothing (my own commit), some
/// tables, or "reload everything" (too many tables, or a payload this
/// build cannot read).
fn interpret(me: &str, payload: &str) -> Option<Changed> {
    match serde_json::from_str::<Notice>(payload) {
        Ok(n) if n.o == me => None,
        Ok(Notice { t: Some(t), .. }) => Some(Changed::Tables(t)),
        Ok(Notice { t: None, .. }) | Err(_) => Some(Changed::Unknown),
    }
}

/// Starts the listener on the store's runtime; returns once it listens
/// (or with the first connection's error, within `timeout`).
pub(super) fn start(
    connector: Connector,
    origin: Arc<str>,
    feed: broadcast::Sender<Changed>,
    timeout: Duration,
) -> Result<(), PgError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let runtime = connector.runtime.clone();
    runtime.spawn(listen(connector, origin, feed, ready_tx));
    let waiting = runtime.spawn(async move { tokio::time::timeout(timeout, ready_rx).await });
    match super::pool::wait(waiting) {
        Ok(Ok(Ok(result))) => result,
        Ok(Err(_elapsed)) => Err(PgError::FeedTimeout(timeout)),
        Ok(Ok(Err(_))) | Err(_) => Err(PgError::Closed),
    }
}

async fn listen(
    connector: Connector,
    origin: Arc<str>,
    feed: broadcast::Sender<Changed>,
    ready: oneshot::Sender<Result<(), PgError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(200);
    loop {
        match listen_once(&connector, &origin, &feed, &mut ready).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                if let Some(tx) = ready.take() {
                    // The first connection failed: the open fails with it.
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::warn!(
                    error = %e,
                    target = %connector.target,
                    retry_in_ms = backoff.as_millis() as u64,
                    "the store's change feed lost PostgreSQL; reconnecting"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One `LISTEN` connection, until it ends. Says [`Changed::Unknown`] once
/// listening again after an earlier connection (notices in between are
/// lost).
async fn listen_once(
    connector: &Connector,
    origin: &str,
    feed: &broadcast::Sender<Changed>,
    ready: &mut Option<oneshot::Sender<Result<(), PgError>>>,
) -> Result<(), PgError> {
    let (client, mut conn) = connector.connect_raw().await?;
    let (tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            let msg = std::future::poll_fn(|cx| conn.poll_message(cx)).await;
            let end = !matches!(msg, Some(Ok(_)));
            if let Some(m) = msg
                && tx.send(m).is_err()
            {
                break;
            }
            if end {
                break;
            }
        }
    });
    let listen_sql = format!("LISTEN {}", super::txn::CHANNEL);
    let result = async {
        client.batch_execute(&listen_sql).await?;
        match ready.take() {
            Some(tx) => {
                let _ = tx.send(Ok(()));
            }
            None => {
                tracing::info!("the store's change feed is listening again");
                let _ = feed.send(Changed::Unknown);
            }
        }
        while let Some(msg) = messages.recv().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some(change) = interpret(origin, n.payload()) {
                        let _ = feed.send(change);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(PgError::from(e)),
            }
        }
        Err(PgError::Closed)
    }
    .await;
    driver.abort();
    result
}

/// A lock on one name held across every process sharing the database:
/// a session advisory lock on a connection of its own, released when the
/// connection closes (on drop, or if this process dies).
pub(crate) struct HeldLock {
    _client: tokio_postgres::Client,
}

impl std::fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldLock")
    }
}

/// Takes the lock on `name` (waits at most `store.timeout`, the
/// connection's `lock_timeout`).
pub(super) async fn lock(connector: &Connector, name: &str) -> Result<HeldLock, PgError> {
    let client = connector.connect().await?;
    let key = format!("latchkey:{name}");
    client
        .query_typed(
            "SELECT pg_advisory_lock(hashtextextended($1, 0))",
            &[(&key, Type::TEXT)],
        )
        .await
        .map_err(PgError::from)?;
    Ok(HeldLock { _client: client })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_notices_are_skipped_and_others_name_tables() {
        let tables: BTreeSet<String> = ["users".to_string(), "meta".to_string()].into();
        let p = payload("me", &tables);
        assert_eq!(interpret("me", &p), None);
        assert_eq!(
            interpret("other", &p),
            Some(Changed::Tables(vec!["meta".into(), "users".into()]))
        );
    }

    #[test]
    fn oversized_and_unreadable_payloads_mean_reload_everything() {
        let many: BTreeSet<String> = (0..2000).map(|i| format!("table_{i:05}")).collect();
        let p = payload("me", &many);
        assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
        assert_eq!(interpret("other", &p), Some(Changed::Unknown));
        assert_eq!(interpret("me", &p), None);
        assert_eq!(interpret("me", "not json"), Some(Changed::Unknown));
    }
}
