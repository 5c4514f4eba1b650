//! Updates through the Tauri updater: a feed of signed releases
//! (`plugins.updater.endpoints` in `tauri.conf.json`), each artifact's
//! minisign signature checked against the public key compiled in
//! (`plugins.updater.pubkey`) before anything is installed, and only a
//! version newer than this one accepted. Checked from the tray's "Check
//! for updates"; docs/DESKTOP.md says how a release is signed and
//! published.

use tauri::AppHandle;
use tauri_plugin_notification::NotificationExt as _;
use tauri_plugin_updater::UpdaterExt as _;

/// Checks the feed; with `install`, downloads, verifies and installs a
/// newer release, then asks for a restart.
pub fn check_in_background(app: &AppHandle, install: bool) {
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

async fn check(
    app: &AppHandle,
    install: bool,
) -> Result<Option<String>, tauri_plugin_updater::Error> {
    let Some(update) = app.updater()?.check().await? else {
        return Ok(None);
    };
    let version = update.version.clone();
    if install {
        // Verifies the signature over the downloaded bytes before
        // installing; a bad or missing signature is an error here.
        update.download_and_install(|_, _| {}, || {}).await?;
    }
    Ok(Some(version))
}
