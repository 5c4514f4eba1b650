//! `latchkey store migrate --to URL_OR_DIR`: the configured store copied,
//! verified, into an empty PostgreSQL database or a new data directory
//! (`latchkey_core::store::migrate`), then recorded in the audit log of
//! both stores. Offline only: it opens the store with the data directory's
//! lock, so a running server makes it refuse with that server's PID.

use crate::cli::{MigrateArgs, StoreCommand};
use crate::context::Context;
use crate::term::safe;
use latchkey_core::audit;
use latchkey_core::config::StoreBackend;
use latchkey_core::store::migrate::{self, Destination, Migrated};
use latchkey_core::store::{DB_FILE, Store};
use std::io::Write;

/// Who the audit log names for the commands on this machine.
const HOST_ACTOR: &str = "host";

pub fn run(ctx: &Context, cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Migrate(a) => run_migrate(ctx, &a),
    }
}

fn run_migrate(ctx: &Context, a: &MigrateArgs) -> anyhow::Result<()> {
    let to = Destination::parse(&a.to, &ctx.settings.store)?;
    let store = &ctx.settings.store;
    let from = match store.backend {
        StoreBackend::Redb => ctx.data_dir.join(DB_FILE).display().to_string(),
        StoreBackend::Postgres => store
            .url
            .as_ref()
            .map_or_else(|| "PostgreSQL".to_string(), |u| u.redacted()),
    };
    let source = Store::open_with(&ctx.data_dir, "store-migrate", store)?;
    let record = |s: &Store, m: &Migrated| {
        audit::append(s, audit::store_events::migrated(HOST_ACTOR, &from, m)).map(drop)
    };
    let migrated = migrate::migrate(&source, &to, &record)?;
    // The source records it too: its log says where the data went.
    audit::append(
        &source,
        audit::store_events::migrated(HOST_ACTOR, &from, &migrated),
    )?;
    drop(source);

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Copied {} tables ({} rows) from {} to {}.",
        migrated.report.tables.len(),
        migrated.report.rows(),
        safe(&from),
        safe(&migrated.destination)
    )?;
    writeln!(
        out,
        "Verified: both stores read back with the same rows in every table:"
    )?;
    for t in &migrated.report.tables {
        writeln!(out, "  {}", safe(&format!("{t:?}")))?;
    }
    match &to {
        Destination::Postgres(_) => writeln!(
            out,
            "\nTo serve from it: set store.backend = \"postgres\" and store.url (or \
             LATCHKEY_STORE__BACKEND and LATCHKEY_STORE__URL, the password in PGPASSWORD), and \
             give every replica this installation's master key ({}). The data directory keeps \
             its database file; nothing reads it while the backend is postgres.",
            ctx.source().kind_name()
        )?,
        Destination::Directory(dir) => writeln!(
            out,
            "\nTo serve from it: `latchkey --data-dir {} serve` with store.backend = \"redb\" \
             (the default) and this installation's master key ({}; in keyfile mode put the \
             key file at {}/master.key or set vault.key_file).",
            safe(&dir.display().to_string()),
            ctx.source().kind_name(),
            safe(&dir.display().to_string())
        )?,
    }
    Ok(())
}
