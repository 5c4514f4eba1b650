//! Every schema version of Latchkey's redb database and the forward migrations
//! between them.
//!
//! A reader who wants to know what the database looked like at version N reads
//! the module `vN` (its tables, frozen as they were) and `README.md` beside this
//! crate. Migrations are plain functions that run inside the one write
//! transaction that also bumps the stored schema version, so a crash part-way
//! through leaves the previous version intact (redb commits atomically).
//!
//! Every table is a byte table (`&[u8] -> &[u8]`); the encoding of keys and
//! values is what a schema version pins down. Byte tables let backups and
//! restores copy a database generically, table by table.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

pub mod postgres;
pub mod v1;
pub mod v2;
pub mod v3;
pub mod v4;

/// The type every table has: encoded key to encoded value.
pub type ByteTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Holds `schema_version` and other single values. Present in every version.
pub const META: ByteTable = TableDefinition::new("meta");

/// Key in [`META`] under which the schema version is stored, as a u32 LE.
pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// One forward step: migrates a database at `from` to `from + 1`.
pub struct Migration {
    pub from: u32,
    pub name: &'static str,
    pub run: fn(&WriteTransaction) -> Result<(), redb::Error>,
}

/// The migrations of released schema versions, in order. Version 0 is "empty
/// file"; migration `i` moves version `i` to `i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 0,
        name: "initial: meta, vault_records, vault_names",
        run: v1::create,
    },
    Migration {
        from: 1,
        name: "accounts: users, sessions, tokens, API keys, invites, audit",
        run: v2::migrate,
    },
    Migration {
        from: 2,
        name: "proxy usage and key limits; OAuth connections",
        run: v3::migrate,
    },
    Migration {
        from: 3,
        name: "index of sessions and tokens by user, session and family",
        run: v4::migrate,
    },
];

/// The schema version this build writes.
pub const CURRENT_VERSION: u32 = MIGRATIONS.len() as u32;

/// Why a database could not be brought to the current version.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the database has schema version {found}, newer than this build of Latchkey understands \
         ({supported}); upgrade Latchkey, or restore a backup taken by this version"
    )]
    TooNew { found: u32, supported: u32 },
    #[error("the stored schema version is malformed ({0} bytes); the database is damaged")]
    MalformedVersion(usize),
    #[error("migration {from}->{to} ({name}) failed: {source}")]
    Step {
        from: u32,
        to: u32,
        name: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("database error during migration: {0}")]
    Db(#[from] redb::Error),
}

/// Reads the stored schema version (0 for a database without one).
pub fn read_version(txn: &WriteTransaction) -> Result<u32, MigrateError> {
    let meta = txn.open_table(META).map_err(redb::Error::from)?;
    let stored = meta.get(SCHEMA_VERSION_KEY).map_err(redb::Error::from)?;
    match stored {
        None => Ok(0),
        Some(v) => {
            let bytes = v.value();
            let arr: [u8; 4] = bytes
                .try_into()
                .map_err(|_| MigrateError::MalformedVersion(bytes.len()))?;
            Ok(u32::from_le_bytes(arr))
        }
    }
}

fn write_version(txn: &WriteTransaction, version: u32) -> Result<(), redb::Error> {
    let mut meta = txn.open_table(META)?;
    meta.insert(SCHEMA_VERSION_KEY, version.to_le_bytes().as_slice())?;
    Ok(())
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub from: u32,
    pub to: u32,
}

/// Brings the database in `txn` to the newest version in `migrations`.
///
/// Runs inside the caller's write transaction: the caller commits (everything
/// at once) or drops it (nothing happened). A database newer than the list is
/// refused before anything is written.
pub fn migrate_with(
    txn: &WriteTransaction,
    migrations: &[Migration],
) -> Result<Outcome, MigrateError> {
    let supported = migrations.len() as u32;
    let found = read_version(txn)?;
    if found > supported {
        return Err(MigrateError::TooNew { found, supported });
    }
    for m in &migrations[found as usize..] {
        (m.run)(txn).map_err(|source| MigrateError::Step {
            from: m.from,
            to: m.from + 1,
            name: m.name,
            source,
        })?;
    }
    if found != supported {
        write_version(txn, supported)?;
    }
    Ok(Outcome {
        from: found,
        to: supported,
    })
}

/// [`migrate_with`] on the released [`MIGRATIONS`].
pub fn migrate(txn: &WriteTransaction) -> Result<Outcome, MigrateError> {
    migrate_with(txn, MIGRATIONS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase};

    fn failing(_: &WriteTransaction) -> Result<(), redb::Error> {
        Err(redb::Error::Corrupted("injected failure".into()))
    }

    fn version_of(db: &Database) -> u32 {
        let txn = db.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        let v = meta.get(SCHEMA_VERSION_KEY).expect("get").expect("present");
        u32::from_le_bytes(v.value().try_into().expect("4 bytes"))
    }

    #[test]
    fn fresh_database_reaches_current_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("t.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        let out = migrate(&txn).expect("migrate");
        txn.commit().expect("commit");
        assert_eq!(
            out,
            Outcome {
                from: 0,
                to: CURRENT_VERSION
            }
        );
        assert_eq!(version_of(&db), CURRENT_VERSION);
    }

    #[test]
    fn failed_step_leaves_previous_version_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("t.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        migrate(&txn).expect("migrate");
        txn.commit().expect("commit");

        let with_broken_step: Vec<Migration> = MIGRATIONS
            .iter()
            .map(|m| Migration {
                from: m.from,
                name: m.name,
                run: m.run,
            })
            .chain(std::iter::once(Migration {
                from: CURRENT_VERSION,
                name: "broken",
                run: |txn| {
                    // Writes something, then fails: none of it may stick.
                    let mut t = txn.open_table(v1::VAULT_NAMES)?;
                    t.insert(b"half-written".as_slice(), b"x".as_slice())?;
                    failing(txn)
                },
            }))
            .collect();
        let txn = db.begin_write().expect("write");
        let err = migrate_with(&txn, &with_broken_step).expect_err("must fail");
        assert!(
            matches!(err, MigrateError::Step { name: "broken", .. }),
            "{err}"
        );
        drop(txn); // what a crash does: the transaction never commits

        assert_eq!(version_of(&db), CURRENT_VERSION);
        let r = db.begin_read().expect("read");
        let names = r.open_table(v1::VAULT_NAMES).expect("table");
        assert!(
            names
                .get(b"half-written".as_slice())
                .expect("get")
                .is_none()
        );
    }

    #[test]
    fn newer_database_is_refused_without_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("t.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        migrate(&txn).expect("migrate");
        write_version(&txn, CURRENT_VERSION + 7).expect("bump");
        txn.commit().expect("commit");

        let txn = db.begin_write().expect("write");
        let err = migrate(&txn).expect_err("must refuse");
        assert!(
            matches!(err, MigrateError::TooNew { found, .. } if found == CURRENT_VERSION + 7),
            "{err}"
        );
        assert!(err.to_string().contains("newer than this build"));
    }
}
