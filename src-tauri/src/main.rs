//! `latchkey-desktop`: Latchkey on a laptop. The whole core runs in this
//! process (`engine`); the window reaches it through the `latchkey` URI
//! scheme (`scheme`, `screens`, `window`); local agents reach it on
//! loopback (`server.listen`, plain HTTP, default port 7823); the tray
//! (`tray`) shows its state; the OS keychain holds the master key.
//! docs/DESKTOP.md describes it for people, ARCHITECTURE.md for developers.

// No console window on Windows release builds.
#![cfg_attr(all(windows, not(debug_assertions)), windows_subsystem = "windows")]

mod config;
mod engine;
mod oauth;
mod scheme;
mod screens;
mod tray;
mod updates;
mod window;

use engine::{Engine, Phase};
use scheme::Jar;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tauri::{AppHandle, Manager, RunEvent};

static STARTED: OnceLock<Instant> = OnceLock::new();
static QUITTING: AtomicBool = AtomicBool::new(false);

/// When this process started (for the launch figures in the log).
pub fn started() -> Instant {
    *STARTED.get_or_init(Instant::now)
}

/// The shell's shared state.
struct Desktop {
    engine: Arc<Engine>,
    jar: Arc<Jar>,
    /// The OAuth flow waiting for its loopback redirect, if any.
    flows: Arc<oauth::Flows>,
}

fn main() {
    started();
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("latchkey-desktop {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    init_logging();
    if let Err(e) = run() {
        eprintln!("latchkey-desktop: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The PostgreSQL driver logs statement parameters (rows) at debug.
    let filter = latchkey_core::store::QUIET_LOG_DIRECTIVES
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, tracing_subscriber::EnvFilter::add_directive);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run() -> anyhow::Result<()> {
    // One rustls provider (ring) for the core's outbound TLS and the
    // updater's reqwest; an error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("latchkey")
        .build()?;
    tauri::async_runtime::set(runtime.handle().clone());
    let core_runtime = runtime.handle().clone();

    let env: Vec<(String, String)> = std::env::vars().collect();
    let app = tauri::Builder::default()
        // First: a second launch hands over to this one and exits.
        .plugin(tauri_plugin_single_instance::init(|app, _argv, _cwd| {
            window::show(app);
        }))
        .plugin(tauri_plugin_autostart::init(
            tauri_plugin_autostart::MacosLauncher::LaunchAgent,
            None,
        ))
        .plugin(tauri_plugin_notification::init())
        .plugin(tauri_plugin_opener::init())
        .plugin(tauri_plugin_updater::Builder::new().build())
        .register_asynchronous_uri_scheme_protocol(scheme::SCHEME, |ctx, req, responder| {
            let app = ctx.app_handle().clone();
            let label = ctx.webview_label().to_string();
            tauri::async_runtime::spawn(async move {
                let Some(desk) = app.try_state::<Desktop>() else {
                    responder.respond(scheme::plain(
                        tauri::http::StatusCode::SERVICE_UNAVAILABLE,
                        "starting",
                    ));
                    return;
                };
                let page = app.get_webview_window(&label).and_then(|w| w.url().ok());
                let (engine, jar, flows) = (
                    Arc::clone(&desk.engine),
                    Arc::clone(&desk.jar),
                    Arc::clone(&desk.flows),
                );
                responder.respond(scheme::answer(&engine, &jar, &flows, page, req).await);
            });
        })
        .setup(move |app| {
            let os_dir = app.path().app_data_dir().ok();
            let lookup = |k: &str| std::env::var(k).ok();
            let data_dir = config::data_dir(&lookup, os_dir)?;
            tracing::info!(data_dir = %data_dir.display(), "starting");
            let engine = Engine::new(data_dir, env, core_runtime.clone());
            engine.start(None);
            let handle = app.handle().clone();
            let navigate: oauth::Navigate = Arc::new(move |path: String| {
                let app = handle.clone();
                let _ = handle.run_on_main_thread(move || window::open_at(&app, &path));
            });
            app.manage(Desktop {
                engine: Arc::clone(&engine),
                jar: Arc::new(Jar::default()),
                flows: Arc::new(oauth::Flows::new(navigate)),
            });
            tray::install(app.handle())?;
            tray::spawn_watcher(app.handle().clone(), Arc::clone(&engine));
            spawn_ready_log(Arc::clone(&engine));
            #[cfg(unix)]
            spawn_signal_handler(app.handle().clone());
            window::show(app.handle());
            Ok(())
        })
        .build(tauri::generate_context!())?;
    app.run(|app, event| match event {
        // Closing the window keeps the app (and the proxy) in the tray;
        // only Quit or a signal ends it.
        RunEvent::ExitRequested { api, code, .. }
            if code.is_none() && !QUITTING.load(Ordering::SeqCst) =>
        {
            api.prevent_exit();
        }
        RunEvent::Exit => {
            // Whatever way we got here, the core shuts down in order.
            if let Some(desk) = app.try_state::<Desktop>() {
                let engine = Arc::clone(&desk.engine);
                tauri::async_runtime::block_on(async move { engine.shutdown().await });
            }
        }
        _ => {}
    });
    drop(runtime);
    Ok(())
}

/// Logs, once, when the loopback proxy is ready (the launch figure).
fn spawn_ready_log(engine: Arc<Engine>) {
    tauri::async_runtime::spawn(async move {
        let mut rx = engine.subscribe();
        let _ = rx
            .wait_for(|p| {
                matches!(
                    p,
                    Phase::Running(_) | Phase::Keychain { .. } | Phase::Failed(_)
                )
            })
            .await;
        tracing::info!(
            since_launch_ms = started().elapsed().as_millis() as u64,
            phase = ?engine.phase(),
            "core ready"
        );
    });
}

/// Quits: the core shuts down in order (listeners drain, pending writes,
/// the store closes, the lock is released), then the app exits.
pub fn quit(app: &AppHandle) {
    if QUITTING.swap(true, Ordering::SeqCst) {
        return;
    }
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        if let Some(desk) = app.try_state::<Desktop>() {
            desk.flows.stop();
            desk.engine.shutdown().await;
        }
        app.exit(0);
    });
}

/// Locks: the vault is sealed and the window's session ends; the window
/// goes back to its first page (sign in, then unseal).
pub fn lock(app: &AppHandle) {
    if let Some(desk) = app.try_state::<Desktop>() {
        if let Phase::Running(live) = desk.engine.phase() {
            live.state.vault.seal();
        }
        desk.flows.stop();
        desk.jar.clear();
        tracing::info!("locked from the tray");
    }
    window::restart(app);
}

#[cfg(unix)]
fn spawn_signal_handler(app: AppHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    tauri::async_runtime::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("could not install the signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
        }
        quit(&app);
    });
}
