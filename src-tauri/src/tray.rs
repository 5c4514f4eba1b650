//! The tray icon and the desktop's notifications.
//!
//! The icon shows whether the vault is unlocked (blue) or sealed (grey),
//! its tooltip and first menu line say so and count the connections that
//! need reconnecting; the menu opens the window, locks, toggles start at
//! login, checks for updates and quits. A watcher polls the core's
//! in-memory state every few seconds (no disk I/O) and notifies when a
//! connection comes to need reconnecting or a key is refused for its
//! limit.

use crate::engine::{Engine, Phase};
use latchkey_core::connections::store::Status;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tauri::image::Image;
use tauri::menu::{CheckMenuItem, IsMenuItem, Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, Wry};
use tauri_plugin_autostart::ManagerExt as _;
use tauri_plugin_notification::NotificationExt as _;

const ICON: &[u8] = include_bytes!("../icons/tray.png");
const ICON_SEALED: &[u8] = include_bytes!("../icons/tray-sealed.png");
const TRAY: &str = "latchkey";
const POLL: Duration = Duration::from_secs(5);

/// The menu's items whose text changes.
pub struct TrayItems {
    status: MenuItem<Wry>,
    attention: MenuItem<Wry>,
}

pub fn install(app: &AppHandle) -> tauri::Result<()> {
    let status = MenuItem::with_id(app, "status", "Starting…", false, None::<&str>)?;
    let attention = MenuItem::with_id(
        app,
        "attention",
        "No connection needs attention",
        false,
        None::<&str>,
    )?;
    let autostart_on = app.autolaunch().is_enabled().unwrap_or(false);
    let (sep1, sep2, sep3) = (
        PredefinedMenuItem::separator(app)?,
        PredefinedMenuItem::separator(app)?,
        PredefinedMenuItem::separator(app)?,
    );
    let open = MenuItem::with_id(app, "open", "Open Latchkey", true, None::<&str>)?;
    let lock = MenuItem::with_id(app, "lock", "Lock", true, None::<&str>)?;
    let autostart = CheckMenuItem::with_id(
        app,
        "autostart",
        "Start at login",
        true,
        autostart_on,
        None::<&str>,
    )?;
    let update = MenuItem::with_id(app, "update", "Check for updates", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit Latchkey", true, None::<&str>)?;
    let items: [&dyn IsMenuItem<Wry>; 10] = [
        &status, &attention, &sep1, &open, &lock, &sep2, &autostart, &update, &sep3, &quit,
    ];
    let menu = Menu::with_items(app, &items)?;
    TrayIconBuilder::with_id(TRAY)
        .icon(Image::from_bytes(ICON_SEALED)?)
        .tooltip("Latchkey: starting")
        .menu(&menu)
        .on_menu_event(|app, event| match event.id().as_ref() {
            "open" => crate::window::show(app),
            "lock" => crate::lock(app),
            "autostart" => toggle_autostart(app),
            "update" => crate::updates::check_in_background(app, true),
            "quit" => crate::quit(app),
            _ => {}
        })
        .build(app)?;
    app.manage(TrayItems { status, attention });
    Ok(())
}

fn toggle_autostart(app: &AppHandle) {
    let al = app.autolaunch();
    let result = if al.is_enabled().unwrap_or(false) {
        al.disable()
    } else {
        al.enable()
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not change start at login");
    }
}

/// What the tray shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrayStatus {
    pub unlocked: bool,
    pub headline: String,
    pub needs_reconnect: BTreeSet<String>,
}

fn status_of(phase: &Phase) -> TrayStatus {
    let (unlocked, headline, needs_reconnect) = match phase {
        Phase::Starting => (false, "Starting…".to_string(), BTreeSet::new()),
        Phase::Running(live) => {
            let sealed = live.state.vault.is_sealed();
            let needs = live
                .state
                .connections
                .list(None)
                .map(|list| {
                    list.into_iter()
                        .filter(|c| c.status == Status::NeedsReconnect)
                        .map(|c| c.provider)
                        .collect()
                })
                .unwrap_or_default();
            let port = live.proxy_addrs.first().map_or(0, |a| a.port());
            let headline = if sealed {
                format!("Sealed — proxy on port {port}")
            } else {
                format!("Unlocked — proxy on port {port}")
            };
            (!sealed, headline, needs)
        }
        Phase::Keychain { .. } => (false, "Keychain not available".into(), BTreeSet::new()),
        Phase::Failed(_) => (false, "Not running (error)".into(), BTreeSet::new()),
        Phase::Stopped => (false, "Stopped".into(), BTreeSet::new()),
    };
    TrayStatus {
        unlocked,
        headline,
        needs_reconnect,
    }
}

fn show_status(app: &AppHandle, s: &TrayStatus) {
    if let Some(items) = app.try_state::<TrayItems>() {
        let _ = items.status.set_text(&s.headline);
        let _ = items.attention.set_text(match s.needs_reconnect.len() {
            0 => "No connection needs attention".to_string(),
            1 => "1 connection needs reconnecting".to_string(),
            n => format!("{n} connections need reconnecting"),
        });
    }
    if let Some(tray) = app.tray_by_id(TRAY) {
        let icon = if s.unlocked { ICON } else { ICON_SEALED };
        if let Ok(img) = Image::from_bytes(icon) {
            let _ = tray.set_icon(Some(img));
        }
        let _ = tray.set_tooltip(Some(format!("Latchkey: {}", s.headline)));
    }
}

fn notify(app: &AppHandle, title: &str, body: &str) {
    tracing::info!(title, "notification");
    if let Err(e) = app.notification().builder().title(title).body(body).show() {
        tracing::warn!(error = %e, "could not show a notification");
    }
}

/// Refused-for-limit counts over all providers.
fn limit_refusals(phase: &Phase) -> u64 {
    match phase {
        Phase::Running(live) => live
            .state
            .proxy
            .routes
            .values()
            .map(|r| {
                r.stats.refused_budget.load(Ordering::Relaxed)
                    + r.stats.refused_rpm.load(Ordering::Relaxed)
            })
            .sum(),
        _ => 0,
    }
}

/// Keeps the tray current and notifies about new trouble.
pub fn spawn_watcher(app: AppHandle, engine: Arc<Engine>) {
    tauri::async_runtime::spawn(async move {
        let mut phases = engine.subscribe();
        let mut shown: Option<TrayStatus> = None;
        let mut refusals = 0u64;
        loop {
            let phase = engine.phase();
            let s = {
                let phase = phase.clone();
                tokio::task::spawn_blocking(move || status_of(&phase))
                    .await
                    .unwrap_or_else(|_| status_of(&Phase::Starting))
            };
            if shown.as_ref() != Some(&s) {
                let newly: Vec<String> = s
                    .needs_reconnect
                    .iter()
                    .filter(|p| {
                        !shown
                            .as_ref()
                            .is_some_and(|o| o.needs_reconnect.contains(*p))
                    })
                    .cloned()
                    .collect();
                for p in newly {
                    notify(
                        &app,
                        "A connection needs reconnecting",
                        &format!(
                            "Latchkey can no longer refresh your {p} connection. Open Latchkey and reconnect it."
                        ),
                    );
                }
                let handle = app.clone();
                let s2 = s.clone();
                let _ = app.run_on_main_thread(move || show_status(&handle, &s2));
                shown = Some(s);
            }
            let now = limit_refusals(&phase);
            if now > refusals && matches!(phase, Phase::Running(_)) {
                notify(
                    &app,
                    "A key hit its limit",
                    "An agent's request was refused: its Latchkey key reached its request rate or token budget.",
                );
            }
            refusals = now;
            tokio::select! {
                r = phases.changed() => if r.is_err() { break },
                () = tokio::time::sleep(POLL) => {}
            }
        }
    });
}
