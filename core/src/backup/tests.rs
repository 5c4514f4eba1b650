//! A backup read through the storage seam, restored into a new data
//! directory, holds every row of every table.

use super::*;
use crate::store::{CopyReport, TableCopy, digest_tables};
use crate::vault::{Kind, NewRecord};
use std::collections::BTreeMap;

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
    let live = Store::open(&src.path().join("data"), "test").expect("store");
    let vault = Vault::new(live.clone());
    vault.open_with(&source).expect("vault");
    for name in ["openai", "anthropic"] {
        let secret = SecretString::from(format!("sk-{name}-canary"));
        vault.put(&record(name), &secret, false).expect("put");
    }
    // A table this build does not know travels too: a backup is every
    // table, as the seam lists them.
    let txn = live.begin_write().expect("write");
    txn.open_named("not_in_the_schema")
        .expect("table")
        .insert(b"k", b"v")
        .expect("insert");
    txn.commit().expect("commit");

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
