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
//!   redb): what the rows mean. An empty database gets
//!   [`CURRENT_VERSION`]; a newer one is refused with the same error as a
//!   newer redb file.

use super::PgError;
use super::pool::{Pooled, wait};
use super::txn::WRITER_LOCK;
use crate::store::StoreError;
use latchkey_migrations::postgres::{SQL_MIGRATIONS, SQL_VERSION};
use latchkey_migrations::{CURRENT_VERSION, META, MigrateError, SCHEMA_VERSION_KEY};
use redb::TableHandle;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

/// The advisory lock openers take (two-int key space, beside the writer's).
const SCHEMA_LOCK: (i32, i32) = (0x4c4b_0001, 2);

/// Migrates the database behind `conn`; the logical version it had.
pub(super) fn migrate(mut conn: Pooled) -> Result<u32, StoreError> {
    let client = conn.client()?;
    let result = migrate_in(client);
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

fn migrate_in(client: &Client) -> Result<u32, StoreError> {
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
    logical_version(client)
}

/// Checks (or, on an empty database, sets) the logical schema version.
fn logical_version(client: &Client) -> Result<u32, StoreError> {
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
        let version = CURRENT_VERSION.to_le_bytes().to_vec();
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
    if found > CURRENT_VERSION {
        return Err(MigrateError::TooNew {
            found,
            supported: CURRENT_VERSION,
        }
        .into());
    }
    if found < CURRENT_VERSION {
        return Err(PgError::TooOld {
            found,
            current: CURRENT_VERSION,
        }
        .into());
    }
    Ok(found)
}
