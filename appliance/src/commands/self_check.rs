//! `latchkey self-check`: prints one line a caller can parse, e.g.
//! `self-check ok version=1.2.0 target=x86_64-unknown-linux-gnu schema=4
//! data="schema 4"`. `latchkey update` runs it on a new build while the
//! old server still runs, so it opens nothing for writing and takes no
//! lock.
//!
//! What it checks is the configured store's:
//!
//! - the embedded file: its schema, read without the data directory's
//!   lock, must be one this build can open;
//! - PostgreSQL (`store.backend = "postgres"`): the database is reachable,
//!   its SQL and logical schema are ones this build serves (read in one
//!   read-only snapshot, `latchkey_core::store::peek_postgres`: nothing is
//!   created or migrated), and — when the master key can be loaded without
//!   a person (a key file, a credential, the keyring) — it opens the
//!   vault's data key. The database is named without its password.

use crate::context::Context;
use crate::term::safe;
use anyhow::{Context as _, bail};
use latchkey_core::store::{Backend, SCHEMA_VERSION, SchemaPeek, peek_postgres, peek_schema};
use latchkey_core::update::{TARGET, version};
use latchkey_core::vault::{META_WRAPPED_DATA_KEY, MasterKeySource};
use std::io::Write;

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let data = match ctx.settings.store.backend {
        Backend::Redb => redb_data(ctx)?,
        Backend::Postgres => postgres_data(ctx)?,
    };
    writeln!(
        std::io::stdout(),
        "self-check ok version={} target={TARGET} schema={SCHEMA_VERSION} data=\"{}\"",
        version(),
        safe(&data)
    )?;
    Ok(())
}

/// The data directory's database file, read without the lock.
fn redb_data(ctx: &Context) -> anyhow::Result<String> {
    Ok(
        match peek_schema(&ctx.data_dir)
            .with_context(|| format!("reading the data directory {}", ctx.data_dir.display()))?
        {
            SchemaPeek::Absent => "none yet".to_string(),
            SchemaPeek::InUse => "in use by a running server".to_string(),
            SchemaPeek::Version(v) if v > SCHEMA_VERSION => bail!(
                "the data directory's schema version {v} is newer than this build reads \
                 ({SCHEMA_VERSION})"
            ),
            SchemaPeek::Version(v) => format!("schema {v}"),
        },
    )
}

/// The shared database: reachable, a schema this build serves, and the
/// vault's data key opened by this installation's master key.
fn postgres_data(ctx: &Context) -> anyhow::Result<String> {
    let peek = peek_postgres(&ctx.settings.store, META_WRAPPED_DATA_KEY)?;
    let target = &peek.target;
    let Some(logical) = peek.logical_version else {
        // The first replica's open creates the schema.
        return Ok(format!("{target}: none yet"));
    };
    let source = ctx.source();
    let vault = match &peek.meta_value {
        None => "vault not initialized yet".to_string(),
        Some(_) if matches!(source, MasterKeySource::Passphrase) => {
            "vault sealed by a passphrase (not opened)".to_string()
        }
        Some(wrapped) => {
            let master = source.load().with_context(|| {
                format!(
                    "loading the master key ({}) to open the vault in {target}",
                    source.kind_name()
                )
            })?;
            if master.unwrap(wrapped).is_err() {
                bail!(
                    "the master key ({}) does not open the vault in {target}: this is not the \
                     key the deployment's data was sealed with",
                    source.kind_name()
                );
            }
            "vault opens".to_string()
        }
    };
    Ok(format!("{target}: schema {logical}, {vault}"))
}
