//! `latchkey update`: the installing half of the
//! update channel (docs/UPDATES.md; the feed format, keys and the server's
//! periodic check are `latchkey_core::update`).
//!
//! `update` reads the feed, picks this platform's artifact, and installs
//! it only if it is newer than the running version, downloads it within
//! the size the feed states ([`fetch`]), checks size, SHA-256 and the
//! zipsign signature against the trusted keys with the artifact's
//! expected file name (version and platform) as context, then replaces
//! the binary atomically, keeping `latchkey.previous`, and proves the new
//! build works: its `self-check`, and under systemd a restart that must
//! reach readiness ([`install`]). A failure puts the previous binary back
//! (and restarts the service on it). Every refusal before the swap leaves
//! the binary byte-for-byte untouched. The outcome is printed, and left in
//! the data directory for the server to audit and show.

mod fetch;
mod install;

use crate::cli::UpdateArgs;
use crate::context::Context;
use anyhow::{anyhow, bail};
use latchkey_core::update::{InstallOutcome, InstallReport, TARGET, feed, version};
use std::io::Write;

/// `latchkey update [--check] [--yes] [--scheduled] [--feed URL]`.
pub fn run(ctx: &Context, args: &UpdateArgs) -> anyhow::Result<()> {
    let current = version();
    let settings = &ctx.settings.update;
    let feed_url = args
        .feed
        .clone()
        .or_else(|| settings.feed.clone())
        .ok_or_else(|| anyhow!("no feed: set update.feed or pass --feed URL"))?;
    let feed_url = latchkey_core::update::settings::check_feed_url(&feed_url)
        .map_err(|m| anyhow!("--feed / update.feed: {m}"))?;
    let keys = settings
        .verifying_keys()
        .map_err(|(key, m)| anyhow!("{key}: {m}"))?;
    let mut out = std::io::stdout();

    let feed = fetch::feed(&feed_url)?;
    let version = feed.version.to_string();
    let Some(artifact) = feed.artifacts.get(TARGET) else {
        bail!(
            "refused: release {version} has no artifact for this platform ({TARGET}); the feed \
             lists {}",
            list_or_none(feed.artifacts.keys())
        );
    };
    if !feed::is_newer(&feed.version, current) {
        if semver_eq(&feed.version, current) {
            writeln!(out, "latchkey {current} is up to date")?;
            return Ok(());
        }
        bail!(
            "refused: the feed offers {version}, older than the running {current} (no downgrades)"
        );
    }
    let install = if args.check {
        false
    } else if args.scheduled {
        settings.auto_install
    } else {
        args.yes || confirm(&version)?
    };
    if !install {
        writeln!(out, "update available: {version} (running {current})")?;
        if let Some(notes) = &feed.notes {
            writeln!(out, "  {}", crate::term::safe(notes))?;
        }
        if args.scheduled {
            writeln!(
                out,
                "update.auto_install is off: run `latchkey update --yes` to install"
            )?;
        }
        return Ok(());
    }

    let binary = install::current_binary()?;
    install::refuse_if_packaged(&binary)?;
    let url = feed::resolve(&feed_url, artifact).map_err(|e| anyhow!("refused: {e}"))?;
    let staged = fetch::artifact(&url, &feed.version, artifact, &keys, &binary)?;
    writeln!(out, "verified {} (signature, SHA-256, size)", staged.name)?;

    let outcome = install::swap_and_prove(&binary, &staged, &feed.version, ctx);
    let (outcome, reason) = match &outcome {
        Ok(()) => (InstallOutcome::Installed, None),
        Err(install::Failure::RolledBack(r)) => (InstallOutcome::RolledBack, Some(r.clone())),
        Err(install::Failure::Failed(r)) => (InstallOutcome::Failed, Some(r.clone())),
    };
    let report = InstallReport {
        at: latchkey_core::auth::service::now(),
        from: current.to_string(),
        to: version.clone(),
        outcome,
        reason: reason.clone(),
    };
    // Only into a data directory that exists: an update never creates one.
    if ctx.data_dir.is_dir()
        && let Err(e) = latchkey_core::update::write_report(&ctx.data_dir, &report)
    {
        tracing::warn!(error = %e, "could not leave the update report for the server");
    }
    match outcome {
        InstallOutcome::Installed => {
            writeln!(
                out,
                "installed latchkey {version} (the previous build is kept as latchkey.previous)"
            )?;
            Ok(())
        }
        InstallOutcome::RolledBack => bail!(
            "update to {version} rolled back, {current} restored: {}",
            reason.unwrap_or_default()
        ),
        InstallOutcome::Failed => bail!(
            "update to {version} failed and the previous build could not be restored: {}",
            reason.unwrap_or_default()
        ),
    }
}

fn semver_eq(v: &semver::Version, current: &str) -> bool {
    semver::Version::parse(current).is_ok_and(|c| &c == v)
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let all: Vec<&str> = names.map(String::as_str).collect();
    if all.is_empty() {
        "none".into()
    } else {
        crate::term::safe(&all.join(", ")).into_owned()
    }
}

/// Asks on the terminal; without one, `--yes` is needed.
fn confirm(offered: &str) -> anyhow::Result<bool> {
    let current = version();
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("update {offered} is available; pass --yes to install it (no terminal to ask on)");
    }
    write!(
        std::io::stdout(),
        "Install latchkey {offered} (running {current})? [y/N] "
    )?;
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
