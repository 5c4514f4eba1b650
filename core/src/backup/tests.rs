//! A backup read through the storage seam, restored into a new data
//! directory, holds every row of every table.

use super::*;
use crate::store::{CopyReport, TableCopy, digest_tables};
use crate::vault::{Kind, NewRecord};
use std::collections::BTreeMap;
use std::sync::Arc;

fn record(name: &str) -> NewRecord {
    NewRecord {
        name: name.into(),
        kind: Kind::ApiKey,
        provider: Some(name.into()),
        labels: BTreeMap::new(),
    }
}

fn except_meta(r: &CopyReport) -> Vec<TableCopy> {
    let meta = store::table_name(&META);
    r.tables
        .iter()
        .filter(|t| t.name != meta)
        .cloned()
        .collect()
}

#[test]
fn a_backup_restores_every_row_of_every_table() {
    let src = tempfile::tempdir().expect("tempdir");
    let source = MasterKeySource::KeyFile {
        path: src.path().join("master.key"),
    };
    // A table this build does not know travels too: a backup is every
    // table, as the seam lists them.
    let (live, vault) = seeded(&src.path().join("data"), &source);

    let identity = age::x25519::Identity::generate();
    let (bytes, made) =
        create(&vault, &BackupRecipient::Recipient(identity.to_public())).expect("backup");
    let before = digest_tables(&live.begin_read().expect("read")).expect("digest");
    assert_eq!(
        made.tables,
        before.tables.len(),
        "every table is in the backup"
    );
    assert_eq!(made.vault_records, 2);

    let opened = open(&bytes, &BackupIdentity::Identity(identity)).expect("open");
    let dst = tempfile::tempdir().expect("tempdir");
    let target = dst.path().join("data");
    let target_source = MasterKeySource::KeyFile {
        path: dst.path().join("master.key"),
    };
    let trust = Trust {
        fingerprint: opened.signer,
        allow_unsigned: false,
    };
    let (summary, origin) =
        restore(&opened, &target, &target_source, None, false, &trust).expect("restore");
    assert!(matches!(origin, Origin::Trusted(_)), "{origin:?}");
    assert_eq!(summary.vault_records, 2);
    assert_eq!(
        verify_restored(&target, &target_source, None).expect("verify"),
        2
    );

    let restored = Store::open(&target, "test").expect("reopen");
    let after = digest_tables(&restored.begin_read().expect("read")).expect("digest");
    // Row for row the same, but for `meta`, whose wrapped data key is
    // re-made for the target's master key.
    assert_eq!(except_meta(&before), except_meta(&after));
    let meta_rows = |r: &CopyReport| r.table(store::table_name(&META)).map(|t| t.rows);
    assert_eq!(meta_rows(&before), meta_rows(&after));
    assert_ne!(
        live.meta_get(META_WRAPPED_DATA_KEY).expect("meta"),
        restored.meta_get(META_WRAPPED_DATA_KEY).expect("meta"),
        "the data key is wrapped for the target's own master key"
    );
}

/// A live redb install with `n` vault records and a table outside the
/// schema; its backup to a fresh identity, opened.
/// A store in `data` with two vault entries and a table this build does
/// not know; its vault, open.
fn seeded(data: &Path, source: &MasterKeySource) -> (Arc<Store>, Vault) {
    let live = Store::open(data, "test").expect("store");
    let vault = Vault::new(live.clone());
    vault.open_with(source).expect("vault");
    for name in ["openai", "anthropic"] {
        let secret = SecretString::from(format!("sk-{name}-canary"));
        vault.put(&record(name), &secret, false).expect("put");
    }
    let txn = live.begin_write().expect("write");
    txn.open_named("not_in_the_schema")
        .expect("table")
        .insert(b"k", b"v")
        .expect("insert");
    txn.commit().expect("commit");
    (live, vault)
}

fn backed_up(dir: &Path) -> (VerifiedBackup, CopyReport) {
    let source = MasterKeySource::KeyFile {
        path: dir.join("master.key"),
    };
    let (live, vault) = seeded(&dir.join("data"), &source);
    let identity = age::x25519::Identity::generate();
    let (bytes, _) =
        create(&vault, &BackupRecipient::Recipient(identity.to_public())).expect("backup");
    let digest = digest_tables(&live.begin_read().expect("read")).expect("digest");
    (
        open(&bytes, &BackupIdentity::Identity(identity)).expect("open"),
        digest,
    )
}

#[test]
fn a_restore_into_postgres_is_refused_while_another_store_is_open_then_copies_exactly() {
    let src = tempfile::tempdir().expect("tempdir");
    let (backup, before) = backed_up(src.path());
    let trust = Trust {
        fingerprint: backup.signer,
        allow_unsigned: false,
    };

    // The target: a PostgreSQL deployment with a vault of its own and a
    // table the backup does not have; one replica has it open.
    let db = crate::store::test_pg::PgServer::shared().database();
    let settings = crate::store::test_pg_settings(&db);
    let dst = tempfile::tempdir().expect("tempdir");
    let target_source = MasterKeySource::KeyFile {
        path: dst.path().join("master.key"),
    };
    let data = dst.path().join("data");
    let (replica, _replica_dir) = crate::store::open_test_pg(&db);
    let old = Vault::new(replica.clone());
    old.open_with(&target_source).expect("vault");
    old.put(
        &record("old-entry"),
        &SecretString::from("sk-old".to_string()),
        false,
    )
    .expect("put");
    let txn = replica.begin_write().expect("write");
    txn.open_named("only_in_target")
        .expect("table")
        .insert(b"stale", b"row")
        .expect("insert");
    txn.commit().expect("commit");
    let rows = || digest_tables(&replica.begin_read().expect("read")).expect("digest");
    let unchanged = rows();

    let err = restore_into_store(
        &backup,
        &data,
        &settings,
        &target_source,
        None,
        false,
        &trust,
    )
    .err()
    .expect("refused");
    assert!(matches!(err, BackupError::StoreNotEmpty(_)), "{err}");
    let err = restore_into_store(
        &backup,
        &data,
        &settings,
        &target_source,
        None,
        true,
        &trust,
    )
    .err()
    .expect("refused");
    assert!(
        matches!(err, BackupError::ReplicasRunning { count: 1, .. }),
        "{err}"
    );
    assert!(!err.to_string().contains(crate::store::test_pg::PG_PASSWORD));
    assert_eq!(rows(), unchanged, "a refused restore changed the store");
    assert!(!data.exists(), "a refused restore left its data directory");

    // The replica stops: the restore goes through, and the store holds the
    // backup's rows exactly (the stale table emptied, the old entry gone).
    drop(old);
    drop(replica);
    let done = restore_into_store(
        &backup,
        &data,
        &settings,
        &target_source,
        None,
        true,
        &trust,
    )
    .expect("restore");
    assert!(matches!(done.origin, Origin::Trusted(_)));
    assert_eq!(
        verify_store(done.store.clone(), &target_source, None).expect("verify"),
        2
    );
    assert!(!data.join(".latchkey-restore").exists(), "staging left");
    let after = digest_tables(&done.store.begin_read().expect("read")).expect("digest");
    // Row for row the backup's (PostgreSQL lists no empty tables), but for
    // `meta`, whose wrapped data key is the target's.
    let differ: Vec<String> = CopyReport {
        tables: except_meta(&before),
    }
    .differences(&CopyReport {
        tables: except_meta(&after),
    });
    assert!(differ.is_empty(), "{differ:?}");
    let meta_rows = |r: &CopyReport| r.table(store::table_name(&META)).map(|t| t.rows);
    assert_eq!(meta_rows(&before), meta_rows(&after));
    assert!(after.table("only_in_target").is_none(), "{after:?}");
    assert!(after.table("not_in_the_schema").is_some(), "{after:?}");
    let vault = Vault::new(done.store.clone());
    vault.open_with(&target_source).expect("vault opens");
    assert!(vault.verify_all().expect("verify") == 2);
}

#[test]
fn a_replica_opening_during_a_restore_stops_it_or_sees_all_of_it() {
    use std::sync::{Arc, Barrier};
    let src = tempfile::tempdir().expect("tempdir");
    let (backup, _) = backed_up(src.path());
    let backup = Arc::new(backup);
    // Started at different moments of the restore: before its checks,
    // between them, during the copy, after the commit.
    for delay_ms in [0u64, 30, 80, 160, 400] {
        let db = crate::store::test_pg::PgServer::shared().database();
        let settings = crate::store::test_pg_settings(&db);
        let dst = tempfile::tempdir().expect("tempdir");
        let target_source = MasterKeySource::KeyFile {
            path: dst.path().join("master.key"),
        };
        let trust = Trust {
            fingerprint: backup.signer,
            allow_unsigned: false,
        };
        let start = Arc::new(Barrier::new(2));
        let opener = {
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
                let (replica, dir) = crate::store::open_test_pg(&db);
                // What the replica's first read sees, right after its open.
                let records = replica
                    .begin_read()
                    .expect("read")
                    .open_table(VAULT_RECORDS)
                    .expect("table")
                    .len()
                    .expect("len");
                (replica, dir, records)
            })
        };
        start.wait();
        let result = restore_into_store(
            &backup,
            &dst.path().join("data"),
            &settings,
            &target_source,
            None,
            false,
            &trust,
        );
        let (replica, _dir, seen) = opener.join().expect("opener");
        match result {
            // It was open at a check: nothing was written.
            Err(BackupError::ReplicasRunning { .. }) => {
                assert_eq!(seen, 0, "after {delay_ms} ms");
                let now = replica.begin_read().expect("read");
                assert_eq!(
                    now.open_table(VAULT_RECORDS).expect("t").len().expect("n"),
                    0
                );
            }
            // It opened after the checks: its open waited for the commit,
            // so it saw the whole backup, never a part or the old store.
            Ok(done) => {
                assert_eq!(seen, 2, "after {delay_ms} ms");
                drop(done);
            }
            Err(e) => panic!("after {delay_ms} ms: {e}"),
        }
    }
}
