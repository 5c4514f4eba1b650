//! Bringing a PostgreSQL database up to this build's schema at open.
//!
//! Two versions, both checked in one transaction that holds the schema
//! lock (replicas opening together wait for each other) and the writer
//! lock (no write transaction sees a half-migrated database):
//!
//! - the SQL version (`latchkey_schema`): which files of
//!   `latchkey_migrations::postgres` have shaped the SQL tables; missing
//!   ones are applied in order, a newer one is refused;
//! - the logical version (`meta`/`schema_version`, u32 little-endian as in
//!   redb): what the rows mean. An empty database gets the newest version
//!   at once (there is nothing to migrate); an older one is brought up by
//!   the backend-neutral steps (`latchkey_migrations::Step::Tables`, every
//!   step from v5 on) run through the store's own [`WriteTxn`], in the same
//!   transaction, so the rows, the SQL and the version change together or
//!   not at all; one older than the first such step (impossible: every
//!   PostgreSQL database was created at v4 or later) and a newer one are
//!   refused with the same errors as a redb file.

use super::PgError;
use super::pool::{Pooled, wait};
use super::txn::WRITER_LOCK;
use crate::store::StoreError;
use crate::store::kv::WriteTxn;
use latchkey_migrations::postgres::{SQL_MIGRATIONS, SQL_VERSION};
use latchkey_migrations::{META, MigrateError, Migration, SCHEMA_VERSION_KEY};
use redb::TableHandle;
use std::sync::Arc;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

/// The advisory lock openers take (two-int key space, beside the writer's).
const SCHEMA_LOCK: (i32, i32) = (0x4c4b_0001, 2);

/// Migrates the database behind `conn` to the newest of `migrations`; the
/// logical version it had (0: it was empty).
pub(super) fn migrate(
    mut conn: Pooled,
    origin: Arc<str>,
    migrations: &[Migration],
) -> Result<u32, StoreError> {
    let client = conn.client()?;
    let newest = migrations.len() as u32;
    let result = migrate_in(client, newest);
    if let Ok(found) = result
        && found != 0
        && found < newest
    {
        // The logical steps, inside the transaction that holds both locks;
        // the store's transaction type ends it (a rollback on drop), and
        // its commit tells the other replicas what changed.
        let txn = WriteTxn::postgres(super::Txn::adopt_write(conn, origin));
        latchkey_migrations::migrate_tables(&txn, migrations)?;
        txn.commit()?;
        tracing::info!(
            from = found,
            to = newest,
            "PostgreSQL logical schema migrated"
        );
        return Ok(found);
    }
    // Commit on success; any failure rolls everything back (if even that
    // fails, closing the connection does).
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = wait(client.batch_execute(end)).map_err(PgError::from);
    if ended.is_err() {
        conn.discard();
    }
    let from = result?;
    ended?;
    Ok(from)
}

fn migrate_in(client: &Client, newest: u32) -> Result<u32, StoreError> {
    let batch = |sql: &str| wait(client.batch_execute(sql)).map_err(PgError::from);
    batch(&format!(
        "BEGIN; \
         SELECT pg_advisory_xact_lock({}, {}); \
         SELECT pg_advisory_xact_lock({}, {}); \
         CREATE TABLE IF NOT EXISTS latchkey_schema (\
             version integer PRIMARY KEY, \
             name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now())",
        SCHEMA_LOCK.0, SCHEMA_LOCK.1, WRITER_LOCK.0, WRITER_LOCK.1
    ))?;
    let rows =
        wait(client.query_typed("SELECT coalesce(max(version), 0) FROM latchkey_schema", &[]))
            .map_err(PgError::from)?;
    let found: i32 = match rows.first() {
        Some(r) => r.try_get(0).map_err(PgError::from)?,
        None => 0,
    };
    let found = u32::try_from(found).unwrap_or(0);
    if found > SQL_VERSION {
        return Err(PgError::SqlTooNew {
            found,
            supported: SQL_VERSION,
        }
        .into());
    }
    for m in &SQL_MIGRATIONS[found as usize..] {
        batch(m.sql)?;
        let version = i32::try_from(m.version).unwrap_or(i32::MAX);
        wait(client.query_typed(
            "INSERT INTO latchkey_schema (version, name) VALUES ($1, $2)",
            &[(&version, Type::INT4), (&m.name, Type::TEXT)],
        ))
        .map_err(PgError::from)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "PostgreSQL schema applied"
        );
    }
    logical_version(client, newest)
}

/// Reads the logical schema version (on an empty database, sets it to
/// `newest` and reports 0); a newer one than `newest` is refused.
fn logical_version(client: &Client, newest: u32) -> Result<u32, StoreError> {
    let meta = META.name().to_string();
    let rows = wait(client.query_typed(
        "SELECT v FROM latchkey_kv WHERE tbl = $1 AND k = $2",
        &[(&meta, Type::TEXT), (&SCHEMA_VERSION_KEY, Type::BYTEA)],
    ))
    .map_err(PgError::from)?;
    let stored: Option<Vec<u8>> = match rows.first() {
        Some(r) => Some(r.try_get(0).map_err(PgError::from)?),
        None => None,
    };
    let Some(bytes) = stored else {
        let any = wait(client.query_typed("SELECT 1 FROM latchkey_kv LIMIT 1", &[]))
            .map_err(PgError::from)?;
        if !any.is_empty() {
            return Err(PgError::NoVersion.into());
        }
        let version = newest.to_le_bytes().to_vec();
        wait(client.query_typed(
            "INSERT INTO latchkey_kv (tbl, k, v) VALUES ($1, $2, $3)",
            &[
                (&meta, Type::TEXT),
                (&SCHEMA_VERSION_KEY, Type::BYTEA),
                (&version, Type::BYTEA),
            ],
        ))
        .map_err(PgError::from)?;
        return Ok(0);
    };
    let arr: [u8; 4] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| MigrateError::MalformedVersion(bytes.len()))?;
    let found = u32::from_le_bytes(arr);
    if found > newest {
        return Err(MigrateError::TooNew {
            found,
            supported: newest,
        }
        .into());
    }
    Ok(found)
}
