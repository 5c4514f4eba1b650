//! `latchkey serve`, `seal` and `unseal`: the HTTPS server (in progress).

use crate::cli::{ServeArgs, UnsealArgs};
use crate::context::Context;
use crate::tls::TlsSettings;
use anyhow::bail;
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

pub fn run(_ctx: Context, _args: ServeArgs) -> anyhow::Result<()> {
    bail!("`latchkey serve` is not available in this build yet")
}

pub fn unseal(ctx: &Context, _args: UnsealArgs) -> anyhow::Result<()> {
    bail!(
        "no Latchkey server is running for {}; `unseal` unseals a running server \
         (one-shot commands ask for the passphrase themselves)",
        ctx.data_dir.display()
    )
}

pub fn seal(ctx: &Context) -> anyhow::Result<()> {
    bail!(
        "no Latchkey server is running for {}; `seal` drops a running server's keys",
        ctx.data_dir.display()
    )
}
