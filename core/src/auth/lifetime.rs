//! A long-lived connection — through an agent route, or a provider's
//! realtime session through the proxy — lives no longer than the
//! credential that opened it.
//!
//! WebSockets and streamed answers (server-sent events, long downloads)
//! were authenticated once, when they started. Whenever
//! [`crate::auth::revocation`] says a credential may have ended (sign-out,
//! a revoked session or key, a disabled account, a changed role or
//! password, an MFA reset), and every [`RECHECK_EVERY`] for expiry, a
//! watcher task authenticates the connection's credential again
//! ([`Guard::still_valid`]: the same authentication, scope and role checks
//! as at the start); once it fails, [`Revoked`] completes and the
//! connection is ended. The watcher stops when the connection is gone.

use futures_util::future::BoxFuture;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// How often a connection's credential is checked even without a
/// revocation (sessions, tokens and keys expire).
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// What keeps a connection honest: the revocation epoch to watch, and the
/// re-check of the credential that opened it.
pub struct Guard {
    /// Subscribed before the credential was first checked, so a
    /// revocation in between is not missed.
    pub revoked: watch::Receiver<u64>,
    /// `true` while the credential still opens this agent.
    pub still_valid: Box<dyn FnMut() -> BoxFuture<'static, bool> + Send>,
}

/// Completes once the connection's credential no longer passes; never,
/// otherwise. Dropping it stops the watcher.
#[derive(Debug)]
pub struct Revoked {
    rx: Option<oneshot::Receiver<()>>,
}

impl Future for Revoked {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Pending;
        };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(Ok(())) => {
                self.rx = None;
                Poll::Ready(())
            }
            // The watcher is gone (the runtime is stopping): never.
            Poll::Ready(Err(_)) => {
                self.rx = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Starts the watcher of `guard` (on the current runtime).
pub fn until_revoked(mut guard: Guard) -> Revoked {
    let (mut tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut watching = true;
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
        loop {
            let check = tokio::select! {
                () = tx.closed() => return,
                changed = guard.revoked.changed(), if watching => {
                    // The sender lives as long as `Auth`; gone means the
                    // server is stopping, and the timer still runs.
                    watching = changed.is_ok();
                    watching
                }
                _ = tick.tick() => true,
            };
            if check && !(guard.still_valid)().await {
                let _ = tx.send(());
                return;
            }
        }
    });
    Revoked { rx: Some(rx) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::revocation::Revocations;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[tokio::test]
    async fn revoked_completes_only_when_the_recheck_fails() {
        let epoch = Revocations::new();
        let valid = Arc::new(AtomicBool::new(true));
        let checks = Arc::new(AtomicUsize::new(0));
        let (v, c) = (Arc::clone(&valid), Arc::clone(&checks));
        let mut revoked = until_revoked(Guard {
            revoked: epoch.subscribe(),
            still_valid: Box::new(move || {
                let (v, c) = (Arc::clone(&v), Arc::clone(&c));
                Box::pin(async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    v.load(Ordering::SeqCst)
                })
            }),
        });
        let short = Duration::from_millis(300);
        // A bump while the credential still passes: re-checked, kept.
        epoch.bump();
        assert!(tokio::time::timeout(short, &mut revoked).await.is_err());
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        // Revoked: the next bump ends it.
        valid.store(false, Ordering::SeqCst);
        epoch.bump();
        tokio::time::timeout(Duration::from_secs(2), &mut revoked)
            .await
            .expect("revoked");
        // Polled again: stays pending, never panics.
        assert!(tokio::time::timeout(short, &mut revoked).await.is_err());
    }
}
