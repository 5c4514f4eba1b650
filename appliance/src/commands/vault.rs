//! `latchkey vault …`: put, list, get, rm, init, verify.
//!
//! While a server holds the data directory, put/list/get/rm go through its
//! admin API ([`Remote`]) with the same output; otherwise they open the
//! data directory through the core's `App`, whose host operations record
//! the same audit entries the API does (actor `host`).

use crate::cli::{GetArgs, InitArgs, ListArgs, PutArgs, RmArgs, VaultCommand};
use crate::context::{self, Context};
use crate::prompt;
use crate::remote::Remote;
use crate::term::{safe, safe_or_dash};
use anyhow::bail;
use latchkey_core::config::MasterKeyKind;
use latchkey_core::secrecy::ExposeSecret;
use latchkey_core::vault::{MasterKey, NewRecord, RecordMeta, Unlock};
use std::io::Write;

pub fn run(ctx: &Context, cmd: VaultCommand) -> anyhow::Result<()> {
    match cmd {
        VaultCommand::Init(a) => init(ctx, a),
        VaultCommand::Put(a) => put(ctx, a),
        VaultCommand::Import(a) => super::import::run(ctx, a),
        VaultCommand::List(a) => list(ctx, a),
        VaultCommand::Get(a) => get(ctx, a),
        VaultCommand::Rm(a) => rm(ctx, a),
        VaultCommand::RotateMaster(a) => super::rotate::run(ctx, a),
        VaultCommand::Verify => verify(ctx),
    }
}

fn init(ctx: &Context, a: InitArgs) -> anyhow::Result<()> {
    if let Some(remote) = Remote::detect(ctx)? {
        if ctx.settings.vault.master_key != MasterKeyKind::Passphrase {
            bail!("the running server created this vault's master key already");
        }
        remote.init(&context::new_passphrase(a.passphrase_stdin)?)?;
        eprintln!("Initialized and unsealed the running server's vault.");
        return Ok(());
    }
    let app = ctx.open_sealed()?;
    let vault = app.vault();
    if vault.is_initialized()? {
        bail!(
            "the vault in {} is already initialized",
            ctx.data_dir.display()
        );
    }
    let source = ctx.source();
    if ctx.settings.vault.master_key == MasterKeyKind::Passphrase {
        let pass = context::new_passphrase(a.passphrase_stdin)?;
        vault.initialize(&MasterKey::Passphrase(pass), source.kind_name())?;
    } else if vault.open_with(&source)? != Unlock::Initialized {
        bail!("the vault was initialized concurrently");
    }
    eprintln!(
        "Initialized the vault in {} (master key: {}).",
        ctx.data_dir.display(),
        source.kind_name()
    );
    Ok(())
}

fn put(ctx: &Context, a: PutArgs) -> anyhow::Result<()> {
    let new = NewRecord {
        name: a.name,
        kind: a.kind,
        provider: a.provider,
        labels: a.labels.into_iter().collect(),
    };
    // Validate before asking for anything, so a typo costs no secret typing.
    new.validate()?;
    let secret = prompt::secret_from_stdin(&format!("Secret for {}: ", new.name))?;
    let meta = match Remote::detect(ctx)? {
        Some(remote) => remote.put(&new, &secret, a.replace)?,
        None => ctx.open_unsealed()?.put_as_host(&new, &secret, a.replace)?,
    };
    eprintln!("Stored `{}` ({}).", safe(&meta.name), meta.kind);
    Ok(())
}

fn list(ctx: &Context, a: ListArgs) -> anyhow::Result<()> {
    // Listing metadata needs no key: it works on a sealed vault too.
    let items = match Remote::detect(ctx)? {
        Some(remote) => remote.list()?,
        None => ctx.open_sealed()?.vault().list()?,
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &items)?;
        writeln!(out)?;
        return Ok(());
    }
    if items.is_empty() {
        writeln!(
            out,
            "The vault is empty. Add a secret with: latchkey vault put NAME --kind api_key --provider openai"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<32} {:<12} {:<14} {:<20} LAST USED",
        "NAME", "KIND", "PROVIDER", "UPDATED"
    )?;
    for m in &items {
        writeln!(
            out,
            "{:<32} {:<12} {:<14} {:<20} {}",
            safe(&m.name),
            m.kind.as_str(),
            safe_or_dash(m.provider.as_deref()),
            short_time(m.updated_at),
            m.last_used_at
                .map(short_time)
                .unwrap_or_else(|| "never".into())
        )?;
    }
    Ok(())
}

fn short_time(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    t.format(&fmt).unwrap_or_default()
}

fn get(ctx: &Context, a: GetArgs) -> anyhow::Result<()> {
    let remote = Remote::detect(ctx)?;
    let mut out = std::io::stdout().lock();
    if a.reveal {
        let secret = match &remote {
            Some(remote) => remote.reveal(&a.name)?,
            None => ctx.open_unsealed()?.reveal_as_host(&a.name)?,
        };
        out.write_all(secret.expose_secret().as_bytes())?;
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            writeln!(out)?;
        }
        return Ok(());
    }
    let m = match &remote {
        Some(remote) => remote.meta(&a.name)?,
        None => ctx.open_sealed()?.vault().meta(&a.name)?,
    };
    if a.json {
        serde_json::to_writer_pretty(&mut out, &m)?;
        writeln!(out)?;
    } else {
        print_meta(&mut out, &m)?;
    }
    Ok(())
}

fn print_meta(out: &mut impl Write, m: &RecordMeta) -> std::io::Result<()> {
    writeln!(out, "name:      {}", safe(&m.name))?;
    writeln!(out, "id:        {}", m.id)?;
    writeln!(out, "kind:      {}", m.kind)?;
    writeln!(out, "provider:  {}", safe_or_dash(m.provider.as_deref()))?;
    for (k, v) in &m.labels {
        writeln!(out, "label:     {}={}", safe(k), safe(v))?;
    }
    writeln!(out, "created:   {}", short_time(m.created_at))?;
    writeln!(out, "updated:   {}", short_time(m.updated_at))?;
    writeln!(
        out,
        "last used: {}",
        m.last_used_at
            .map(short_time)
            .unwrap_or_else(|| "never".into())
    )
}

fn rm(ctx: &Context, a: RmArgs) -> anyhow::Result<()> {
    let m = match Remote::detect(ctx)? {
        Some(remote) => remote.remove(&a.name)?,
        None => ctx.open_sealed()?.remove_as_host(&a.name)?,
    };
    eprintln!("Deleted `{}`.", safe(&m.name));
    Ok(())
}

fn verify(ctx: &Context) -> anyhow::Result<()> {
    let n = match Remote::detect(ctx)? {
        Some(remote) => remote.verify()?,
        None => ctx.open_unsealed()?.vault().verify_all()? as u64,
    };
    writeln!(
        std::io::stdout(),
        "All {n} entries decrypted and belong to their records."
    )?;
    Ok(())
}
