//! The replica mechanisms end to end inside one test process, each
//! "replica" a store of its own on one PostgreSQL database (own pool, own
//! change feed): the reload task carrying a vault change to another
//! replica's hot-path cache, and per-key request counts shared through the
//! database.

use super::reload::{Cache, spawn_cache_reloader};
use crate::proxy::KeyLimiter;
use crate::secrecy::ExposeSecret;
use crate::store::Store;
use crate::store::test_pg::{PgDatabase, PgServer};
use crate::vault::{Kind, MasterKeySource, NewRecord, Vault};
use secrecy::SecretString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

fn open(db: &PgDatabase) -> (Arc<Store>, tempfile::TempDir) {
    crate::store::open_test_pg(db)
}

fn vault(store: Arc<Store>, key_file: &Path) -> Arc<Vault> {
    let v = Arc::new(Vault::new(store));
    v.open_with(&MasterKeySource::KeyFile {
        path: key_file.to_path_buf(),
    })
    .expect("unseal");
    v
}

fn put(v: &Vault, value: &str) {
    v.put(
        &NewRecord {
            name: "openai".into(),
            kind: Kind::ApiKey,
            provider: None,
            labels: Default::default(),
        },
        &SecretString::from(value.to_string()),
        true,
    )
    .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_change_reaches_the_other_replicas_cache_through_the_reload_task() {
    let db = PgServer::shared().database();
    let keys = tempfile::tempdir().expect("tempdir");
    let key_file = keys.path().join("master.key");
    let (sa, _da) = open(&db);
    let (sb, _db) = open(&db);
    let a = vault(sa, &key_file);
    let b = vault(Arc::clone(&sb), &key_file);
    put(&a, "sk-one");
    assert_eq!(
        b.reveal_cached("openai").expect("r").expose_secret(),
        "sk-one"
    );
    let (stop, rx) = watch::channel(false);
    let bv = Arc::clone(&b);
    let task = spawn_cache_reloader(
        sb,
        vec![Cache::new("vault", move |c| {
            bv.on_store_change(c).map(drop).map_err(Into::into)
        })],
        rx,
    );
    for i in 0..5 {
        let value = format!("sk-{i}");
        let t = Instant::now();
        put(&a, &value);
        loop {
            if b.reveal_cached("openai").expect("r").expose_secret() == value {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "the change did not reach the other replica within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops in time")
        .expect("task");
}

#[test]
fn request_counts_are_shared_through_the_database() {
    let db = PgServer::shared().database();
    let stores: Vec<_> = (0..3).map(|_| open(&db)).collect();
    let start = Instant::now();
    // A minute boundary on the wall clock, as every replica sees it.
    let t0 = 29_000_000 * 60_000;
    let ls: Vec<KeyLimiter> = (0..3)
        .map(|_| KeyLimiter::with_clock(10, start, t0))
        .collect();
    let mut admitted = 0;
    for _round in 0..10 {
        for l in &ls {
            admitted += (0..2).filter(|_| l.check("k", start).is_ok()).count();
        }
        for (l, (s, _)) in ls.iter().zip(&stores).chain(ls.iter().zip(&stores)) {
            l.sync(s, start).expect("sync");
        }
    }
    // Per replica alone: 30. Shared, within rpm + (N − 1) × 2.
    assert!((10..=14).contains(&admitted), "{admitted}");
}
