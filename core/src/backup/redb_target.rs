//! The redb data directory a restore writes: looking at the database it
//! would replace, and building the new file beside it.
//!
//! This is the one place above `store` that names redb, and only for a
//! file it makes or inspects outside any open [`Store`](crate::store::Store):
//! the target is not open (a running server holds the data-directory lock,
//! and a restore must not migrate or repair the file it may refuse to
//! replace), and the new file is migrated by `latchkey_migrations`, which
//! works on redb transactions. Reading the *live* store for a backup goes
//! through the seam (`backup::create`).

use super::{BackupError, TableDump, signing};
use crate::store::{META, VAULT_RECORDS};
use crate::vault::{META_MASTER_SOURCE, META_WRAPPED_DATA_KEY};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

crate::store::from_redb_errors!(BackupError);

/// Whether the database at `db_path` holds a vault a restore would replace.
pub(super) fn holds_vault(db_path: &Path) -> bool {
    if !db_path.exists() {
        return false;
    }
    // Read-only: looking must not modify the file we may refuse to replace.
    let Ok(db) = Database::builder().open_read_only(db_path) else {
        return true; // unreadable: treat as precious
    };
    let Ok(txn) = db.begin_read() else {
        return true;
    };
    let has_key = txn
        .open_table(META)
        .ok()
        .and_then(|t| t.get(META_WRAPPED_DATA_KEY).ok().flatten().map(|_| ()))
        .is_some();
    let has_records = txn
        .open_table(VAULT_RECORDS)
        .ok()
        .and_then(|t| t.first().ok().flatten().map(|_| ()))
        .is_some();
    has_key || has_records
}

/// The backup key fingerprint of the installation in `db_path`, if it has
/// one (read-only; the public half is stored in the clear).
pub(super) fn installation_key(db_path: &Path) -> Option<signing::Fingerprint> {
    if !db_path.exists() {
        return None;
    }
    let db = Database::builder().open_read_only(db_path).ok()?;
    let txn = db.begin_read().ok()?;
    let meta = txn.open_table(META).ok()?;
    let public = meta.get(signing::META_BACKUP_PUBLIC_KEY).ok()??;
    signing::installation_fingerprint(Some(public.value()))
}

/// Creates the database `path` holding `tables` (a backup's, at its own
/// schema version), the data key `wrapped` for this installation's master
/// key of kind `source_kind`, and migrates it to this build's schema, in
/// one transaction.
pub(super) fn write_new(
    path: &Path,
    tables: &[TableDump],
    wrapped: &[u8],
    source_kind: &str,
) -> Result<(), BackupError> {
    let db = Database::create(path)?;
    let txn = db.begin_write()?;
    for t in tables {
        let mut table = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&t.name))?;
        for (k, v) in &t.entries {
            table.insert(k.as_slice(), v.as_slice())?;
        }
    }
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(META_WRAPPED_DATA_KEY, wrapped)?;
        meta.insert(META_MASTER_SOURCE, source_kind.as_bytes())?;
    }
    latchkey_migrations::migrate(&txn).map_err(crate::store::StoreError::from)?;
    txn.commit()?;
    Ok(())
}
