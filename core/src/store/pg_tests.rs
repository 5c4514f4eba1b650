//! What only the PostgreSQL backend has: opening a fresh database from
//! several replicas at once, refusing newer schemas, the change feed
//! between processes, bounded waits, lost connections, and errors that
//! never show the password. Against a real server (`test_pg`).

use super::test_pg::{PG_PASSWORD, PgDatabase, PgServer};
use super::*;
use std::sync::Barrier;
use std::time::{Duration, Instant};

fn settings(db: &PgDatabase) -> StoreSettings {
    test_pg_settings(db)
}

#[derive(Debug)]
struct Replica {
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

fn replica_with(s: &StoreSettings) -> Result<Replica, StoreError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with(dir.path(), "test", s)?;
    Ok(Replica { store, _dir: dir })
}

fn replica(db: &PgDatabase) -> Replica {
    replica_with(&settings(db)).expect("open PostgreSQL")
}

fn write(store: &Store, table: &str, key: &[u8], value: &[u8]) {
    let w = store.begin_write().expect("write");
    w.open_named(table)
        .expect("table")
        .insert(key, value)
        .expect("insert");
    w.commit().expect("commit");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn replicas_opening_a_fresh_database_together_agree() {
    let server = PgServer::shared();
    let db = server.database();
    const N: usize = 6;
    let barrier = Arc::new(Barrier::new(N));
    let opened: Vec<_> = (0..N)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let s = settings(&db);
            std::thread::spawn(move || {
                barrier.wait();
                replica_with(&s).map(|r| r.store.migrated_from())
            })
        })
        .collect();
    let mut froms: Vec<u32> = opened
        .into_iter()
        .map(|h| h.join().expect("thread").expect("every replica opens"))
        .collect();
    froms.sort();
    // Exactly one found the database empty; the others found it current.
    assert_eq!(froms[0], 0);
    assert!(
        froms[1..].iter().all(|f| *f == CURRENT_VERSION),
        "{froms:?}"
    );
    let applied = server.psql(
        &db.name,
        "SELECT version, name FROM latchkey_schema ORDER BY 1",
    );
    assert_eq!(applied.trim(), "1|kv");
    let version = server.psql(
        &db.name,
        "SELECT encode(v, 'hex') FROM latchkey_kv WHERE tbl = 'meta' AND k = 'schema_version'",
    );
    assert_eq!(version.trim(), hex::encode(CURRENT_VERSION.to_le_bytes()));
}

#[test]
fn a_newer_logical_schema_is_refused_unchanged() {
    let server = PgServer::shared();
    let db = server.database();
    drop(replica(&db));
    let newer = hex::encode((CURRENT_VERSION + 1).to_le_bytes());
    server.psql(
        &db.name,
        &format!(
            "UPDATE latchkey_kv SET v = '\\x{newer}' WHERE tbl = 'meta' AND k = 'schema_version'"
        ),
    );
    let before = server.psql(&db.name, "SELECT count(*) FROM latchkey_kv");
    let err = replica_with(&settings(&db)).expect_err("newer is refused");
    assert!(
        matches!(err, StoreError::Migrate(MigrateError::TooNew { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("newer than this build"), "{err}");
    assert_eq!(
        server.psql(&db.name, "SELECT count(*) FROM latchkey_kv"),
        before
    );
}

#[test]
fn a_newer_sql_schema_is_refused() {
    let server = PgServer::shared();
    let db = server.database();
    drop(replica(&db));
    server.psql(
        &db.name,
        "INSERT INTO latchkey_schema (version, name) VALUES (99, 'from the future')",
    );
    let err = replica_with(&settings(&db)).expect_err("newer is refused");
    let msg = err.to_string();
    assert!(msg.contains("newer than this build"), "{msg}");
    assert!(msg.contains("99"), "{msg}");
}

#[test]
fn a_database_with_foreign_rows_and_no_version_is_refused() {
    let server = PgServer::shared();
    let db = server.database();
    drop(replica(&db));
    server.psql(&db.name, "DELETE FROM latchkey_kv WHERE tbl = 'meta'");
    server.psql(
        &db.name,
        "INSERT INTO latchkey_kv VALUES ('users', '\\x01', '\\x02')",
    );
    let err = replica_with(&settings(&db)).expect_err("refused");
    assert!(
        err.to_string().contains("no Latchkey schema version"),
        "{err}"
    );
}

#[test]
fn the_feed_reports_other_replicas_changes_not_its_own() {
    let db = PgServer::shared().database();
    let a = replica(&db);
    let b = replica(&db);
    let mut a_feed = a.store.subscribe();
    let mut b_feed = b.store.subscribe();
    assert!(a.store.is_shared());
    write(&a.store, "users", b"u1", b"x");
    runtime().block_on(async {
        let got = tokio::time::timeout(Duration::from_secs(10), b_feed.recv())
            .await
            .expect("B hears of A's commit")
            .expect("feed open");
        assert!(got.touches("users"), "{got:?}");
        assert!(!got.touches("sessions"), "{got:?}");
        // A rolled-back write says nothing; A's own commit is not echoed.
        {
            let w = a.store.begin_write().expect("write");
            w.open_named("sessions")
                .expect("t")
                .insert(b"s", b"1")
                .expect("i");
        }
        let own = tokio::time::timeout(Duration::from_millis(500), a_feed.recv()).await;
        assert!(own.is_err(), "A is not told of its own commit: {own:?}");
        let rolled = tokio::time::timeout(Duration::from_millis(500), b_feed.recv()).await;
        assert!(
            rolled.is_err(),
            "a rolled-back write notifies nobody: {rolled:?}"
        );
    });
}

#[test]
fn a_lost_feed_connection_says_unknown_after_reconnecting() {
    let server = PgServer::shared();
    let db = server.database();
    let a = replica(&db);
    let b = replica(&db);
    let mut b_feed = b.store.subscribe();
    let killed = server.psql(
        &db.name,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    );
    assert_eq!(killed.trim(), "2", "both replicas' listeners were found");
    runtime().block_on(async {
        let got = tokio::time::timeout(Duration::from_secs(15), b_feed.recv())
            .await
            .expect("told after reconnecting")
            .expect("feed open");
        assert_eq!(got, Changed::Unknown);
    });
    // And it listens again.
    write(&a.store, "users", b"u", b"1");
    runtime().block_on(async {
        let got = tokio::time::timeout(Duration::from_secs(10), b_feed.recv())
            .await
            .expect("listening again")
            .expect("feed open");
        assert!(got.touches("users"), "{got:?}");
    });
}

#[test]
fn a_redb_store_is_not_shared_and_its_feed_never_fires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "test").expect("open");
    assert!(!store.is_shared());
    let mut feed = store.subscribe();
    write(&store, "users", b"u", b"1");
    assert!(matches!(
        feed.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
}

#[test]
fn waits_are_bounded_with_errors_that_say_why() {
    let db = PgServer::shared().database();
    let quick = StoreSettings {
        pool_size: 2,
        timeout: Duration::from_secs(1),
        ..settings(&db)
    };
    let a = replica_with(&quick).expect("open");
    let b = replica_with(&quick).expect("open");
    // The pool: two lent, the third waits `timeout` and fails.
    let r1 = a.store.begin_read().expect("first");
    let r2 = a.store.begin_read().expect("second");
    let started = Instant::now();
    let err = a.store.begin_read().expect_err("pool exhausted");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("store.pool_size"), "{err}");
    drop((r1, r2));
    a.store.begin_read().expect("free again");
    // The cluster-wide writer lock: B waits for A's open write, then fails.
    let held = a.store.begin_write().expect("A writes");
    let started = Instant::now();
    let err = b.store.begin_write().expect_err("B times out");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        err.to_string().contains("write transaction held the store"),
        "{err}"
    );
    // Shared locks too.
    runtime().block_on(async {
        let lock = a.store.lock_shared("refresh:x").await.expect("A locks");
        let err = b
            .store
            .lock_shared("refresh:x")
            .await
            .expect_err("B times out");
        assert!(err.to_string().contains("refresh:x"), "{err}");
        drop(lock);
    });
    drop(held);
    write(&b.store, "t", b"k", b"v");
}

#[test]
fn connections_the_server_closed_are_replaced() {
    let server = PgServer::shared();
    let db = server.database();
    let a = replica(&db);
    write(&a.store, "t", b"k", b"1");
    // A failover or restart: every pooled connection dies while idle.
    server.psql(
        &db.name,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND query NOT LIKE 'LISTEN%'",
    );
    let r = a.store.begin_read().expect("a fresh connection");
    let v = r.open_named("t").expect("t").get(b"k").expect("get");
    assert_eq!(v.map(Value::into_vec), Some(b"1".to_vec()));
    drop(r);
    write(&a.store, "t", b"k", b"2");
}

#[test]
fn connection_errors_never_show_the_password() {
    let db = PgServer::shared().database();
    let wrong = "wrong-pw-canary-4242";
    let url = db.url().replace(PG_PASSWORD, wrong);
    let s = StoreSettings {
        url: Some(DatabaseUrl::new(url)),
        ..settings(&db)
    };
    let err = replica_with(&s).expect_err("wrong password fails");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(wrong), "{shown}");
    assert!(shown.contains("password authentication failed"), "{shown}");
    assert!(shown.contains(&db.url_without_password()), "{shown}");
    // PGPASSWORD fills a URL without one.
    let s = StoreSettings {
        url: Some(DatabaseUrl::new(db.url_without_password())),
        env_password: Some(Password(PG_PASSWORD.to_string().into())),
        ..settings(&db)
    };
    let r = replica_with(&s).expect("PGPASSWORD");
    assert!(!format!("{:?}", r.store).contains(PG_PASSWORD));
    // The Unix socket, libpq's key=value form.
    drop(r);
    let s = StoreSettings {
        url: Some(DatabaseUrl::new(db.socket_url())),
        ..settings(&db)
    };
    replica_with(&s).expect("over the Unix socket");
}

#[test]
fn dropping_a_store_inside_async_code_does_not_panic() {
    let db = PgServer::shared().database();
    runtime().block_on(async {
        let a = replica(&db);
        write(&a.store, "t", b"k", b"v");
        let lock = a.store.lock_shared("x").await.expect("lock");
        drop(lock);
        drop(a);
    });
}

#[test]
fn other_processes_counts_each_other_open_store_once_and_forgets_closed_ones() {
    let pg = PgServer::shared();
    let db = pg.database();
    let a = replica(&db);
    let b = replica(&db);
    let c = replica(&db);
    // Each store has several connections (the feed, pooled ones, a held
    // shared lock): counted once per store.
    let _held = runtime()
        .block_on(b.store.lock_shared("counted-once"))
        .expect("lock");
    write(&b.store, "t", b"k", b"v");
    // A store on another database is not counted, nor is a session that
    // is not Latchkey's.
    let _elsewhere = replica(&pg.database());
    let _ = pg.psql(&db.name, "SELECT 1");
    let count = |s: &Store| {
        let w = s.begin_write().expect("write");
        let n = w.other_processes().expect("count");
        w.abort().expect("abort");
        n
    };
    assert_eq!(count(&a.store), 2);
    assert_eq!(count(&c.store), 2);
    drop(c);
    // The server ends a closed connection's session a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&a.store) != 1 {
        assert!(Instant::now() < deadline, "a closed store is still counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The embedded file: one process by its lock, so none other.
    let dir = tempfile::tempdir().expect("tempdir");
    let local = Store::open(dir.path(), "test").expect("redb");
    assert_eq!(count(&local), 0);
}
