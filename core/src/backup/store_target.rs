//! Restoring a verified backup into a store shared by replicas
//! (PostgreSQL), through the storage seam.
//!
//! The rows are built exactly as for a data directory — a new redb file
//! holding the backup's tables and the data key wrapped for this
//! installation's master key, migrated to this build's schema
//! ([`redb_target::write_new`]), in a staging directory inside the data
//! directory — and then copied into the shared store in its one write
//! transaction ([`copy_tables`]); tables the backup does not have are
//! emptied in the same transaction, so the store holds the backup and
//! nothing else. After the commit both sides are digested and must agree
//! ([`digest_tables`]), as `store migrate` proves its copies.
//!
//! Invariants:
//!
//! - **Nothing changes when anything is refused.** The backup's origin
//!   ([`Trust::check`] against the installation key the *target* store
//!   holds) and `--force` over an existing vault are checked first, and
//!   again inside the write transaction, before any row is written; a
//!   refusal drops the transaction (a rollback). A data directory that did
//!   not exist is removed again.
//! - **No replica runs during a restore.** Running replicas hold the old
//!   data key, users, keys and sessions in memory and would go on serving
//!   them (and write records sealed with the old key). Before a master
//!   key is made or a file built, and again inside the write transaction
//!   of the copy — which a starting replica's open waits for — the store
//!   counts the other processes connected to the database
//!   ([`WriteTxn::other_processes`](crate::store::WriteTxn::other_processes));
//!   any at all is a refusal naming how to stop them.

use super::signing::{self, Origin, Trust};
use super::{BackupError, VerifiedBackup, redb_target};
use crate::store::{
    self, CopyReport, DB_FILE, META, Store, StoreSettings, VAULT_RECORDS, copy_tables,
    digest_tables,
};
use crate::vault::{META_WRAPPED_DATA_KEY, MasterKey, MasterKeySource};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The staging directory inside the data directory (removed afterwards).
const STAGING: &str = ".latchkey-restore";

/// How long other processes may still show before a restore refuses.
const STOPPED_GRACE: Duration = Duration::from_secs(2);

/// A restore into a shared store, committed and proven.
pub struct RestoredStore {
    pub summary: super::BackupSummary,
    pub origin: Origin,
    /// The target, open (for the final verification and the audit entry).
    pub store: Arc<Store>,
    /// What was copied: every table of the backup as this build stores it.
    pub report: CopyReport,
    /// The target, printable (a PostgreSQL URL without its password).
    pub target: String,
}

/// The store `settings` names, printable.
fn describe(settings: &StoreSettings) -> String {
    settings
        .url
        .as_ref()
        .map_or_else(|| "the configured store".to_string(), |u| u.redacted())
}

/// Whether the store already holds a vault, and the fingerprint of its
/// backup key, read through `meta` and `records` of one transaction.
fn look(meta: &store::Table<'_>, records: &store::Table<'_>) -> Result<Look, BackupError> {
    let holds_vault = meta.get(META_WRAPPED_DATA_KEY)?.is_some() || records.first()?.is_some();
    let public = meta.get(signing::META_BACKUP_PUBLIC_KEY)?;
    Ok(Look {
        holds_vault,
        installation: signing::installation_fingerprint(public.as_ref().map(|v| v.value())),
    })
}

struct Look {
    holds_vault: bool,
    installation: Option<signing::Fingerprint>,
}

impl Look {
    /// The refusals, in the order the data-directory restore makes them.
    fn check(
        &self,
        backup: &VerifiedBackup,
        force: bool,
        trust: &Trust,
        target: &str,
    ) -> Result<Origin, BackupError> {
        if !force && self.holds_vault {
            return Err(BackupError::StoreNotEmpty(target.to_string()));
        }
        trust.check(backup.signer, self.installation, backup.by_passphrase)
    }
}

/// Restores `backup` into the store `settings` names (holding the lock on
/// the data directory `dir`), re-wrapping its data key with the master key
/// of `source` (`passphrase` gives it for passphrase sources). See the
/// module docs for what is refused.
pub fn restore_into_store(
    backup: &VerifiedBackup,
    dir: &Path,
    settings: &StoreSettings,
    source: &MasterKeySource,
    passphrase: Option<MasterKey>,
    force: bool,
    trust: &Trust,
) -> Result<RestoredStore, BackupError> {
    let created = !dir.exists();
    let mut committed = false;
    let result = restore_in(
        backup,
        dir,
        settings,
        source,
        passphrase,
        force,
        trust,
        &mut committed,
    );
    let _ = std::fs::remove_dir_all(dir.join(STAGING));
    if result.is_err() && created && !committed {
        // A refused restore leaves no trace (the directory held only the
        // lock file, and maybe a master key made for rows never written).
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn restore_in(
    backup: &VerifiedBackup,
    dir: &Path,
    settings: &StoreSettings,
    source: &MasterKeySource,
    passphrase: Option<MasterKey>,
    force: bool,
    trust: &Trust,
    committed: &mut bool,
) -> Result<RestoredStore, BackupError> {
    let target = describe(settings);
    let store = Store::open_with(dir, "restore", settings)?;
    // A first look without the write lock: a refusal costs nothing.
    {
        let txn = store.begin_read()?;
        look(&txn.open_table(META)?, &txn.open_table(VAULT_RECORDS)?)?
            .check(backup, force, trust, &target)?;
    }
    // Before a master key may be made or a file built: a refusal leaves
    // nothing behind.
    {
        let w = store.begin_write()?;
        refuse_while_others_run(&w, &target)?;
        w.abort()?;
    }
    let wrapped = super::wrap_data_key(backup, source, passphrase)?;

    let staging = dir.join(STAGING);
    let io = |source| BackupError::Io {
        path: staging.clone(),
        source,
    };
    if staging.exists() {
        // Left by a restore that stopped before it finished: never used.
        std::fs::remove_dir_all(&staging).map_err(io)?;
    }
    store::ensure_data_dir(&staging)?;
    redb_target::write_new(
        &staging.join(DB_FILE),
        &backup.payload.tables,
        &wrapped,
        source.kind_name(),
    )?;
    let built = Store::open(&staging, "restore")?;

    let from = built.begin_read()?;
    let to = store.begin_write()?;
    // Again under the write lock that the copy holds: no replica can
    // finish opening meanwhile.
    refuse_while_others_run(&to, &target)?;
    let origin = look(&to.open_table(META)?, &to.open_table(VAULT_RECORDS)?)?
        .check(backup, force, trust, &target)?;
    let report = copy_tables(&from, &to)?;
    for name in to.table_names()? {
        if report.table(&name).is_none() {
            to.open_named(&name)?.retain(|_, _| false)?;
        }
    }
    to.commit()?;
    *committed = true;
    drop(from);
    drop(built);

    let problems = report.differences(&digest_tables(&store.begin_read()?)?);
    if !problems.is_empty() {
        return Err(BackupError::RestoredDiffers {
            target,
            detail: problems.join("; "),
        });
    }
    Ok(RestoredStore {
        summary: backup.summary.clone(),
        origin,
        store,
        report,
        target,
    })
}

/// Refuses while other processes have the store open. A replica stopped a
/// moment ago may still show for a few milliseconds (its server session
/// ends after its socket closes): looked at again for a short while first.
fn refuse_while_others_run(txn: &store::WriteTxn, target: &str) -> Result<(), BackupError> {
    let deadline = Instant::now() + STOPPED_GRACE;
    loop {
        let n = txn.other_processes()?;
        if n == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BackupError::ReplicasRunning {
                count: n,
                target: target.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
