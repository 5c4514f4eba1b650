//! Looking at a PostgreSQL database without opening it as a store
//! (`latchkey self-check`): a new build checks it can reach the shared
//! database and read its schema while the old replicas still run, so
//! nothing is written — no schema is created or migrated, no lock taken —
//! and no change feed is started. One connection, one read-only snapshot.

use super::pool::wait;
use super::{PgError, config, tls};
use crate::store::settings::StoreSettings;
use crate::store::{META, StoreError};
use latchkey_migrations::postgres::SQL_VERSION;
use latchkey_migrations::{
    CURRENT_VERSION, FIRST_NEUTRAL_VERSION, MigrateError, SCHEMA_VERSION_KEY,
};
use redb::TableHandle;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

/// What a database holds, read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgPeek {
    /// `postgres://user@host:port/database` (no password).
    pub target: String,
    /// The SQL schema's version (`latchkey_schema`); `None`: no Latchkey
    /// schema yet (an empty database, made by the first replica's open).
    pub sql_version: Option<u32>,
    /// The logical schema version (`meta`/`schema_version`), if recorded.
    pub logical_version: Option<u32>,
    /// The `meta` value the caller asked for, if present.
    pub meta_value: Option<Vec<u8>>,
}

/// Reads the database `settings` names: its schema versions and the `meta`
/// row `meta_key`. Fails if it cannot be reached (the error names the
/// target, never the password), and with the errors opening it would give
/// when its SQL or logical schema is one this build cannot serve.
pub fn peek(settings: &StoreSettings, meta_key: &[u8]) -> Result<PgPeek, StoreError> {
    let url = settings.url.as_ref().ok_or_else(|| {
        PgError::Url("store.url is required when store.backend = \"postgres\"".into())
    })?;
    let target = url.redacted();
    let origin = format!("peek-{}", hex::encode(rand::random::<[u8; 8]>()));
    let config = config::connection_config(url, settings, &origin)?;
    let tls = tls::make_tls(settings, &config)?;
    // Its own runtime thread, as the store has: the caller may itself be
    // inside a runtime, where blocking on one is not allowed.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("latchkey-peek")
        .enable_all()
        .build()
        .map_err(PgError::Runtime)?;
    let connect_target = target.clone();
    let connected = runtime.spawn(async move {
        let (client, conn) = config
            .connect(tls)
            .await
            .map_err(|source| PgError::Connect {
                target: connect_target,
                source,
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok::<Client, PgError>(client)
    });
    let result = match wait(connected) {
        Ok(Ok(client)) => read(&client, meta_key).map(|(sql, logical, value)| PgPeek {
            target,
            sql_version: sql,
            logical_version: logical,
            meta_value: value,
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(PgError::Closed.into()),
    };
    runtime.shutdown_background();
    result
}

type Read = (Option<u32>, Option<u32>, Option<Vec<u8>>);

fn read(client: &Client, meta_key: &[u8]) -> Result<Read, StoreError> {
    let q = |sql: &str, params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)]| {
        wait(client.query_typed(sql, params)).map_err(PgError::from)
    };
    wait(client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        .map_err(PgError::from)?;
    let exists = q(
        "SELECT to_regclass('latchkey_schema') IS NOT NULL, \
         to_regclass('latchkey_kv') IS NOT NULL",
        &[],
    )?;
    let (has_schema, has_kv): (bool, bool) = match exists.first() {
        Some(r) => (
            r.try_get(0).map_err(PgError::from)?,
            r.try_get(1).map_err(PgError::from)?,
        ),
        None => (false, false),
    };
    let sql = if has_schema {
        let rows = q("SELECT coalesce(max(version), 0) FROM latchkey_schema", &[])?;
        let v: i32 = match rows.first() {
            Some(r) => r.try_get(0).map_err(PgError::from)?,
            None => 0,
        };
        Some(u32::try_from(v).unwrap_or(0))
    } else {
        None
    };
    let meta = META.name().to_string();
    let get = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
        if !has_kv {
            return Ok(None);
        }
        let rows = q(
            "SELECT v FROM latchkey_kv WHERE tbl = $1 AND k = $2",
            &[(&meta, Type::TEXT), (&key, Type::BYTEA)],
        )?;
        match rows.first() {
            Some(r) => Ok(Some(r.try_get(0).map_err(PgError::from)?)),
            None => Ok(None),
        }
    };
    let logical = match get(SCHEMA_VERSION_KEY)? {
        Some(bytes) => {
            let arr: [u8; 4] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| MigrateError::MalformedVersion(bytes.len()))?;
            Some(u32::from_le_bytes(arr))
        }
        None => None,
    };
    let value = get(meta_key)?;
    let _ = wait(client.batch_execute("COMMIT"));
    // What opening would refuse, refused here too (same errors).
    if let Some(found) = sql.filter(|v| *v > SQL_VERSION) {
        return Err(PgError::SqlTooNew {
            found,
            supported: SQL_VERSION,
        }
        .into());
    }
    match logical {
        Some(found) if found > CURRENT_VERSION => Err(MigrateError::TooNew {
            found,
            supported: CURRENT_VERSION,
        }
        .into()),
        // Older than v4 exists only as a redb file; v4 and later are brought
        // up by the next opening (the backend-neutral steps).
        Some(found) if found < FIRST_NEUTRAL_VERSION => Err(MigrateError::OnlyOnRedb {
            found,
            first: FIRST_NEUTRAL_VERSION,
        }
        .into()),
        _ => Ok((sql, logical, value)),
    }
}
