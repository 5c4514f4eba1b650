//! `latchkey config check` and `latchkey keygen`.

use crate::context::Context;
use latchkey_core::secrecy::ExposeSecret;
use latchkey_core::vault::MasterKey;

pub fn check(ctx: &Context) -> anyhow::Result<()> {
    // Loading already validated everything; show what is in effect.
    let shown = toml::to_string_pretty(&ctx.settings)?;
    println!("# Configuration is valid. Effective settings (secrets redacted):");
    println!("# data directory: {}", ctx.data_dir.display());
    println!("# master key source: {}", ctx.source().kind_name());
    print!("{shown}");
    Ok(())
}

/// Prints a new random master key. Meant to be piped straight into
/// `systemd-creds encrypt`, so it goes to stdout on purpose.
pub fn keygen() -> anyhow::Result<()> {
    let key = MasterKey::generate();
    let text = key
        .expose_identity_string()
        .ok_or_else(|| anyhow::anyhow!("generated key has no text form"))?;
    // The same layout as age-keygen, so age tools read it too.
    println!("# created: {}", time::OffsetDateTime::now_utc());
    if let Some(recipient) = key.recipient() {
        println!("# public key: {recipient}");
    }
    println!("{}", text.expose_secret());
    Ok(())
}
