//! Attacks on the data at rest, performed on the real database file between
//! runs of the real binary. Each must end in a clear error, with nothing
//! modified.

use latchkey_e2e::{TestDir, file_bytes};
use latchkey_migrations::v1::{VAULT_NAMES, VAULT_RECORDS};
use redb::{Database, ReadableDatabase};

fn db_path(d: &TestDir) -> std::path::PathBuf {
    d.data().join("latchkey.redb")
}

fn record_id(db: &Database, name: &str) -> Vec<u8> {
    let txn = db.begin_read().expect("read");
    let names = txn.open_table(VAULT_NAMES).expect("names");
    let id = names.get(name.as_bytes()).expect("get").expect("present");
    id.value().to_vec()
}

fn read_record(db: &Database, id: &[u8]) -> Vec<u8> {
    let txn = db.begin_read().expect("read");
    let t = txn.open_table(VAULT_RECORDS).expect("records");
    let v = t.get(id).expect("get").expect("present");
    v.value().to_vec()
}

fn write_record(db: &Database, id: &[u8], value: &[u8]) {
    let txn = db.begin_write().expect("write");
    {
        let mut t = txn.open_table(VAULT_RECORDS).expect("records");
        t.insert(id, value).expect("insert");
    }
    txn.commit().expect("commit");
}

#[test]
fn tampered_ciphertext_is_an_integrity_error() {
    let d = TestDir::new();
    d.ok(
        &["vault", "put", "k", "--kind", "api_key"],
        b"sk-tamper-target",
    );
    {
        let db = Database::open(db_path(&d)).expect("open");
        let id = record_id(&db, "k");
        let mut v = read_record(&db, &id);
        // The envelope is the record's tail: flip a bit in its payload.
        let n = v.len();
        v[n - 3] ^= 0x01;
        write_record(&db, &id, &v);
    }
    let err = d.fails(&["vault", "get", "k", "--reveal"], b"");
    assert!(
        err.contains("integrity check failed for vault entry `k`"),
        "{err}"
    );
    assert!(err.contains("altered"), "{err}");
    let err = d.fails(&["vault", "verify"], b"");
    assert!(err.contains("integrity check failed"), "{err}");
}

#[test]
fn ciphertext_swapped_between_records_is_refused() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "mine", "--kind", "api_key"], b"sk-mine");
    d.ok(
        &["vault", "put", "theirs", "--kind", "api_key"],
        b"sk-theirs",
    );
    {
        let db = Database::open(db_path(&d)).expect("open");
        let mine = record_id(&db, "mine");
        let theirs = record_id(&db, "theirs");
        // Copy "theirs" (metadata and envelope) onto "mine": an attacker
        // with write access to the file trying to read one secret through
        // another entry's name.
        let v = read_record(&db, &theirs);
        write_record(&db, &mine, &v);
    }
    let err = d.fails(&["vault", "get", "mine", "--reveal"], b"");
    assert!(err.contains("belongs to a different record"), "{err}");
    assert_eq!(
        d.ok(&["vault", "get", "theirs", "--reveal"], b"").stdout,
        "sk-theirs"
    );
}

fn assert_refused_unchanged(d: &TestDir, want: &str) {
    let path = db_path(d);
    let before = file_bytes(&path);
    for args in [
        &["vault", "list"][..],
        &["vault", "get", "k", "--reveal"][..],
        &["vault", "put", "x"][..],
    ] {
        let err = d.fails(args, b"v");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(
        file_bytes(&path) == before,
        "the database file was modified"
    );
}

#[test]
fn truncated_database_is_refused_unchanged() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "k"], b"v");
    let path = db_path(&d);
    let bytes = file_bytes(&path);
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    assert_refused_unchanged(&d, "is damaged");
}

#[test]
fn corrupted_database_header_is_refused_unchanged() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "k"], b"v");
    let path = db_path(&d);
    let mut bytes = file_bytes(&path);
    for b in bytes.iter_mut().take(512) {
        *b = !*b;
    }
    std::fs::write(&path, &bytes).expect("write");
    assert_refused_unchanged(&d, "is damaged");
}

#[test]
fn newer_schema_is_refused_unchanged() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "k"], b"v");
    {
        let db = Database::open(db_path(&d)).expect("open");
        let txn = db.begin_write().expect("write");
        {
            let mut meta = txn.open_table(latchkey_migrations::META).expect("meta");
            meta.insert(
                latchkey_migrations::SCHEMA_VERSION_KEY,
                99u32.to_le_bytes().as_slice(),
            )
            .expect("insert");
        }
        txn.commit().expect("commit");
    }
    assert_refused_unchanged(&d, "schema version 99, newer than this build");
}
