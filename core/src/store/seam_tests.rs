//! The seam's contract (`kv.rs`), each property one test body run on both
//! backends: redb in a temporary directory, and PostgreSQL on a throwaway
//! server (`test_pg`, one per test process, a fresh database per test).

use super::test_pg::{PgDatabase, PgServer};
use super::*;
use std::ops::Bound;
use std::sync::Barrier;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Redb,
    Postgres,
}

/// An open store and what keeps it alive.
struct Opened {
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

fn open_on(db: &PgDatabase) -> Opened {
    let (store, _dir) = open_test_pg(db);
    Opened { store, _dir }
}

/// One store, and a second handle on the same data: the same `Store` for
/// redb (one process), a second `Store` on the same database for
/// PostgreSQL (another replica).
fn open_two(kind: Kind) -> (Opened, Arc<Store>, Option<Opened>) {
    match kind {
        Kind::Redb => {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path(), "test").expect("open redb");
            let again = Arc::clone(&store);
            (Opened { store, _dir: dir }, again, None)
        }
        Kind::Postgres => {
            let db = PgServer::shared().database();
            let a = open_on(&db);
            let b = open_on(&db);
            let again = Arc::clone(&b.store);
            (a, again, Some(b))
        }
    }
}

fn open(kind: Kind) -> Opened {
    open_two(kind).0
}

/// Runs `$body(kind)` as `$name::redb` and `$name::postgres`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn redb() {
                super::$name(super::Kind::Redb)
            }
            #[test]
            fn postgres() {
                super::$name(super::Kind::Postgres)
            }
        }
    )*};
}

both!(
    get_insert_remove_len,
    keys_sort_as_bytes_in_every_range,
    retain_keeps_what_it_is_told,
    dropped_or_aborted_writes_change_nothing,
    a_read_is_one_snapshot,
    missing_tables_read_as_empty,
    writers_are_serialized,
    shared_lock_excludes_across_handles,
    a_neutral_schema_step_migrates_the_rows_and_the_version,
    a_failing_schema_step_leaves_the_store_as_it_was,
    openers_racing_run_a_schema_step_once,
);

const T: &str = "seam_test";

fn put(store: &Store, rows: &[(&[u8], &[u8])]) {
    let w = store.begin_write().expect("write");
    {
        let mut t = w.open_named(T).expect("table");
        for (k, v) in rows {
            t.insert(k, v).expect("insert");
        }
    }
    w.commit().expect("commit");
}

fn keys(rows: impl Iterator<Item = Result<(Value, Value), StoreError>>) -> Vec<Vec<u8>> {
    rows.map(|r| r.expect("row").0.into_vec()).collect()
}

fn get_insert_remove_len(kind: Kind) {
    let o = open(kind);
    let w = o.store.begin_write().expect("write");
    {
        let mut t = w.open_named(T).expect("table");
        assert!(t.is_empty().expect("empty"));
        assert_eq!(t.insert(b"a", b"1").expect("insert"), None);
        assert_eq!(
            t.insert(b"a", b"2").expect("replace").map(Value::into_vec),
            Some(b"1".to_vec()),
            "insert returns the value it replaced"
        );
        t.insert(b"b", b"").expect("empty value");
        assert_eq!(t.len().expect("len"), 2);
        // Uncommitted changes are visible inside the transaction.
        assert_eq!(
            t.get(b"a").expect("get").map(Value::into_vec),
            Some(b"2".to_vec())
        );
        assert_eq!(
            t.get(b"b").expect("get").map(Value::into_vec),
            Some(Vec::new())
        );
        assert_eq!(
            t.remove(b"a").expect("remove").map(Value::into_vec),
            Some(b"2".to_vec())
        );
        assert_eq!(t.remove(b"a").expect("remove again"), None);
        assert_eq!(t.get(b"zz").expect("get missing"), None);
    }
    w.commit().expect("commit");
    let r = o.store.begin_read().expect("read");
    let mut t = r.open_named(T).expect("table");
    assert_eq!(t.len().expect("len"), 1);
    assert!(
        matches!(t.insert(b"x", b"y"), Err(StoreError::ReadOnly)),
        "a read transaction cannot write"
    );
    assert!(matches!(t.remove(b"b"), Err(StoreError::ReadOnly)));
}

fn keys_sort_as_bytes_in_every_range(kind: Kind) {
    let o = open(kind);
    let special: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x7f],
        vec![0x80],
        vec![0x80, 0x00],
        vec![0xff],
        vec![0xff, 0xff],
    ];
    // More rows than one PostgreSQL page, so paging from both ends meets
    // in the middle.
    let mut all: Vec<Vec<u8>> = (0u16..600)
        .map(|i| [b"m".as_slice(), &i.to_be_bytes()].concat())
        .collect();
    all.extend(special.iter().cloned());
    let rows: Vec<(&[u8], &[u8])> = all
        .iter()
        .map(|k| (k.as_slice(), b"v".as_slice()))
        .collect();
    put(&o.store, &rows);
    all.sort();
    let r = o.store.begin_read().expect("read");
    let t = r.open_named(T).expect("table");
    assert_eq!(keys(t.iter().expect("iter")), all, "ascending, as bytes");
    let mut rev = all.clone();
    rev.reverse();
    assert_eq!(keys(t.iter().expect("iter").rev()), rev, "descending");
    assert_eq!(
        t.first().expect("first").map(|(k, _)| k.into_vec()),
        Some(vec![])
    );
    assert_eq!(
        t.last().expect("last").map(|(k, _)| k.into_vec()),
        Some(vec![0xff, 0xff])
    );
    // Both ends at once: front and back never cross or repeat.
    let mut it = t.iter().expect("iter");
    let mut met = Vec::new();
    loop {
        match (it.next(), it.next_back()) {
            (Some(a), Some(b)) => {
                met.push(a.expect("row").0.into_vec());
                met.push(b.expect("row").0.into_vec());
            }
            (Some(a), None) => met.push(a.expect("row").0.into_vec()),
            (None, _) => break,
        }
    }
    met.sort();
    assert_eq!(met, all, "front and back together yield every row once");
    let within = |lo: Bound<&[u8]>, hi: Bound<&[u8]>| -> Vec<Vec<u8>> {
        all.iter()
            .filter(|k| std::ops::RangeBounds::<&[u8]>::contains(&(lo, hi), &k.as_slice()))
            .cloned()
            .collect()
    };
    let bounds: Vec<Bound<&[u8]>> = vec![
        Bound::Unbounded,
        Bound::Included(&[0x7f]),
        Bound::Excluded(&[0x7f]),
        Bound::Included(&[0x80]),
        Bound::Excluded(&[0x80]),
        Bound::Included(b"m\x01\x00"),
        Bound::Excluded(&[0xff]),
    ];
    let key = |b: &Bound<&[u8]>| match b {
        Bound::Included(k) | Bound::Excluded(k) => Some(k.to_vec()),
        Bound::Unbounded => None,
    };
    for lo in &bounds {
        for hi in &bounds {
            // Inverted or empty-by-construction ranges are a caller's bug
            // (redb panics on some, as BTreeMap does): not part of the seam.
            if let (Some(a), Some(b)) = (key(lo), key(hi))
                && (a > b
                    || (a == b
                        && (matches!(lo, Bound::Excluded(_)) || matches!(hi, Bound::Excluded(_)))))
            {
                continue;
            }
            let got = keys(t.range((*lo, *hi)).expect("range"));
            assert_eq!(got, within(*lo, *hi), "range {lo:?}..{hi:?}");
            let mut back = keys(t.range((*lo, *hi)).expect("range").rev());
            back.reverse();
            assert_eq!(back, got, "reversed range {lo:?}..{hi:?}");
        }
    }
    let prefix: &[u8] = &[0x80];
    let upto: &[u8] = &[0x81];
    assert_eq!(
        keys(t.range(prefix..upto).expect("prefix")),
        vec![vec![0x80], vec![0x80, 0x00]]
    );
}

fn retain_keeps_what_it_is_told(kind: Kind) {
    let o = open(kind);
    let all: Vec<[u8; 2]> = (0u16..700).map(u16::to_be_bytes).collect();
    let rows: Vec<(&[u8], &[u8])> = all.iter().map(|k| (k.as_slice(), k.as_slice())).collect();
    put(&o.store, &rows);
    let w = o.store.begin_write().expect("write");
    {
        let mut t = w.open_named(T).expect("table");
        let mut seen = 0;
        t.retain(|k, v| {
            seen += 1;
            assert_eq!(k, v, "retain sees each row's own value");
            k[1] % 3 == 0
        })
        .expect("retain");
        assert_eq!(seen, 700, "retain looks at every row once");
    }
    w.commit().expect("commit");
    let r = o.store.begin_read().expect("read");
    let t = r.open_named(T).expect("table");
    let want: Vec<Vec<u8>> = all
        .iter()
        .filter(|k| k[1] % 3 == 0)
        .map(|k| k.to_vec())
        .collect();
    assert_eq!(keys(t.iter().expect("iter")), want);
}

fn dropped_or_aborted_writes_change_nothing(kind: Kind) {
    let (o, other, _b) = open_two(kind);
    put(&o.store, &[(b"k", b"before")]);
    {
        let w = o.store.begin_write().expect("write");
        w.open_named(T)
            .expect("table")
            .insert(b"k", b"dropped")
            .expect("insert");
        w.open_named("seam_other")
            .expect("table")
            .insert(b"x", b"y")
            .expect("insert");
    }
    let w = o.store.begin_write().expect("write");
    w.open_named(T)
        .expect("table")
        .insert(b"k", b"aborted")
        .expect("insert");
    w.abort().expect("abort");
    // The writer lock was released each time: the other handle writes.
    put(&other, &[(b"k2", b"after")]);
    let r = o.store.begin_read().expect("read");
    let t = r.open_named(T).expect("table");
    assert_eq!(
        t.get(b"k").expect("get").map(Value::into_vec),
        Some(b"before".to_vec())
    );
    assert_eq!(
        r.open_named("seam_other")
            .expect("table")
            .len()
            .expect("len"),
        0
    );
}

fn a_read_is_one_snapshot(kind: Kind) {
    let (o, other, _b) = open_two(kind);
    put(&o.store, &[(b"k", b"1")]);
    let r = o.store.begin_read().expect("read");
    let t = r.open_named(T).expect("table");
    assert_eq!(
        t.get(b"k").expect("get").map(Value::into_vec),
        Some(b"1".to_vec())
    );
    put(&other, &[(b"k", b"2"), (b"new", b"row")]);
    assert_eq!(
        t.get(b"k").expect("get").map(Value::into_vec),
        Some(b"1".to_vec()),
        "a read transaction keeps its snapshot"
    );
    assert_eq!(t.len().expect("len"), 1);
    drop(t);
    drop(r);
    let fresh = o.store.begin_read().expect("read");
    let t = fresh.open_named(T).expect("table");
    assert_eq!(
        t.get(b"k").expect("get").map(Value::into_vec),
        Some(b"2".to_vec())
    );
}

fn missing_tables_read_as_empty(kind: Kind) {
    let o = open(kind);
    let r = o.store.begin_read().expect("read");
    let t = r.open_named("never_written").expect("missing table");
    assert!(t.is_empty().expect("empty"));
    assert_eq!(t.get(b"x").expect("get"), None);
    assert!(t.first().expect("first").is_none());
    assert!(t.last().expect("last").is_none());
    assert_eq!(t.iter().expect("iter").count(), 0);
    drop(t);
    drop(r);
    put(&o.store, &[(b"k", b"v")]);
    let names = o
        .store
        .begin_read()
        .expect("read")
        .table_names()
        .expect("names");
    assert!(names.contains(&T.to_string()), "{names:?}");
    assert!(names.contains(&"meta".to_string()), "{names:?}");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

/// Read-increment-write of one counter from many threads on two handles:
/// with serialized writers no increment is lost.
fn writers_are_serialized(kind: Kind) {
    let (o, other, _b) = open_two(kind);
    const THREADS: usize = 6;
    const EACH: u64 = 15;
    let stores = [Arc::clone(&o.store), other];
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let store = Arc::clone(&stores[i % 2]);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..EACH {
                    let w = store.begin_write().expect("write");
                    {
                        let mut t = w.open_named(T).expect("table");
                        let n = t
                            .get(b"counter")
                            .expect("get")
                            .map(|v| u64::from_le_bytes(v.value().try_into().expect("u64")))
                            .unwrap_or(0);
                        // Widen the window a lost update would need.
                        std::thread::yield_now();
                        t.insert(b"counter", &(n + 1).to_le_bytes())
                            .expect("insert");
                    }
                    w.commit().expect("commit");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
    let r = o.store.begin_read().expect("read");
    let v = r
        .open_named(T)
        .expect("table")
        .get(b"counter")
        .expect("get")
        .expect("counter");
    assert_eq!(
        u64::from_le_bytes(v.value().try_into().expect("u64")),
        THREADS as u64 * EACH
    );
}

fn shared_lock_excludes_across_handles(kind: Kind) {
    let (o, other, _b) = open_two(kind);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let held = o.store.lock_shared("connection:a").await.expect("lock");
        let free =
            tokio::time::timeout(Duration::from_secs(10), other.lock_shared("connection:b")).await;
        assert!(matches!(free, Ok(Ok(_))), "another name is free");
        let blocked = tokio::time::timeout(
            Duration::from_millis(400),
            other.lock_shared("connection:a"),
        )
        .await;
        assert!(blocked.is_err(), "the same name waits for the holder");
        drop(held);
        let again =
            tokio::time::timeout(Duration::from_secs(10), other.lock_shared("connection:a")).await;
        assert!(matches!(again, Ok(Ok(_))), "released on drop");
    });
}

// A test-only logical schema step (v5), written against
// `latchkey_migrations::Tables` as every real step from v5 on must be: it
// copies every row of `T` into `T_V5` with its value reversed, and removes
// the row `gone`.
const T_V5: &str = "seam_test_v5";

fn v5(t: &dyn latchkey_migrations::Tables) -> Result<(), latchkey_migrations::StepError> {
    for (k, mut v) in t.rows(T)? {
        v.reverse();
        t.insert(T_V5, &k, &v)?;
    }
    t.remove(T, b"gone")?;
    Ok(())
}

fn v5_failing(t: &dyn latchkey_migrations::Tables) -> Result<(), latchkey_migrations::StepError> {
    t.insert(T_V5, b"half", b"written")?;
    t.remove(T, b"gone")?;
    Err(latchkey_migrations::StepError("injected failure".into()))
}

fn with_step(
    run: fn(&dyn latchkey_migrations::Tables) -> Result<(), latchkey_migrations::StepError>,
) -> Vec<latchkey_migrations::Migration> {
    let mut list = latchkey_migrations::MIGRATIONS.to_vec();
    list.push(latchkey_migrations::Migration {
        from: latchkey_migrations::CURRENT_VERSION,
        name: "test: v5",
        run: latchkey_migrations::Step::Tables(run),
    });
    list
}

fn version(store: &Store) -> u32 {
    let v = store
        .meta_get(latchkey_migrations::SCHEMA_VERSION_KEY)
        .expect("read")
        .expect("version");
    u32::from_le_bytes(v.as_slice().try_into().expect("4 bytes"))
}

fn rows_of(store: &Store, table: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let r = store.begin_read().expect("read");
    let t = r.open_named(table).expect("table");
    t.iter()
        .expect("iter")
        .map(|row| {
            let (k, v) = row.expect("row");
            (k.into_vec(), v.into_vec())
        })
        .collect()
}

fn a_neutral_schema_step_migrates_the_rows_and_the_version(kind: Kind) {
    let o = open(kind);
    put(&o.store, &[(b"a", b"12"), (b"gone", b"x"), (b"b", b"345")]);
    let from = o.store.migrate_again_with(&with_step(v5)).expect("v5");
    assert_eq!(from, latchkey_migrations::CURRENT_VERSION);
    assert_eq!(version(&o.store), latchkey_migrations::CURRENT_VERSION + 1);
    assert_eq!(
        rows_of(&o.store, T_V5),
        vec![
            (b"a".to_vec(), b"21".to_vec()),
            (b"b".to_vec(), b"543".to_vec()),
            (b"gone".to_vec(), b"x".to_vec()),
        ]
    );
    assert_eq!(
        rows_of(&o.store, T),
        vec![
            (b"a".to_vec(), b"12".to_vec()),
            (b"b".to_vec(), b"345".to_vec())
        ]
    );
    // At v5 already: the step does not run again, and the released list
    // (v4) refuses the database as too new, as for a newer redb file.
    let from = o
        .store
        .migrate_again_with(&with_step(v5_failing))
        .expect("no-op");
    assert_eq!(from, latchkey_migrations::CURRENT_VERSION + 1);
    let err = o
        .store
        .migrate_again_with(latchkey_migrations::MIGRATIONS)
        .expect_err("newer than this build");
    assert!(
        matches!(
            err,
            StoreError::Migrate(latchkey_migrations::MigrateError::TooNew { .. })
        ),
        "{err}"
    );
}

fn a_failing_schema_step_leaves_the_store_as_it_was(kind: Kind) {
    let o = open(kind);
    put(&o.store, &[(b"a", b"12"), (b"gone", b"x")]);
    let before = rows_of(&o.store, T);
    let err = o
        .store
        .migrate_again_with(&with_step(v5_failing))
        .expect_err("the step fails");
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(version(&o.store), latchkey_migrations::CURRENT_VERSION);
    assert_eq!(rows_of(&o.store, T), before);
    assert!(rows_of(&o.store, T_V5).is_empty(), "nothing half-written");
    // The store still works, and the writer lock was given back.
    put(&o.store, &[(b"after", b"1")]);
}

fn openers_racing_run_a_schema_step_once(kind: Kind) {
    // Several openers of one database (replicas starting together) run the
    // migration at the same moment: the writer lock lets the first run the
    // step; the others find v5 and run nothing (each reports the version
    // it found: exactly one found v4). On redb there is one
    // process, so the handles are one store.
    let (a, b, _keep) = open_two(kind);
    put(&a.store, &[(b"a", b"12")]);
    let list = with_step(v5);
    let gate = Barrier::new(4);
    let froms: Vec<u32> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let store = if i % 2 == 0 { &a.store } else { &b };
                let (gate, list) = (&gate, &list);
                sc.spawn(move || {
                    gate.wait();
                    store.migrate_again_with(list).expect("migrate")
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let v4 = latchkey_migrations::CURRENT_VERSION;
    assert_eq!(froms.iter().filter(|f| **f == v4).count(), 1, "{froms:?}");
    assert_eq!(
        froms.iter().filter(|f| **f == v4 + 1).count(),
        3,
        "{froms:?}"
    );
    assert_eq!(rows_of(&b, T_V5), vec![(b"a".to_vec(), b"21".to_vec())]);
}
