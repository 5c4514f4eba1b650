//! What processes sharing one store coordinate through it: the feed of
//! changes other processes committed, and locks held across all of them.
//!
//! With the embedded redb file there is one process, so the feed never
//! fires and a shared lock is an in-process lock per name. The PostgreSQL
//! backend (several replicas) implements both through the database (see
//! `docs/SCALE.md`): `NOTIFY` at commit, and advisory locks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedMutexGuard, broadcast};

/// Tables changed by another process sharing the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// These tables (by name) were written by a committed transaction.
    Tables(Vec<String>),
    /// Notifications may have been missed (the feed reconnected): every
    /// cache built from the store must reload.
    Unknown,
}

impl Changed {
    /// Whether a cache built from `table` must reload.
    pub fn touches(&self, table: &str) -> bool {
        match self {
            Changed::Tables(t) => t.iter().any(|n| n == table),
            Changed::Unknown => true,
        }
    }

    /// [`Changed::touches`] for a table by its definition.
    pub fn touches_table(&self, table: latchkey_migrations::ByteTable) -> bool {
        use redb::TableHandle;
        self.touches(table.name())
    }

    /// Folds `other` into `self`, so one reload covers both (a burst of
    /// notifications is handled once).
    pub fn merge(&mut self, other: Changed) {
        match (&mut *self, other) {
            (Changed::Unknown, _) => {}
            (_, Changed::Unknown) => *self = Changed::Unknown,
            (Changed::Tables(mine), Changed::Tables(theirs)) => {
                for t in theirs {
                    if !mine.contains(&t) {
                        mine.push(t);
                    }
                }
            }
        }
    }
}

/// How many changes a slow subscriber may lag behind before it sees
/// `Lagged` (which it must treat as [`Changed::Unknown`]).
pub const FEED_CAPACITY: usize = 256;

/// The in-process side of both mechanisms, per store.
#[derive(Debug)]
pub(super) struct Local {
    feed: broadcast::Sender<Changed>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Local {
    pub(super) fn new() -> Local {
        Local {
            feed: broadcast::channel(FEED_CAPACITY).0,
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Changed> {
        self.feed.subscribe()
    }

    /// The feed's sending side, for the PostgreSQL listener.
    pub(super) fn sender(&self) -> broadcast::Sender<Changed> {
        self.feed.clone()
    }

    pub(super) async fn lock(&self, name: &str) -> SharedLock {
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Forget locks nobody holds or waits for, so names cannot grow
            // the map without bound.
            locks.retain(|_, m| Arc::strong_count(m) > 1);
            locks.entry(name.to_string()).or_default().clone()
        };
        SharedLock {
            _across: None,
            _local: mutex.lock_owned().await,
        }
    }
}

/// Held while the work it guards runs; released on drop.
#[derive(Debug)]
pub struct SharedLock {
    // Dropped first: the other processes' turn comes after ours ends here.
    _across: Option<super::postgres::HeldLock>,
    _local: OwnedMutexGuard<()>,
}

impl SharedLock {
    pub(super) fn hold_across_processes(&mut self, lock: super::postgres::HeldLock) {
        self._across = Some(lock);
    }
}
