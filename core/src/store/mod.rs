//! The store: the one redb file in the data directory, or a PostgreSQL
//! database shared by several replicas (`[store]`, `docs/SCALE.md`);
//! opening it safely, migrating it, and the seam (`kv.rs`) the rest of
//! `core` reads and writes through.
//!
//! Opening never modifies a database it cannot use: a file from a newer
//! schema is refused before the first write, and a file that needs crash
//! repair is copied aside first so a failed repair can be undone. The data
//! directory and its lock stay with either backend (each replica has its
//! own: TLS files and the admin token live there).

mod copy;
mod kv;
mod lock;
pub mod migrate;
mod postgres;
mod settings;
mod shared;

pub use copy::{CopyReport, TableCopy, copy_tables, digest_tables};
pub use kv::{ReadTxn, Rows, Table, Value, WriteTxn, byte_table, table_name};

pub use latchkey_migrations::{
    ByteTable, CURRENT_VERSION, META, v1::VAULT_NAMES, v1::VAULT_RECORDS,
};
pub use lock::{DataDirLock, LockError, LockOwner, current_owner};
pub use postgres::{PgError, PgPeek, peek as peek_postgres};
pub use settings::{Backend, DatabaseUrl, MAX_POOL_SIZE, MAX_TIMEOUT, Password, StoreSettings};
pub use shared::{Changed, FEED_CAPACITY, SharedLock};

use latchkey_migrations::{MigrateError, Outcome};
use redb::{Database, ReadableDatabase};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Log filter directives every shell adds: the PostgreSQL driver logs each
/// statement's parameters (the store's rows: sealed secrets, token hashes)
/// at debug level, which `LATCHKEY_LOG=debug` must not reveal.
pub const QUIET_LOG_DIRECTIVES: &[&str] = &["tokio_postgres=info"];

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "latchkey.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(
        "the database {path} is damaged and cannot be opened ({detail}); it was left unchanged. \
         Restore a backup with `latchkey restore`"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    #[error("a write to a table opened in a read transaction")]
    ReadOnly,
    /// A row that does not decode (or a value that does not encode): the
    /// same on every backend, unlike a backend's own corruption error.
    #[error("damaged row in the store: {0}")]
    BadRow(String),
    #[error(transparent)]
    Postgres(PgError),
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> StoreError {
        match e {
            PgError::ReadOnly => StoreError::ReadOnly,
            e => StoreError::Postgres(e),
        }
    }
}

/// `From<redb::…Error>` for an error type that can be made from a
/// [`StoreError`], so `?` works on every redb call.
macro_rules! from_redb_errors {
    ($target:ty) => {
        $crate::store::from_redb_errors!(@each $target;
            redb::TransactionError,
            redb::TableError,
            redb::StorageError,
            redb::CommitError,
            redb::DatabaseError
        );
    };
    (@each $target:ty; $($e:ty),*) => {$(
        impl From<$e> for $target {
            fn from(e: $e) -> Self {
                <$target>::from($crate::store::StoreError::Db(e.into()))
            }
        }
    )*};
}
pub(crate) use from_redb_errors;
from_redb_errors!(StoreError);

/// An open, migrated database plus the lock on the data directory.
pub struct Store {
    engine: Engine,
    dir: PathBuf,
    lock: std::sync::Mutex<DataDirLock>,
    migrated_from: u32,
    shared: shared::Local,
}

enum Engine {
    Redb(Database),
    Postgres(postgres::PgStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Store");
        d.field("dir", &self.dir);
        if let Engine::Postgres(pg) = &self.engine {
            d.field("postgres", &pg.target());
        }
        d.finish()
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn ensure_data_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    crate::private_fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
        path: dir.to_path_buf(),
        source,
    })
}

impl Store {
    /// Opens (creating if needed) the redb database in `dir`, holding the
    /// data directory's lock as `role`, and runs forward migrations.
    pub fn open(dir: &Path, role: &str) -> Result<Arc<Store>, StoreError> {
        Store::open_with(dir, role, &StoreSettings::default())
    }

    /// Opens the store `settings` names, holding the lock on `dir` (the
    /// data directory, created if needed) as `role`.
    pub fn open_with(
        dir: &Path,
        role: &str,
        settings: &StoreSettings,
    ) -> Result<Arc<Store>, StoreError> {
        ensure_data_dir(dir)?;
        let lock = DataDirLock::acquire(dir, role)?;
        match settings.backend {
            Backend::Redb => Store::open_redb(dir, lock),
            Backend::Postgres => {
                let shared = shared::Local::new();
                let (pg, from) = postgres::PgStore::open(settings, shared.sender())?;
                tracing::info!(database = %pg.target(), "store: PostgreSQL");
                Ok(Arc::new(Store {
                    engine: Engine::Postgres(pg),
                    dir: dir.to_path_buf(),
                    lock: std::sync::Mutex::new(lock),
                    migrated_from: from,
                    shared,
                }))
            }
        }
    }

    fn open_redb(dir: &Path, lock: DataDirLock) -> Result<Arc<Store>, StoreError> {
        let path = dir.join(DB_FILE);
        refuse_newer_schema(&path)?;
        let db = open_without_damage(&path)?;
        let outcome = migrate(&db)?;
        if outcome.from != outcome.to {
            tracing::info!(
                from = outcome.from,
                to = outcome.to,
                "database schema migrated"
            );
        }
        Ok(Arc::new(Store {
            engine: Engine::Redb(db),
            dir: dir.to_path_buf(),
            lock: std::sync::Mutex::new(lock),
            migrated_from: outcome.from,
            shared: shared::Local::new(),
        }))
    }

    /// A consistent snapshot to read from.
    pub fn begin_read(&self) -> Result<ReadTxn, StoreError> {
        match &self.engine {
            Engine::Redb(db) => ReadTxn::redb(db),
            Engine::Postgres(pg) => Ok(ReadTxn::postgres(pg.begin_read()?)),
        }
    }

    /// The store's one write transaction (waits for the current one; with
    /// PostgreSQL, for the current one of every process sharing it).
    pub fn begin_write(&self) -> Result<WriteTxn, StoreError> {
        match &self.engine {
            Engine::Redb(db) => WriteTxn::redb(db),
            Engine::Postgres(pg) => Ok(WriteTxn::postgres(pg.begin_write()?)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether other processes may share this store (and so change it
    /// under this one's caches).
    pub fn is_shared(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
    }

    /// Changes committed by *other* processes sharing this store; caches
    /// built from a table reload when it [`Changed::touches`] it. A
    /// `Lagged` receive means changes were missed: reload everything.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Changed> {
        self.shared.subscribe()
    }

    /// A lock on `name` held across every process sharing this store, for
    /// work that must not run twice at once anywhere (one OAuth refresh
    /// per connection); released when the guard drops.
    pub async fn lock_shared(&self, name: &str) -> Result<SharedLock, StoreError> {
        // In-process first, so this process holds at most one database
        // connection per name.
        let mut held = self.shared.lock(name).await;
        if let Engine::Postgres(pg) = &self.engine {
            held.hold_across_processes(pg.lock_shared(name).await?);
        }
        Ok(held)
    }

    /// The schema version the file had before this open migrated it.
    pub fn migrated_from(&self) -> u32 {
        self.migrated_from
    }

    /// Runs what opening runs to bring the logical schema up to date, with
    /// `migrations` instead of the released list (a test-only v5 proves the
    /// machinery on both backends before a real one exists). The version
    /// it found.
    #[cfg(test)]
    pub(crate) fn migrate_again_with(
        &self,
        migrations: &[latchkey_migrations::Migration],
    ) -> Result<u32, StoreError> {
        match &self.engine {
            Engine::Redb(db) => {
                let txn = db.begin_write()?;
                let outcome = latchkey_migrations::migrate_with(&txn, migrations)?;
                txn.commit()?;
                Ok(outcome.from)
            }
            Engine::Postgres(pg) => pg.migrate_again_with(migrations),
        }
    }

    /// Updates what the lock file says about this process.
    pub fn advertise(&self, owner: &LockOwner) -> std::io::Result<()> {
        let mut lock = self
            .lock
            .lock()
            .map_err(|_| std::io::Error::other("lock file mutex poisoned"))?;
        lock.describe_self(owner)
    }

    /// Reads one value from `META`.
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let t = txn.open_table(META)?;
        Ok(t.get(key)?.map(Value::into_vec))
    }
}

fn migrate(db: &Database) -> Result<Outcome, StoreError> {
    let txn = db.begin_write()?;
    let outcome = latchkey_migrations::migrate(&txn)?;
    if outcome.from == outcome.to {
        txn.abort()?;
    } else {
        txn.commit()?;
    }
    Ok(outcome)
}

/// What [`peek_schema`] found in a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaPeek {
    /// No database yet.
    Absent,
    /// The database's schema version.
    Version(u32),
    /// Another process (a running server) has it open; not read.
    InUse,
}

/// The schema version of the database in `dir`, read without the
/// data-directory lock and without writing (`latchkey self-check`: a new
/// build checks it can read the data while the old server still runs).
pub fn peek_schema(dir: &Path) -> Result<SchemaPeek, StoreError> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Ok(SchemaPeek::Absent);
    }
    let db = match Database::builder().open_read_only(&path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Ok(SchemaPeek::InUse),
        Err(e) => return Err(map_open_error(&path, e)),
    };
    let found = stored_schema_version(&db)?;
    Ok(SchemaPeek::Version(found))
}

/// The newest schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = CURRENT_VERSION;

/// The schema version a database records (0 before the first migration).
fn stored_schema_version(db: &redb::ReadOnlyDatabase) -> Result<u32, StoreError> {
    let txn = db.begin_read()?;
    match txn.open_table(META) {
        Ok(meta) => Ok(meta
            .get(latchkey_migrations::SCHEMA_VERSION_KEY)?
            .and_then(|v| v.value().try_into().ok().map(u32::from_le_bytes))
            .unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Reads the schema version through a read-only open, so a database from a
/// newer Latchkey is refused before anything opens it for writing.
fn refuse_newer_schema(path: &Path) -> Result<(), StoreError> {
    if !path.exists() {
        return Ok(());
    }
    // A file that needs repair cannot be opened read-only; the repairing
    // open below deals with it (and checks the version in `migrate`).
    let Ok(db) = Database::builder().open_read_only(path) else {
        return Ok(());
    };
    let found = stored_schema_version(&db)?;
    if found > CURRENT_VERSION {
        return Err(MigrateError::TooNew {
            found,
            supported: CURRENT_VERSION,
        }
        .into());
    }
    Ok(())
}

/// Opens `path` so that a file we cannot use is left byte-for-byte as it was.
///
/// redb repairs a file after an unclean shutdown (kill -9, power loss) on
/// open, which writes to it. We first try with repair refused; if repair is
/// needed, the file is copied aside, repaired, and the copy is put back if the
/// repair fails.
fn open_without_damage(path: &Path) -> Result<Database, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        let db = Database::create(path).map_err(|e| map_open_error(path, e))?;
        crate::private_fs::restrict(path).map_err(io)?;
        return Ok(db);
    }
    let repair_needed = Arc::new(AtomicBool::new(false));
    let flag = repair_needed.clone();
    let first = Database::builder()
        .set_repair_callback(move |session| {
            flag.store(true, Ordering::SeqCst);
            session.abort();
        })
        .open(path);
    match first {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::RepairAborted) if repair_needed.load(Ordering::SeqCst) => {
            let aside = path.with_extension("redb.pre-repair");
            fs::copy(path, &aside).map_err(io)?;
            match Database::open(path) {
                Ok(db) => {
                    tracing::warn!(path = %path.display(), "database repaired after an unclean shutdown");
                    let _ = fs::remove_file(&aside);
                    Ok(db)
                }
                Err(e) => {
                    fs::rename(&aside, path).map_err(io)?;
                    Err(corrupt(format!(
                        "repair after unclean shutdown failed: {e}"
                    )))
                }
            }
        }
        Err(e) => Err(map_open_error(path, e)),
    }
}

fn map_open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Io(source)) => {
            if source.kind() == std::io::ErrorKind::UnexpectedEof
                || source.kind() == std::io::ErrorKind::InvalidData
            {
                StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: source.to_string(),
                }
            } else {
                StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StoreError::Corrupt {
                path: path.to_path_buf(),
                detail,
            }
        }
        redb::DatabaseError::UpgradeRequired(v) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("unsupported redb file format {v}"),
        },
        other => StoreError::Db(other.into()),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pg_tests;
#[cfg(test)]
mod seam_tests;
#[cfg(test)]
#[allow(dead_code)] // the harness serves the end-to-end tests too
#[path = "../../../tests/src/postgres.rs"]
pub(crate) mod test_pg;

/// Settings for a store on the test server's database `db`.
#[cfg(test)]
pub(crate) fn test_pg_settings(db: &test_pg::PgDatabase) -> StoreSettings {
    StoreSettings {
        backend: Backend::Postgres,
        url: Some(DatabaseUrl::new(db.url())),
        timeout: std::time::Duration::from_secs(20),
        ..StoreSettings::default()
    }
}

/// A store on `db` (one replica of a test deployment), with the data
/// directory that must outlive it.
#[cfg(test)]
pub(crate) fn open_test_pg(db: &test_pg::PgDatabase) -> (Arc<Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open_with(dir.path(), "test", &test_pg_settings(db)).expect("open PostgreSQL");
    (store, dir)
}
