use super::*;

#[test]
fn open_creates_and_reopens_at_current_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(dir.path(), "cli").expect("create");
    assert_eq!(s.migrated_from(), 0);
    drop(s);
    let s = Store::open(dir.path(), "cli").expect("reopen");
    assert_eq!(s.migrated_from(), CURRENT_VERSION);
    let meta = fs::metadata(dir.path().join(DB_FILE)).expect("meta");
    assert_eq!(crate::private_fs::loose_mode(&meta), None);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn second_open_is_refused_with_pid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _s = Store::open(dir.path(), "serve").expect("first");
    let err = Store::open(dir.path(), "cli").expect_err("second");
    assert!(err.to_string().contains("PID"), "{err}");
}

fn damaged_file_is_left_alone(mangle: impl FnOnce(&mut Vec<u8>)) {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), "cli").expect("create"));
    let path = dir.path().join(DB_FILE);
    let mut bytes = fs::read(&path).expect("read");
    mangle(&mut bytes);
    fs::write(&path, &bytes).expect("write");
    let err = Store::open(dir.path(), "cli").expect_err("damaged file must not open");
    assert!(
        matches!(err, StoreError::Corrupt { .. }),
        "expected a clear corruption error, got: {err}"
    );
    assert!(
        fs::read(&path).expect("read") == bytes,
        "the file was modified"
    );
}

#[test]
fn truncated_file_is_refused_unchanged() {
    damaged_file_is_left_alone(|b| b.truncate(b.len() / 3));
}

#[test]
fn garbage_file_is_refused_unchanged() {
    damaged_file_is_left_alone(|b| {
        for x in b.iter_mut().take(4096) {
            *x ^= 0x5a;
        }
    });
}

#[test]
fn newer_schema_is_refused_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(dir.path(), "cli").expect("create");
    {
        let txn = s.begin_write().expect("w");
        {
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert(
                latchkey_migrations::SCHEMA_VERSION_KEY,
                (CURRENT_VERSION + 1).to_le_bytes().as_slice(),
            )
            .expect("insert");
        }
        txn.commit().expect("commit");
    }
    drop(s);
    let path = dir.path().join(DB_FILE);
    let before = fs::read(&path).expect("read");
    let err = Store::open(dir.path(), "cli").expect_err("newer");
    assert!(err.to_string().contains("newer than this build"), "{err}");
    assert!(
        fs::read(&path).expect("read") == before,
        "the file was modified"
    );
}

#[tokio::test]
async fn a_shared_lock_excludes_a_second_holder_of_the_same_name_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "test").expect("open");
    let held = store.lock_shared("connection:a").await.expect("lock");
    // Another name is free…
    let other = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.lock_shared("connection:b"),
    )
    .await;
    assert!(other.is_ok(), "a different name must not wait");
    // …the same name waits until the first guard drops.
    let same = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        store.lock_shared("connection:a"),
    )
    .await;
    assert!(same.is_err(), "the same name must wait for the holder");
    drop(held);
    let again = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.lock_shared("connection:a"),
    )
    .await;
    assert!(again.is_ok(), "released on drop");
}
