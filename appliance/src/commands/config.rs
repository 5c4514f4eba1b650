//! `latchkey config check` and `latchkey keygen`.

use crate::context::Context;
use latchkey_core::secrecy::ExposeSecret;
use latchkey_core::vault::MasterKey;
use std::io::Write;

pub fn check(ctx: &Context) -> anyhow::Result<()> {
    // Loading already validated everything; show what is in effect.
    let shown = toml::to_string_pretty(&ctx.settings)?;
    writeln!(
        std::io::stdout(),
        "# Configuration is valid. Effective settings (secrets redacted):"
    )?;
    writeln!(
        std::io::stdout(),
        "# data directory: {}",
        ctx.data_dir.display()
    )?;
    writeln!(
        std::io::stdout(),
        "# master key source: {}",
        ctx.source().kind_name()
    )?;
    write!(std::io::stdout(), "{shown}")?;
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
    writeln!(
        std::io::stdout(),
        "# created: {}",
        time::OffsetDateTime::now_utc()
    )?;
    if let Some(recipient) = key.recipient() {
        writeln!(std::io::stdout(), "# public key: {recipient}")?;
    }
    writeln!(std::io::stdout(), "{}", text.expose_secret())?;
    Ok(())
}
