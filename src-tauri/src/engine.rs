//! The core, run in-process: opened, served and shut down through
//! `latchkey_core::app::App` exactly as `latchkey serve` does
//! (`appliance/src/server/run.rs`), minus what only the appliance has
//! (certificates, signals, the banner).
//!
//! What is the desktop's own:
//! - the keychain is probed before the app opens: an unavailable one (no
//!   Secret Service, a locked keyring) is a [`Phase::Keychain`] the window
//!   explains, offering passphrase mode when the vault has no key yet —
//!   never a key file written instead;
//! - the window's origin (`http://127.0.0.1:PORT`, the loopback listener's)
//!   under which the window's requests reach the core (`crate::scheme`);
//! - the setup token of a first launch, handed once to the window so it
//!   opens straight into the setup wizard.

use crate::config;
use latchkey_core::app::{App, OpenOptions, Shell};
use latchkey_core::config::{MasterKeyKind, Settings};
use latchkey_core::http::{AppState, Front, HostInfo, ReadyCheck, StaticToken};
use latchkey_core::secrecy::{ExposeSecret, SecretString};
use latchkey_core::serve::{Transport, bind};
use latchkey_core::vault::MasterKeySource;
use latchkey_core::vault::keychain::{self, KeychainError};
use latchkey_core::vault::master::create_private_file;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// The admin token's file in the data directory (the same name and
/// format as the appliance's, so the `latchkey` CLI finds it).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Shortest vault passphrase accepted (as `latchkey vault init`).
pub const MIN_PASSPHRASE: usize = 12;

/// Where the core is.
#[derive(Clone)]
pub enum Phase {
    Starting,
    Running(Arc<Live>),
    /// The keychain could not be used; nothing was written.
    Keychain {
        detail: String,
        /// The vault has no master key yet, so passphrase mode can be
        /// chosen instead (never offered for a vault whose key is in the
        /// keychain: that key is needed, not a new one).
        can_choose_passphrase: bool,
    },
    Failed(String),
    Stopped,
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Starting => "Starting",
            Phase::Running(_) => "Running",
            Phase::Keychain { .. } => "Keychain",
            Phase::Failed(_) => "Failed",
            Phase::Stopped => "Stopped",
        })
    }
}

/// A serving core.
pub struct Live {
    pub front: Front,
    pub state: AppState,
    /// `127.0.0.1:PORT`: the loopback listener's authority, which the
    /// window's requests are presented under (`crate::scheme`).
    pub host_authority: String,
    pub proxy_addrs: Vec<SocketAddr>,
}

/// The in-process core and its lifecycle.
pub struct Engine {
    pub data_dir: PathBuf,
    config_file: PathBuf,
    config_explicit: bool,
    env: Vec<(String, String)>,
    runtime: tokio::runtime::Handle,
    phase: watch::Sender<Phase>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    stopped: watch::Sender<bool>,
    setup_token: Mutex<Option<SecretString>>,
}

impl Engine {
    pub fn new(
        data_dir: PathBuf,
        env: Vec<(String, String)>,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Engine> {
        let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let (config_file, config_explicit) = config::config_file(&data_dir, &lookup);
        Arc::new(Engine {
            data_dir,
            config_file,
            config_explicit,
            env,
            runtime,
            phase: watch::channel(Phase::Starting).0,
            stop: Mutex::new(None),
            stopped: watch::channel(false).0,
            setup_token: Mutex::new(None),
        })
    }

    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// The first-run setup token, once (the window's first page takes it).
    pub fn take_setup_token(&self) -> Option<SecretString> {
        self.setup_token.lock().ok().and_then(|mut t| t.take())
    }

    /// Opens and serves the core on the runtime; `passphrase` unseals (or,
    /// on first use, initializes) a passphrase-mode vault.
    pub fn start(self: &Arc<Self>, passphrase: Option<SecretString>) {
        let me = Arc::clone(self);
        self.phase.send_replace(Phase::Starting);
        self.runtime.spawn(async move {
            let opened = {
                let me = Arc::clone(&me);
                tokio::task::spawn_blocking(move || me.open(passphrase)).await
            };
            let (app, settings) = match opened {
                Ok(Ok(Opened::App(opened))) => *opened,
                Ok(Ok(Opened::Keychain(phase))) => {
                    me.phase.send_replace(phase);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the core did not start");
                    me.phase.send_replace(Phase::Failed(e));
                    return;
                }
                Err(e) => {
                    me.phase.send_replace(Phase::Failed(e.to_string()));
                    return;
                }
            };
            if let Err(e) = me.serve(app, &settings).await {
                tracing::error!(error = %e, "the core stopped with an error");
                me.phase.send_replace(Phase::Failed(e));
            }
        });
    }

    /// Asks a running core to shut down in order; resolves when it has
    /// (at once when none runs).
    pub async fn shutdown(&self) {
        let sender = self.stop.lock().ok().and_then(|mut s| s.take());
        if let Some(tx) = sender {
            let _ = tx.send(());
            let mut rx = self.stopped.subscribe();
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    fn settings(&self) -> Result<Settings, String> {
        config::load(&self.config_file, self.config_explicit, self.env.clone())
            .map_err(|e| e.to_string())
    }

    fn open(&self, passphrase: Option<SecretString>) -> Result<Opened, String> {
        let settings = self.settings()?;
        let source = settings.master_key_source(&self.data_dir);
        if let MasterKeySource::Keyring {
            service,
            account,
            backend,
        } = &source
        {
            match keychain::get(*backend, service, account) {
                Ok(_) | Err(KeychainError::NotFound { .. }) => {}
                Err(e @ KeychainError::Unavailable { .. }) => {
                    tracing::warn!(error = %e, "the OS keychain is not available");
                    let initialized = App::open(
                        settings.clone(),
                        &self.data_dir,
                        source.clone(),
                        OpenOptions {
                            role: "cli",
                            unseal: false,
                        },
                    )
                    .map_err(|e| e.to_string())?
                    .vault()
                    .is_initialized()
                    .map_err(|e| e.to_string())?;
                    return Ok(Opened::Keychain(Phase::Keychain {
                        detail: e.to_string(),
                        can_choose_passphrase: !initialized,
                    }));
                }
            }
        }
        let app = App::open(
            settings.clone(),
            &self.data_dir,
            source,
            OpenOptions {
                role: "serve",
                unseal: true,
            },
        )
        .map_err(|e| e.to_string())?;
        if settings.vault.master_key == MasterKeyKind::Passphrase
            && let Some(p) = passphrase
        {
            app.unseal_with_passphrase(p).map_err(|e| e.to_string())?;
        }
        Ok(Opened::App(Box::new((app, settings))))
    }

    async fn serve(self: &Arc<Self>, app: App, settings: &Settings) -> Result<(), String> {
        let token = ensure_admin_token(&self.data_dir)?;
        let setup = app.auth().issue_setup_token().map_err(|e| e.to_string())?;
        let listeners = settings
            .server
            .listen
            .iter()
            .map(|a| bind(*a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot listen on {:?}: {e}", settings.server.listen))?;
        let running = app
            .serve(Shell {
                host: Arc::new(DesktopHost),
                admin: Arc::new(StaticToken::new(token.expose_secret())),
                transport: Transport::Plain,
                listeners,
                redirect_listeners: Vec::new(),
            })
            .map_err(|e| e.to_string())?;
        drop(token);
        let port = running.local_addrs().first().map_or(0, SocketAddr::port);
        let host_authority = format!("127.0.0.1:{port}");
        let live = Arc::new(Live {
            front: Front::new(running.state().clone()),
            state: running.state().clone(),
            host_authority,
            proxy_addrs: running.local_addrs().to_vec(),
        });
        if let Ok(mut t) = self.setup_token.lock() {
            *t = setup;
        }
        let (tx, rx) = oneshot::channel();
        if let Ok(mut s) = self.stop.lock() {
            *s = Some(tx);
        }
        tracing::info!(addresses = ?live.proxy_addrs, "loopback proxy ready");
        self.phase.send_replace(Phase::Running(live));
        // On stop, the phase lets go of `Live` (its `AppState` holds the
        // store) before the ordered shutdown waits for the store's last
        // holders.
        let me = Arc::clone(self);
        let result = running
            .run_until(async move {
                let _ = rx.await;
                me.phase.send_replace(Phase::Stopped);
            })
            .await;
        self.phase.send_replace(Phase::Stopped);
        self.stopped.send_replace(true);
        result.map_err(|e| e.to_string())
    }

    /// Switches to passphrase mode (the keychain screen's choice): the
    /// settings file says so from now on, and the vault is initialized
    /// with `passphrase`.
    pub fn choose_passphrase(self: &Arc<Self>, passphrase: SecretString) -> Result<(), String> {
        if passphrase.expose_secret().chars().count() < MIN_PASSPHRASE {
            return Err(format!(
                "the passphrase must be at least {MIN_PASSPHRASE} characters"
            ));
        }
        if !matches!(
            self.phase(),
            Phase::Keychain {
                can_choose_passphrase: true,
                ..
            }
        ) {
            return Err("passphrase mode can only be chosen for a new vault".into());
        }
        config::choose_passphrase_mode(&self.config_file).map_err(|e| e.to_string())?;
        self.start(Some(passphrase));
        Ok(())
    }
}

enum Opened {
    App(Box<(App, Settings)>),
    Keychain(Phase),
}

/// `DATA_DIR/admin.token` (32 random bytes, hex, owner-only), created if
/// absent, as the appliance does: the `latchkey` CLI on this machine sends
/// it to the running app.
pub fn ensure_admin_token(data_dir: &Path) -> Result<SecretString, String> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if !path.exists() {
        let bytes: [u8; 32] = rand::random();
        let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(bytes)));
        create_private_file(&path, text.as_bytes()).map_err(|e| e.to_string())?;
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?,
    );
    let token = text.trim();
    if token.len() < 32 {
        return Err(format!(
            "the admin token file {} is too short; delete it and start again",
            path.display()
        ));
    }
    Ok(SecretString::from(token.to_string()))
}

/// What the desktop shell tells the core about itself: no certificates of
/// its own (the window uses a custom scheme, agents plain loopback HTTP),
/// and how a sealed vault opens again here — a tray Lock is undone by the
/// next launch, which reads the master key from the keychain.
struct DesktopHost;

impl HostInfo for DesktopHost {
    fn readiness_checks(&self) -> Vec<ReadyCheck> {
        Vec::new()
    }
    fn tls_info(&self) -> Option<serde_json::Value> {
        None
    }
    fn unseal_hint(&self) -> Option<&'static str> {
        Some(
            "Quit Latchkey from its tray menu and open it again: it unlocks the vault from the system keychain when it starts.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_core::secrecy::ExposeSecret;

    #[test]
    fn admin_token_is_made_once_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = ensure_admin_token(dir.path()).expect("create");
        assert_eq!(a.expose_secret().len(), 64);
        let b = ensure_admin_token(dir.path()).expect("reuse");
        assert_eq!(a.expose_secret(), b.expose_secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
