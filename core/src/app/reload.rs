//! One task that keeps every in-memory cache in step with what other
//! replicas commit to a shared store.
//!
//! It listens to [`Store::subscribe`] and hands each change to every
//! registered cache ([`Cache`]), which reloads or drops what the named
//! tables touch (auth's key and people caches and revocation signal, the
//! vault's decrypted secrets, connection tokens and client settings,
//! per-key limits: `super::caches`).
//! A burst of notifications is folded into one change, so a busy cluster
//! costs one reload per burst, not per commit; a lagging or reconnected
//! feed is [`Changed::Unknown`], on which every cache reloads. On a store
//! no other process shares the feed never fires and the task only waits
//! for its stop signal.
//!
//! How fast a change reaches the other replicas is the feed's latency
//! (PostgreSQL `NOTIFY` at commit) plus one reload; `docs/SCALE.md` states
//! the bound and `docs/PERFORMANCE.md` the measured time.

use crate::store::{Changed, Store};
use std::sync::Arc;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a cache's reload failed with (logged; the cache keeps serving
/// what it had, and the next change tries again).
pub type ReloadError = Box<dyn std::error::Error + Send + Sync>;

/// What a cache does on a change (blocking: it may read the store).
pub type OnChange = Box<dyn Fn(&Changed) -> Result<(), ReloadError> + Send + Sync>;

/// A cache built from the store: its name (for the log) and its
/// [`OnChange`].
pub struct Cache {
    pub name: &'static str,
    pub on_change: OnChange,
}

impl Cache {
    pub fn new(
        name: &'static str,
        on_change: impl Fn(&Changed) -> Result<(), ReloadError> + Send + Sync + 'static,
    ) -> Cache {
        Cache {
            name,
            on_change: Box::new(on_change),
        }
    }
}

/// Hands every change other processes commit to `caches` until `stop`
/// turns true. Right after subscribing, every cache reloads once
/// ([`Changed::Unknown`]): changes committed between building the caches
/// and subscribing are not missed.
pub fn spawn_cache_reloader(
    store: Arc<Store>,
    caches: Vec<Cache>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut feed = store.subscribe();
    let caches = Arc::new(caches);
    tokio::spawn(async move {
        if !store.is_shared() {
            let _ = stop.wait_for(|s| *s).await;
            return;
        }
        let mut next = Some(Changed::Unknown);
        loop {
            let mut change = match next.take() {
                Some(c) => c,
                None => tokio::select! {
                    got = feed.recv() => match got {
                        Ok(c) => c,
                        Err(RecvError::Lagged(_)) => Changed::Unknown,
                        Err(RecvError::Closed) => break,
                    },
                    _ = stop.wait_for(|s| *s) => break,
                },
            };
            // Fold in whatever else is already queued.
            loop {
                match feed.try_recv() {
                    Ok(c) => change.merge(c),
                    Err(TryRecvError::Lagged(_)) => change = Changed::Unknown,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            let caches = Arc::clone(&caches);
            let done = tokio::task::spawn_blocking(move || {
                for cache in caches.iter() {
                    if let Err(e) = (cache.on_change)(&change) {
                        tracing::warn!(cache = cache.name, error = %e, "could not reload a cache after another replica's change");
                    }
                }
            })
            .await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "cache reload task failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn on_an_unshared_store_it_reloads_nothing_and_stops_when_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("store");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let (stop, rx) = watch::channel(false);
        let task = spawn_cache_reloader(
            store,
            vec![Cache::new("probe", move |c| {
                s.lock().expect("lock").push(c.clone());
                Ok(())
            })],
            rx,
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stop.send(true).expect("stop");
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("stops in time")
            .expect("task");
        assert!(seen.lock().expect("lock").is_empty());
    }

    #[test]
    fn changes_fold_into_one() {
        let mut c = Changed::Tables(vec!["a".into()]);
        c.merge(Changed::Tables(vec!["b".into(), "a".into()]));
        assert_eq!(c, Changed::Tables(vec!["a".into(), "b".into()]));
        c.merge(Changed::Unknown);
        assert_eq!(c, Changed::Unknown);
        c.merge(Changed::Tables(vec!["c".into()]));
        assert_eq!(c, Changed::Unknown);
    }
}
