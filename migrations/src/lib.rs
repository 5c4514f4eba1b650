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
//!
//! Two kinds of step ([`Step`]): the released v1–v4 are redb functions
//! (they shaped redb files; every PostgreSQL database starts at v4), and
//! every later one is written against [`Tables`], so it migrates both
//! backends ([`migrate_with`] on redb, [`migrate_tables`] on any other).

use redb::{ReadableTable, TableDefinition, TableHandle as _, WriteTransaction};

pub mod postgres;
pub mod tables;
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

pub use tables::{RedbTables, StepError, Tables};

/// One forward step: migrates a database at `from` to `from + 1`.
#[derive(Clone, Copy)]
pub struct Migration {
    pub from: u32,
    pub name: &'static str,
    pub run: Step,
}

impl Migration {
    /// The error for this step failing with `source`.
    fn failed(&self, source: StepError) -> MigrateError {
        MigrateError::Step {
            from: self.from,
            to: self.from + 1,
            name: self.name,
            source,
        }
    }
}

/// What a step is written against.
#[derive(Clone, Copy)]
pub enum Step {
    /// A released redb-only step (v1–v4). A database that still needs one
    /// can only be a redb file.
    Redb(fn(&WriteTransaction) -> Result<(), redb::Error>),
    /// A step over [`Tables`]: runs on every backend. Every step from v5 on.
    Tables(fn(&dyn Tables) -> Result<(), StepError>),
}

/// The first version every backend can be migrated from: the version the
/// last [`Step::Redb`] step leads to.
pub const FIRST_NEUTRAL_VERSION: u32 = 4;

/// The migrations of released schema versions, in order. Version 0 is "empty
/// file"; migration `i` moves version `i` to `i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 0,
        name: "initial: meta, vault_records, vault_names",
        run: Step::Redb(v1::create),
    },
    Migration {
        from: 1,
        name: "accounts: users, sessions, tokens, API keys, invites, audit",
        run: Step::Redb(v2::migrate),
    },
    Migration {
        from: 2,
        name: "proxy usage and key limits; OAuth connections",
        run: Step::Redb(v3::migrate),
    },
    Migration {
        from: 3,
        name: "index of sessions and tokens by user, session and family",
        run: Step::Redb(v4::migrate),
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
        source: StepError,
    },
    #[error(
        "the database has schema version {found}; this backend can be migrated only from version \
         {first} on (older versions exist only as redb files: migrate the file with this build, \
         then `latchkey store migrate`)"
    )]
    OnlyOnRedb { found: u32, first: u32 },
    #[error("database error during migration: {0}")]
    Db(#[from] redb::Error),
    #[error("database error during migration: {0}")]
    Tables(String),
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
        let ran = match m.run {
            Step::Redb(run) => run(txn).map_err(StepError::from),
            Step::Tables(run) => run(&RedbTables(txn)),
        };
        ran.map_err(|source| m.failed(source))?;
    }
    if found != supported {
        write_version(txn, supported)?;
    }
    Ok(Outcome {
        from: found,
        to: supported,
    })
}

/// Brings a database seen through [`Tables`] (any backend) from its stored
/// version to the newest in `migrations`, inside the caller's write
/// transaction, exactly as [`migrate_with`] does on redb. A database without
/// a stored version, or below [`FIRST_NEUTRAL_VERSION`], needs a
/// [`Step::Redb`] step and is refused before anything is written; so is a
/// newer one.
pub fn migrate_tables(
    tables: &dyn Tables,
    migrations: &[Migration],
) -> Result<Outcome, MigrateError> {
    let supported = migrations.len() as u32;
    let found = match tables
        .get(META.name(), SCHEMA_VERSION_KEY)
        .map_err(|e| MigrateError::Tables(e.0))?
    {
        None => 0,
        Some(bytes) => {
            let arr: [u8; 4] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| MigrateError::MalformedVersion(bytes.len()))?;
            u32::from_le_bytes(arr)
        }
    };
    if found > supported {
        return Err(MigrateError::TooNew { found, supported });
    }
    let steps = &migrations[found as usize..];
    if steps.iter().any(|m| matches!(m.run, Step::Redb(_))) {
        return Err(MigrateError::OnlyOnRedb {
            found,
            first: FIRST_NEUTRAL_VERSION,
        });
    }
    for m in steps {
        if let Step::Tables(run) = m.run {
            run(tables).map_err(|source| m.failed(source))?;
        }
    }
    if found != supported {
        tables
            .insert(META.name(), SCHEMA_VERSION_KEY, &supported.to_le_bytes())
            .map_err(|e| MigrateError::Tables(e.0))?;
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
                run: Step::Redb(|txn| {
                    // Writes something, then fails: none of it may stick.
                    let mut t = txn.open_table(v1::VAULT_NAMES)?;
                    t.insert(b"half-written".as_slice(), b"x".as_slice())?;
                    failing(txn)
                }),
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

    /// A test-only v5 over [`Tables`]: copies every `vault_names` row into
    /// a new table with its value reversed, and removes the `k0` row.
    fn neutral_v5(t: &dyn Tables) -> Result<(), StepError> {
        for (k, v) in t.rows("vault_names")? {
            let mut r = v.clone();
            r.reverse();
            t.insert("v5_reversed", &k, &r)?;
        }
        t.remove("vault_names", b"k0")?;
        Ok(())
    }

    fn with_v5() -> Vec<Migration> {
        let mut list = MIGRATIONS.to_vec();
        list.push(Migration {
            from: CURRENT_VERSION,
            name: "test: neutral v5",
            run: Step::Tables(neutral_v5),
        });
        list
    }

    #[test]
    fn a_neutral_step_runs_on_redb_through_both_entry_points() {
        for through_tables in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = Database::create(dir.path().join("t.redb")).expect("create");
            let txn = db.begin_write().expect("write");
            migrate(&txn).expect("to v4");
            {
                let mut t = txn.open_table(v1::VAULT_NAMES).expect("names");
                t.insert(b"k0".as_slice(), b"ab".as_slice()).expect("row");
                t.insert(b"k1".as_slice(), b"cd".as_slice()).expect("row");
            }
            txn.commit().expect("commit");
            let txn = db.begin_write().expect("write");
            let out = if through_tables {
                migrate_tables(&RedbTables(&txn), &with_v5()).expect("v5")
            } else {
                migrate_with(&txn, &with_v5()).expect("v5")
            };
            txn.commit().expect("commit");
            assert_eq!(out, Outcome { from: 4, to: 5 });
            assert_eq!(version_of(&db), 5);
            let txn = db.begin_read().expect("read");
            let t = txn.open_table(TableDefinition::<&[u8], &[u8]>::new("v5_reversed"));
            let t = t.expect("new table");
            assert_eq!(
                t.get(b"k0".as_slice()).expect("get").expect("k0").value(),
                b"ba"
            );
            assert_eq!(
                t.get(b"k1".as_slice()).expect("get").expect("k1").value(),
                b"dc"
            );
            let names = txn.open_table(v1::VAULT_NAMES).expect("names");
            assert!(names.get(b"k0".as_slice()).expect("get").is_none());
        }
    }

    #[test]
    fn migrate_tables_refuses_a_database_that_needs_a_redb_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("t.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        migrate_with(&txn, &MIGRATIONS[..3]).expect("to v3");
        txn.commit().expect("commit");
        let txn = db.begin_write().expect("write");
        let err =
            migrate_tables(&RedbTables(&txn), &with_v5()).expect_err("v3 needs v4's redb step");
        assert!(
            matches!(err, MigrateError::OnlyOnRedb { found: 3, first: 4 }),
            "{err}"
        );
        drop(txn);
        assert_eq!(version_of(&db), 3);
        // And a newer one is refused as on redb.
        let txn = db.begin_write().expect("write");
        migrate(&txn).expect("to v4");
        RedbTables(&txn)
            .insert("meta", SCHEMA_VERSION_KEY, &9u32.to_le_bytes())
            .expect("bump");
        let err = migrate_tables(&RedbTables(&txn), &with_v5()).expect_err("too new");
        assert!(
            matches!(
                err,
                MigrateError::TooNew {
                    found: 9,
                    supported: 5
                }
            ),
            "{err}"
        );
    }
}
