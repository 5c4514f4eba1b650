//! Updates through the Tauri updater: a feed of signed releases
//! (`plugins.updater.endpoints` in `tauri.conf.json`), each artifact's
//! minisign signature checked against the public key compiled in
//! (`plugins.updater.pubkey`) before anything is installed, the version
//! the artifact was signed for required to be the one the feed announces
//! (`requireSignedVersion`: the feed itself is not signed, so without it a
//! feed could pair a new version number with an older, genuinely signed
//! release), and only a version newer than this one accepted. Checked
//! from the tray's "Check for updates"; docs/DESKTOP.md says how a
//! release is signed and published.
//!
//! [`fetch`] is the whole decision — check, download, verify — and is what
//! the tray runs (with the updater built from the compiled-in
//! configuration) and what `updates_tests.rs` runs against a loopback feed
//! (with a throwaway key given to the same plugin's builder).

use tauri::{AppHandle, Runtime};
use tauri_plugin_notification::NotificationExt as _;
use tauri_plugin_updater::{Update, Updater, UpdaterExt as _};

/// What the feed offered.
pub enum Found {
    /// Nothing newer than this version.
    UpToDate,
    /// A newer version (not downloaded).
    Available(String),
    /// A newer version, downloaded, its signature verified.
    Verified { update: Box<Update>, bytes: Vec<u8> },
}

/// Asks `updater`'s feed for a newer release; with `download`, fetches it
/// and verifies its signature (the plugin's `download`: a missing, bad or
/// foreign signature, or one made for another version, is an error and
/// nothing is returned).
pub async fn fetch(
    updater: &Updater,
    download: bool,
) -> Result<Found, tauri_plugin_updater::Error> {
    let Some(update) = updater.check().await? else {
        return Ok(Found::UpToDate);
    };
    if !download {
        return Ok(Found::Available(update.version.clone()));
    }
    let bytes = update.download(|_, _| {}, || {}).await?;
    Ok(Found::Verified {
        update: Box::new(update),
        bytes,
    })
}

/// Checks the feed; with `install`, downloads, verifies and installs a
/// newer release, then asks for a restart.
pub fn check_in_background<R: Runtime>(app: &AppHandle<R>, install: bool) {
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let message = match check(&app, install).await {
            Ok(Some(v)) if install => {
                format!("Latchkey {v} is installed; restart Latchkey to use it.")
            }
            Ok(Some(v)) => format!("Latchkey {v} is available."),
            Ok(None) => "Latchkey is up to date.".to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "update check failed");
                format!("The update check failed: {e}")
            }
        };
        let _ = app
            .notification()
            .builder()
            .title("Latchkey updates")
            .body(message)
            .show();
    });
}

async fn check<R: Runtime>(
    app: &AppHandle<R>,
    install: bool,
) -> Result<Option<String>, tauri_plugin_updater::Error> {
    // The compiled-in key and feed (`tauri.conf.json`).
    let updater = app.updater()?;
    match fetch(&updater, install).await? {
        Found::UpToDate => Ok(None),
        Found::Available(v) => Ok(Some(v)),
        Found::Verified { update, bytes } => {
            update.install(&bytes)?;
            Ok(Some(update.version.clone()))
        }
    }
}

#[cfg(test)]
#[path = "updates_tests.rs"]
mod tests;
