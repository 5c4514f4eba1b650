//! The main window: created on launch and on "Open", destroyed when
//! closed (its web process and memory go with it; the core, the tray and
//! the loopback proxy keep running, and the shell's cookie jar keeps the
//! session for the next "Open").
//!
//! Navigation is held to our own origin: a link or redirect anywhere else
//! (an OAuth provider's authorization page, documentation) opens in the
//! system browser instead, and new windows (`target=_blank`,
//! `window.open`) are never created. So no foreign page ever runs in the
//! window, where the `latchkey` scheme would answer it (`crate::scheme`).

use crate::scheme;
use tauri::webview::NewWindowResponse;
use tauri::{AppHandle, Manager, WebviewUrl, WebviewWindowBuilder};
use url::Url;

/// The main window's label.
pub const MAIN: &str = "main";

/// Shows the main window, creating it if it is closed, and focuses it.
pub fn show(app: &AppHandle) {
    if let Some(w) = app.get_webview_window(MAIN) {
        let _ = w.unminimize();
        let _ = w.show();
        let _ = w.set_focus();
        return;
    }
    let Some(start) = scheme::page_url("/_desktop/start") else {
        return;
    };
    if let Err(e) = build(app, start) {
        tracing::error!(error = %e, "could not open the window");
    }
}

/// Shows the window at `path` of our origin (creating it if it is
/// closed) and focuses it: where an OAuth flow ends (`crate::oauth`).
pub fn open_at(app: &AppHandle, path: &str) {
    let Some(url) = scheme::page_url(path) else {
        return;
    };
    if let Some(w) = app.get_webview_window(MAIN) {
        let _ = w.navigate(url);
        let _ = w.unminimize();
        let _ = w.show();
        let _ = w.set_focus();
        return;
    }
    if let Err(e) = build(app, url) {
        tracing::error!(error = %e, "could not open the window");
    }
}

/// Reloads the window at the first page (after locking).
pub fn restart(app: &AppHandle) {
    if let (Some(w), Some(url)) = (
        app.get_webview_window(MAIN),
        scheme::page_url("/_desktop/start"),
    ) {
        let _ = w.navigate(url);
    }
}

fn build(app: &AppHandle, start: Url) -> tauri::Result<()> {
    let opener = app.clone();
    let opener2 = app.clone();
    let started = crate::started();
    WebviewWindowBuilder::new(app, MAIN, WebviewUrl::CustomProtocol(start))
        .title("Latchkey")
        .inner_size(1120.0, 780.0)
        .min_inner_size(480.0, 400.0)
        .disable_drag_drop_handler()
        .on_navigation(move |url| {
            if scheme::is_own(url) {
                return true;
            }
            open_outside(&opener, url);
            false
        })
        .on_new_window(move |url, _| {
            open_outside(&opener2, &url);
            NewWindowResponse::Deny
        })
        .on_page_load(move |_, payload| {
            if matches!(payload.event(), tauri::webview::PageLoadEvent::Finished) {
                tracing::info!(
                    since_launch_ms = started.elapsed().as_millis() as u64,
                    "window page loaded"
                );
            }
        })
        .build()?;
    tracing::info!(
        since_launch_ms = started.elapsed().as_millis() as u64,
        "window shown"
    );
    Ok(())
}

/// Hands an `http(s)` URL to the system browser; anything else is dropped.
fn open_outside(app: &AppHandle, url: &Url) {
    if !matches!(url.scheme(), "http" | "https") {
        tracing::warn!(scheme = url.scheme(), "refused a navigation in the window");
        return;
    }
    tracing::info!(origin = %url.origin().ascii_serialization(), "opening in the system browser");
    let _ = app;
    if let Err(e) = tauri_plugin_opener::open_url(url.as_str(), None::<&str>) {
        tracing::warn!(error = %e, "could not open the system browser");
    }
}
