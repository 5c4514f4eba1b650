//! Open realtime sessions counted across replicas.
//!
//! `proxy.realtime_sessions_per_key` limits a key's sessions open at once
//! anywhere. Each replica counts its own in memory (an upgrade reads no
//! store); with a shared store the proxy's sync task also calls
//! [`Sessions::sync`] every `proxy::rate::SYNC_EVERY`: it writes this
//! replica's open sessions per key, with the time, to [`SESSIONS_TABLE`]
//! when they changed or every [`HEARTBEAT`], and reads the other replicas'
//! rows. A session is admitted while this replica's count plus the others'
//! is under the limit.
//!
//! Rows: key = the API key's id, NUL, the replica's id (random per process
//! start); value = open sessions (u32 LE) and when they were written
//! (unix milliseconds, u64 LE). A row not rewritten for [`STALE`] (its
//! replica stopped or died) no longer counts, and the next write deletes
//! it.
//!
//! The bound (`docs/SCALE.md`): sessions opened on another replica since
//! its last sync are not known here yet, so a key may hold up to
//! `limit + (N − 1) × s` sessions, `s` being what one replica opens for it
//! within two sync intervals; a replica that dies keeps its sessions
//! counted for up to [`STALE`] (refusing too many, never admitting them).
//! The replicas' clocks must agree to well within [`STALE`] (NTP).

use super::Sessions;
use crate::store::{Store, StoreError, Table};
use std::collections::HashMap;
use std::time::Duration;

/// The table of every replica's open sessions per key (only written when
/// the store is shared).
pub const SESSIONS_TABLE: &str = "proxy_realtime_sessions";
/// Rows are rewritten at least this often while sessions are open.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A row older than this no longer counts.
pub const STALE: Duration = Duration::from_secs(10);

/// What this replica last wrote, and when.
#[derive(Debug, Default)]
pub(super) struct Published {
    counts: HashMap<String, u32>,
    at_ms: u64,
}

fn row_key(key_id: &str, replica: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key_id.len() + replica.len() + 1);
    k.extend_from_slice(key_id.as_bytes());
    k.push(0);
    k.extend_from_slice(replica.as_bytes());
    k
}

fn encode(count: u32, at_ms: u64) -> [u8; 12] {
    let mut out = [0; 12];
    out[..4].copy_from_slice(&count.to_le_bytes());
    out[4..].copy_from_slice(&at_ms.to_le_bytes());
    out
}

fn decode(v: &[u8]) -> Option<(u32, u64)> {
    if v.len() != 12 {
        return None;
    }
    let count = u32::from_le_bytes(v.get(..4)?.try_into().ok()?);
    let at = u64::from_le_bytes(v.get(4..)?.try_into().ok()?);
    Some((count, at))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Per key, the sessions replicas other than `replica` have open, from
/// rows fresh at `now_ms`.
fn others_of(
    table: &Table<'_>,
    replica: &str,
    now_ms: u64,
) -> Result<HashMap<String, u32>, StoreError> {
    let mut out: HashMap<String, u32> = HashMap::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let mut parts = k.value().splitn(2, |b| *b == 0);
        let (Some(key), Some(rep)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(key), Some((n, at))) = (std::str::from_utf8(key), decode(v.value())) else {
            continue;
        };
        if rep != replica.as_bytes() && now_ms.saturating_sub(at) < millis(STALE) {
            let e = out.entry(key.to_owned()).or_default();
            *e = e.saturating_add(n);
        }
    }
    Ok(out)
}

impl Sessions {
    /// Publishes this replica's open sessions per key (when they changed,
    /// or every [`HEARTBEAT`]) and reads the other replicas' (blocking:
    /// one write transaction when publishing, else one read). `replica`
    /// names this process; `now_ms` is the wall clock.
    pub fn sync(&self, store: &Store, replica: &str, now_ms: u64) -> Result<(), StoreError> {
        let mine = self.lock().per_key.clone();
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = mine != published.counts
            || (!mine.is_empty() && now_ms.saturating_sub(published.at_ms) >= millis(HEARTBEAT));
        let others = if due {
            let txn = store.begin_write()?;
            let others = {
                let mut table = txn.open_named(SESSIONS_TABLE)?;
                for key in published.counts.keys() {
                    if !mine.contains_key(key) {
                        table.remove(&row_key(key, replica))?;
                    }
                }
                for (key, n) in &mine {
                    table.insert(&row_key(key, replica), &encode(*n, now_ms))?;
                }
                table.retain(|_, v| {
                    decode(v).is_some_and(|(_, at)| now_ms.saturating_sub(at) < millis(STALE))
                })?;
                others_of(&table, replica, now_ms)?
            };
            txn.commit()?;
            published.counts = mine;
            published.at_ms = now_ms;
            others
        } else {
            let txn = store.begin_read()?;
            let table = txn.open_named(SESSIONS_TABLE)?;
            others_of(&table, replica, now_ms)?
        };
        self.lock().others = others;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(s: &Sessions, key: &str, n: u32) {
        s.lock().per_key.insert(key.to_owned(), n);
    }

    fn others(s: &Sessions, key: &str) -> u32 {
        s.lock().others.get(key).copied().unwrap_or(0)
    }

    #[test]
    fn replicas_see_each_others_sessions_until_they_close_or_go_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("store");
        let (a, b, c) = (
            Sessions::default(),
            Sessions::default(),
            Sessions::default(),
        );
        let t = 1_000_000u64;
        open(&a, "k", 2);
        open(&b, "k", 1);
        open(&b, "j", 3);
        a.sync(&store, "ra", t).expect("sync");
        b.sync(&store, "rb", t).expect("sync");
        c.sync(&store, "rc", t).expect("sync");
        a.sync(&store, "ra", t).expect("sync");
        assert_eq!((others(&a, "k"), others(&a, "j")), (1, 3));
        assert_eq!((others(&b, "k"), others(&b, "j")), (2, 0), "not its own");
        assert_eq!((others(&c, "k"), others(&c, "j")), (3, 3));
        // A session closes on b: its row follows at b's next sync.
        b.lock().per_key.remove("k");
        b.sync(&store, "rb", t + 100).expect("sync");
        c.sync(&store, "rc", t + 100).expect("sync");
        assert_eq!(others(&c, "k"), 2);
        // a keeps its row fresh by heartbeat; b (say it died) does not.
        let later = t + 100 + millis(STALE);
        a.sync(&store, "ra", later).expect("heartbeat");
        c.sync(&store, "rc", later).expect("sync");
        assert_eq!(
            (others(&c, "k"), others(&c, "j")),
            (2, 0),
            "b's rows are stale"
        );
    }

    #[test]
    fn an_unchanged_count_is_not_rewritten_before_the_heartbeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("store");
        let a = Sessions::default();
        open(&a, "k", 1);
        a.sync(&store, "ra", 5_000).expect("sync");
        let written = |store: &Store| {
            let txn = store.begin_read().expect("read");
            let table = txn.open_named(SESSIONS_TABLE).expect("table");
            let v = table.get(&row_key("k", "ra")).expect("get").expect("row");
            decode(v.value()).expect("decodes")
        };
        a.sync(&store, "ra", 6_000).expect("sync");
        assert_eq!(written(&store), (1, 5_000), "not yet");
        a.sync(&store, "ra", 7_000).expect("sync");
        assert_eq!(written(&store), (1, 7_000), "heartbeat");
        assert_eq!(decode(&[0; 11]), None);
    }
}
