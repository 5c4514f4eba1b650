//! `latchkey store migrate`: moving a whole installation's store to
//! another backend — an embedded data directory into PostgreSQL, or back —
//! with proof that nothing was lost or changed on the way.
//!
//! - The source is the configured store, opened by the caller with the data
//!   directory's lock (so a running server makes the command refuse, as
//!   other offline commands do).
//! - The destination holds no installation, or nothing happens: a
//!   PostgreSQL database whose tables are empty (creating its schema writes
//!   only the schema version), or a directory without a database file. The
//!   check for PostgreSQL is made again inside the destination's write
//!   transaction, which excludes every other writer of that database.
//! - Every table is copied in that one write transaction
//!   ([`copy_tables`]); after the commit both stores are read again
//!   ([`digest_tables`]) and must agree table by table, row counts and
//!   SHA-256 of the rows, or the migration is reported failed.
//! - A directory destination is built in a staging directory inside it and
//!   linked into place only once verified, never over an existing file.
//!
//! A PostgreSQL URL may carry a password: it is never printed (only
//! [`DatabaseUrl::redacted`]), and one given on the command line is refused
//! (every local user can read a process's arguments); the password comes
//! from `PGPASSWORD` instead.

use super::copy::{CopyReport, copy_tables, digest_tables};
use super::{Backend, DatabaseUrl, StoreSettings};
use super::{DB_FILE, META, Store, StoreError, table_name};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where `store migrate --to` copies to.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A PostgreSQL database (the settings to open it with).
    Postgres(StoreSettings),
    /// A data directory for the embedded store.
    Directory(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the PostgreSQL URL given to --to holds a password, which every user of this machine \
         can read in the process list; give the URL without it and the password in PGPASSWORD"
    )]
    PasswordInArgument,
    #[error("--to {0}: {1}")]
    BadUrl(String, String),
    #[error(
        "{0} already holds data ({1}); `store migrate` copies only into an empty database. \
         Nothing was changed"
    )]
    NotEmpty(String, String),
    #[error(
        "{0} already holds a database ({DB_FILE}); choose a directory without one. Nothing \
         was changed"
    )]
    DirectoryInUse(PathBuf),
    #[error("the destination is the store being migrated")]
    SameStore,
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the copy in {destination} does not match its source ({detail}); {advice}")]
    Mismatch {
        destination: String,
        detail: String,
        advice: &'static str,
    },
}

/// What a migration copied, proven by reading both stores again.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// Every table copied: rows and digest, equal on both sides.
    pub report: CopyReport,
    /// The destination, printable (a PostgreSQL URL without its password).
    pub destination: String,
}

impl Destination {
    /// `--to` as the user wrote it: a PostgreSQL URL (`postgres://…`,
    /// `postgresql://…`, or libpq's `key=value` form), else a directory.
    /// `base` gives the PostgreSQL options (`PGPASSWORD`, pool, timeout, CA)
    /// of the current configuration.
    pub fn parse(to: &str, base: &StoreSettings) -> Result<Destination, MigrateStoreError> {
        // libpq's form starts with `keyword=`; a directory never needs to.
        let keyword_form = to.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        });
        let looks_like_url =
            to.starts_with("postgres://") || to.starts_with("postgresql://") || keyword_form;
        if !looks_like_url {
            return Ok(Destination::Directory(PathBuf::from(to)));
        }
        let url = DatabaseUrl::new(to);
        // Whether the URL itself names a password: checked with no
        // PGPASSWORD, so only the URL's own can be found.
        let bare = StoreSettings {
            backend: Backend::Postgres,
            url: Some(url.clone()),
            env_password: None,
            ..base.clone()
        };
        let config = super::postgres::check_url(&url, &bare)
            .map_err(|e| MigrateStoreError::BadUrl(url.redacted(), e))?;
        if config.get_password().is_some() {
            return Err(MigrateStoreError::PasswordInArgument);
        }
        Ok(Destination::Postgres(StoreSettings {
            env_password: base.env_password.clone(),
            ..bare
        }))
    }

    /// The destination, printable.
    pub fn describe(&self) -> String {
        match self {
            Destination::Postgres(s) => s
                .url
                .as_ref()
                .map_or_else(|| "PostgreSQL".to_string(), DatabaseUrl::redacted),
            Destination::Directory(d) => d.display().to_string(),
        }
    }
}

/// Rows of table `name` that a fresh store does not have: all of them,
/// except the schema version in `meta`.
fn installed_rows(name: &str, t: &super::Table<'_>) -> Result<u64, StoreError> {
    if name != table_name(&META) {
        return t.len();
    }
    let mut n = 0u64;
    for row in t.iter()? {
        let (k, _) = row?;
        if k.value() != latchkey_migrations::SCHEMA_VERSION_KEY {
            n += 1;
        }
    }
    Ok(n)
}

/// What `txn` holds beyond a fresh store, if anything (for the refusal).
fn installation_rows(txn: &super::ReadTxn) -> Result<Option<String>, StoreError> {
    let mut found = Vec::new();
    for name in txn.table_names()? {
        let rows = installed_rows(&name, &txn.open_named(&name)?)?;
        if rows > 0 {
            found.push(format!("{name}: {rows} rows"));
        }
    }
    Ok((!found.is_empty()).then(|| found.join(", ")))
}

/// Called with the destination once the copy is verified (the caller's
/// audit entry), before the store is closed.
pub type Record<'a> = &'a dyn Fn(&Store, &Migrated) -> Result<(), StoreError>;

/// Copies every table of `source` into `to`, verified (module docs).
pub fn migrate(
    source: &Store,
    to: &Destination,
    record: Record<'_>,
) -> Result<Migrated, MigrateStoreError> {
    match to {
        Destination::Postgres(settings) => into_postgres(source, settings, record),
        Destination::Directory(dir) => into_directory(source, dir, record),
    }
}

fn into_postgres(
    source: &Store,
    settings: &StoreSettings,
    record: Record<'_>,
) -> Result<Migrated, MigrateStoreError> {
    let described = settings
        .url
        .as_ref()
        .map_or_else(String::new, DatabaseUrl::redacted);
    // The destination's process lock lives beside the source's (a store
    // is always opened with a data directory); removed afterwards.
    let lock_dir = source.dir().join(".migrate-destination");
    let result = (|| {
        let dest = Store::open_with(&lock_dir, "store-migrate", settings)?;
        if let Some(found) = installation_rows(&dest.begin_read()?)? {
            return Err(MigrateStoreError::NotEmpty(described.clone(), found));
        }
        let migrated = copy_verified(source, &dest, &described)?;
        record(&dest, &migrated)?;
        Ok(migrated)
    })();
    let _ = std::fs::remove_dir_all(&lock_dir);
    result
}

fn into_directory(
    source: &Store,
    dir: &Path,
    record: Record<'_>,
) -> Result<Migrated, MigrateStoreError> {
    let described = dir.display().to_string();
    let target = dir.join(DB_FILE);
    if target.exists() {
        return Err(if !source.is_shared() && same_dir(source.dir(), dir) {
            MigrateStoreError::SameStore
        } else {
            MigrateStoreError::DirectoryInUse(dir.to_path_buf())
        });
    }
    super::ensure_data_dir(dir)?;
    let staging = dir.join(".latchkey-migrate");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrateStoreError::Io { path, source }
    };
    if staging.exists() {
        // Left by a migration that failed before it finished: never used.
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    let result = (|| {
        let migrated = {
            let dest = Store::open(&staging, "store-migrate")?;
            let migrated = copy_verified(source, &dest, &described)?;
            record(&dest, &migrated)?;
            migrated
        };
        // Into place only if nothing appeared meanwhile (a link fails
        // rather than replace), and durably.
        std::fs::hard_link(staging.join(DB_FILE), &target).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                MigrateStoreError::DirectoryInUse(dir.to_path_buf())
            } else {
                MigrateStoreError::Io {
                    path: target.clone(),
                    source: e,
                }
            }
        })?;
        crate::private_fs::sync_dir(dir).map_err(io(dir))?;
        Ok(migrated)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The copy in one write transaction of `dest`, then both sides read
/// again and compared.
fn copy_verified(
    source: &Store,
    dest: &Arc<Store>,
    described: &str,
) -> Result<Migrated, MigrateStoreError> {
    let from = source.begin_read()?;
    let to = dest.begin_write()?;
    // Again, under the destination's write lock: nothing may have been
    // written into the tables the copy replaces since the first look.
    for name in from.table_names()? {
        let rows = installed_rows(&name, &to.open_named(&name)?)?;
        if rows > 0 {
            return Err(MigrateStoreError::NotEmpty(
                described.to_string(),
                format!("{name}: {rows} rows"),
            ));
        }
    }
    let report = copy_tables(&from, &to)?;
    to.commit()?;
    drop(from);

    let again = digest_tables(&source.begin_read()?)?;
    if again != report {
        return Err(MigrateStoreError::Mismatch {
            destination: described.to_string(),
            detail: differences(&report, &again),
            advice: "the source changed during the copy: stop every server using it and \
                     migrate into an empty database again",
        });
    }
    let problems = report.differences(&digest_tables(&dest.begin_read()?)?);
    if !problems.is_empty() {
        return Err(MigrateStoreError::Mismatch {
            destination: described.to_string(),
            detail: problems.join("; "),
            advice: "do not use the destination; the source is unchanged",
        });
    }
    Ok(Migrated {
        report,
        destination: described.to_string(),
    })
}

/// The tables whose count or digest differ between two reports.
fn differences(a: &CopyReport, b: &CopyReport) -> String {
    let mut out = Vec::new();
    for t in &a.tables {
        match b.table(&t.name) {
            Some(u) if u == t => {}
            Some(u) => out.push(format!("{}: {} rows, then {}", t.name, t.rows, u.rows)),
            None => out.push(format!("{}: gone", t.name)),
        }
    }
    for u in &b.tables {
        if a.table(&u.name).is_none() {
            out.push(format!("{}: new", u.name));
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn parse(to: &str) -> Result<Destination, MigrateStoreError> {
        Destination::parse(to, &StoreSettings::default())
    }

    #[test]
    fn urls_and_directories_are_told_apart() {
        for url in [
            "postgres://lk@db.internal:5432/latchkey",
            "postgresql://lk@db.internal/latchkey?sslmode=require",
            "host=/run/postgresql port=5432 user=lk dbname=latchkey",
        ] {
            assert!(matches!(parse(url), Ok(Destination::Postgres(_))), "{url}");
        }
        for dir in ["/var/lib/latchkey-new", "./new", "relative/dir", "./a=b"] {
            assert!(
                matches!(parse(dir), Ok(Destination::Directory(ref d)) if d == Path::new(dir)),
                "{dir}"
            );
        }
    }

    #[test]
    fn a_password_on_the_command_line_is_refused_and_never_shown() {
        for url in [
            "postgres://lk:s3cret-pw@db.internal/latchkey",
            "postgres://lk@db.internal/latchkey?password=s3cret-pw",
            "host=db.internal user=lk password=s3cret-pw dbname=latchkey",
        ] {
            let err = parse(url).expect_err(url);
            assert!(
                matches!(err, MigrateStoreError::PasswordInArgument),
                "{url}: {err}"
            );
            assert!(!err.to_string().contains("s3cret-pw"));
        }
        // PGPASSWORD is the way: kept for the connection, not refused.
        let base = StoreSettings {
            env_password: Some(super::super::Password("from-env".to_string().into())),
            ..StoreSettings::default()
        };
        let to = Destination::parse("postgres://lk@db.internal/latchkey", &base).expect("parse");
        let Destination::Postgres(s) = &to else {
            panic!("not PostgreSQL")
        };
        assert!(s.env_password.is_some());
        assert_eq!(s.backend, Backend::Postgres);
        assert_eq!(to.describe(), "postgres://lk@db.internal:5432/latchkey");
        assert!(!format!("{to:?}").contains("from-env"));
    }

    fn filled() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("data"), "test").expect("open");
        let txn = store.begin_write().expect("write");
        {
            let mut t = txn.open_named("users").expect("users");
            t.insert(b"u1", b"row one").expect("insert");
            t.insert(b"u2", b"row two").expect("insert");
            let mut m = txn.open_table(META).expect("meta");
            m.insert(b"wrapped_data_key", b"sealed").expect("insert");
        }
        txn.commit().expect("commit");
        (dir, store)
    }

    #[test]
    fn into_a_new_directory_copies_verifies_and_records() {
        let (tmp, source) = filled();
        let to = tmp.path().join("moved");
        let calls = Cell::new(0);
        let record = |s: &Store, m: &Migrated| {
            calls.set(calls.get() + 1);
            assert_eq!(m.report.table("users").map(|t| t.rows), Some(2));
            // The destination is open and readable here.
            assert_eq!(s.begin_read()?.open_named("users")?.len()?, 2);
            Ok(())
        };
        let migrated =
            migrate(&source, &Destination::Directory(to.clone()), &record).expect("migrate");
        assert_eq!(calls.get(), 1);
        assert_eq!(migrated.destination, to.display().to_string());
        assert!(
            !to.join(".latchkey-migrate").exists(),
            "staging left behind"
        );
        let want = digest_tables(&source.begin_read().expect("read")).expect("digest");
        drop(source);
        let copy = Store::open(&to, "test").expect("open the copy");
        let got = digest_tables(&copy.begin_read().expect("read")).expect("digest");
        for t in &want.tables {
            assert_eq!(got.table(&t.name), Some(t), "{}", t.name);
        }
        assert_eq!(migrated.report, want);
    }

    #[test]
    fn a_directory_with_a_database_is_refused_unchanged() {
        let (tmp, source) = filled();
        let (other_tmp, other) = filled();
        let other_dir = other.dir().to_path_buf();
        drop(other);
        let before = std::fs::read(other_dir.join(DB_FILE)).expect("read");
        let record = |_: &Store, _: &Migrated| -> Result<(), StoreError> {
            panic!("nothing may be recorded for a refused migration")
        };
        let err = migrate(&source, &Destination::Directory(other_dir.clone()), &record)
            .expect_err("refused");
        assert!(matches!(err, MigrateStoreError::DirectoryInUse(_)), "{err}");
        assert_eq!(
            std::fs::read(other_dir.join(DB_FILE)).expect("read"),
            before
        );
        // Onto itself: named as such.
        let own = source.dir().to_path_buf();
        let err = migrate(&source, &Destination::Directory(own), &record).expect_err("refused");
        assert!(matches!(err, MigrateStoreError::SameStore), "{err}");
        drop((tmp, other_tmp));
    }
}
