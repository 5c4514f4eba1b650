//! `latchkey serve`, `seal` and `unseal`.
//!
//! [`run`] (in `run.rs`) is `latchkey serve`: the core's `App` with the
//! appliance's certificates (or none, `server.tls = false`); [`host`]
//! supplies what only the appliance knows (certificates, the admin token).
//! `seal` and `unseal` act on a running server through its API.

pub mod host;
mod notify;
mod reload;
mod run;

pub use run::run;

use crate::cli::UnsealArgs;
use crate::context::Context;
use crate::prompt;
use crate::remote::Remote;
use crate::tls::TlsSettings;
use anyhow::bail;
use latchkey_core::config::MasterKeyKind;
use std::net::IpAddr;

/// TLS settings from the configuration.
pub fn tls_settings(ctx: &Context) -> anyhow::Result<TlsSettings> {
    let t = &ctx.settings.tls;
    let (ips, names): (Vec<&String>, Vec<&String>) = t
        .extra_names
        .iter()
        .partition(|n| n.parse::<IpAddr>().is_ok());
    Ok(TlsSettings {
        dir: ctx.data_dir.join("tls"),
        extra_dns_names: names.into_iter().cloned().collect(),
        extra_ips: ips.into_iter().filter_map(|n| n.parse().ok()).collect(),
        server_cert_lifetime: t.server_cert_lifetime,
        renew_before: t.renew_before,
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
    })
}

fn running_server(ctx: &Context, what: &str) -> anyhow::Result<Remote> {
    match Remote::detect(ctx)? {
        Some(r) => Ok(r),
        None => bail!(
            "no Latchkey server is running for {}; `{what}` acts on a running server \
             (one-shot commands ask for the passphrase themselves)",
            ctx.data_dir.display()
        ),
    }
}

pub fn unseal(ctx: &Context, args: UnsealArgs) -> anyhow::Result<()> {
    let remote = running_server(ctx, "unseal")?;
    if ctx.settings.vault.master_key == MasterKeyKind::Passphrase {
        let pass = if args.passphrase_stdin {
            prompt::line_from_stdin("the vault passphrase")?
        } else {
            ctx.vault_passphrase()?
        };
        remote.unseal(Some(&pass))?;
    } else {
        // Stored-key modes: the server reads its configured key again.
        remote.unseal(None)?;
    }
    eprintln!("The vault is unsealed.");
    Ok(())
}

pub fn seal(ctx: &Context) -> anyhow::Result<()> {
    running_server(ctx, "seal")?.seal()?;
    eprintln!("The vault is sealed: the server dropped its keys from memory.");
    Ok(())
}
