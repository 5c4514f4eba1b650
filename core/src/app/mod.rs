//! The app's whole lifecycle, the same for every shell.
//!
//! [`App::open`] opens everything a data directory holds, from the
//! [`Settings`] and the master-key source the shell hands in: the data
//! directory and its lock, the store, the vault (finishing an interrupted
//! master-key rotation), and [`Auth`]. A one-shot command stops there and
//! uses the pieces (its vault changes go through [`App::put_as_host`] and
//! friends, audited as the API's are). A server goes on with
//! [`App::serve`]: given the listeners and their [`Transport`] (the shell
//! keeps its certificates), it builds the HTTP state (proxy, agents,
//! connections), starts every background task and serves. The returned
//! [`Running`] is the handle the shell awaits; its
//! [`Running::run_until`] shuts down in this order:
//!
//! 1. the listeners stop accepting; requests in flight get
//!    `server.shutdown_grace`, then their connections are closed;
//! 2. the background tasks stop: last-used flush, audit pruning, auth
//!    pruning, the proxy's usage flusher, the connections refresher, the
//!    update check, the request-count sync and the cache reload task
//!    (both only do work when replicas share the store);
//! 3. what the last requests left pending is written: proxy usage
//!    totals, the connections broker's audit entries and last-used times,
//!    vault and API-key last-used times;
//! 4. the HTTP state is dropped, the store last: redb closes cleanly and
//!    the data-directory lock is released only when nothing can write.
//!
//! The shell keeps what is only its own: parsing flags, the runtime's
//! flavour, signals, certificates and their renewal (a task it may stop
//! with [`Running::stopping`]), the admin token file, the banner.

mod host;
mod monitor;
pub mod reload;
#[cfg(test)]
mod replicas_pg_tests;
mod tasks;
#[cfg(test)]
mod tests;

use crate::auth::{Auth, AuthError};
use crate::config::Settings;
use crate::http::origin::Scheme;
use crate::http::{AppState, Front, HostInfo, Metrics, TokenVerifier};
use crate::serve::{ConnLimits, ConnTracker, Heartbeat, ServeOptions, Transport};
use crate::store::{LockOwner, Store, StoreError};
use crate::vault::{MasterKey, MasterKeySource, Vault, VaultError, rotation};
use secrecy::SecretString;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub use monitor::Monitor;

/// What can keep the app from opening, serving or stopping cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A setting the shell applied after loading (e.g. `--listen`) breaks
    /// a rule; names the key.
    #[error("`{key}`: {message}")]
    Settings { key: &'static str, message: String },
    /// The HTTP state could not be built from the settings (providers,
    /// agents, connections, trusted proxies).
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// The lock file could not be updated with where the server listens.
    #[error("writing the lock file: {0}")]
    Advertise(#[source] io::Error),
    /// Nothing to serve on, or a redirect listener without HTTPS.
    #[error("{0}")]
    Listeners(&'static str),
    /// A listener failed while serving (the others were shut down).
    #[error("listener failed: {0}")]
    Listener(#[source] io::Error),
    /// A listener ended without being asked to.
    #[error("a listener stopped unexpectedly")]
    ListenerStopped,
    /// A task of the app panicked or was cancelled.
    #[error("{what} task failed: {message}")]
    Task { what: &'static str, message: String },
}

/// How [`App::open`] opens.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Who holds the data-directory lock: `serve` for a server (the CLI
    /// finds it through the lock file), `cli` for a one-shot command.
    pub role: &'static str,
    /// Whether to unseal the vault at once: a stored master key (key file,
    /// systemd credential, keychain) is read, finishing an interrupted
    /// rotation, and the vault is initialized on first use. In passphrase
    /// mode nothing can be read: the vault stays sealed
    /// ([`App::unseal_with_passphrase`], or the API's unseal).
    pub unseal: bool,
}

/// An open data directory: store, vault and auth.
pub struct App {
    settings: Arc<Settings>,
    source: MasterKeySource,
    role: &'static str,
    store: Arc<Store>,
    vault: Arc<Vault>,
    auth: Arc<Auth>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("data_dir", &self.store.dir())
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Opens `data_dir` (creating it, mode 0700, if missing) with
    /// `settings` and `source`; see [`OpenOptions`]. Blocking: file I/O,
    /// and key derivation or generation.
    ///
    /// The listener rules ([`Settings::check_listeners`]) are checked
    /// first, before anything is created: the shell may have changed
    /// `server.listen` since the settings were loaded.
    pub fn open(
        settings: Settings,
        data_dir: &Path,
        source: MasterKeySource,
        opts: OpenOptions,
    ) -> Result<App, AppError> {
        settings
            .check_listeners()
            .map_err(|(key, message)| AppError::Settings { key, message })?;
        let store = Store::open_with(data_dir, opts.role, &settings.store)?;
        let vault = Arc::new(Vault::new(Arc::clone(&store)));
        if opts.unseal && !matches!(source, MasterKeySource::Passphrase) {
            rotation::open_recovering(&vault, &source)?;
        }
        let auth = Auth::new(
            Arc::clone(&store),
            Arc::clone(&vault),
            settings.auth.clone(),
        )?;
        Ok(App {
            settings: Arc::new(settings),
            source,
            role: opts.role,
            store,
            vault,
            auth,
        })
    }

    /// Unseals a passphrase-mode vault (the passphrase is checked against
    /// the wrapped data key; nothing is written).
    pub fn unseal_with_passphrase(&self, passphrase: SecretString) -> Result<(), AppError> {
        self.vault
            .unseal(&MasterKey::Passphrase(passphrase), self.source.kind_name())?;
        Ok(())
    }

    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// The master-key source the app was opened with.
    pub fn source(&self) -> &MasterKeySource {
        &self.source
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    /// Builds the HTTP state, starts every background task and serves
    /// `shell.listeners` (and the redirect listeners) until the returned
    /// handle is told to stop. Must be called inside a tokio runtime.
    pub fn serve(self, shell: Shell) -> Result<Running, AppError> {
        if shell.listeners.is_empty() {
            return Err(AppError::Listeners("nothing to serve on: no listener"));
        }
        if !shell.redirect_listeners.is_empty() && matches!(shell.transport, Transport::Plain) {
            return Err(AppError::Listeners(
                "HTTP redirect listeners need HTTPS listeners to redirect to",
            ));
        }
        warn_if_clock_wrong();
        let App {
            settings,
            source: _,
            role,
            store,
            vault,
            auth,
        } = self;
        let metrics = Arc::new(Metrics::new());
        let opts = ServeOptions {
            graceful_deadline: settings.server.shutdown_grace,
            connections: Arc::new(ConnTracker::new(conn_limits(&settings.server))),
            ..ServeOptions::default()
        };
        register_connection_metrics(&metrics, &opts);
        let state = AppState::new(
            Arc::clone(&vault),
            Arc::clone(&auth),
            Arc::clone(&settings),
            shell.host,
            metrics,
            shell.admin,
        )
        .map_err(AppError::State)?;
        let front = Front::new(state.clone());

        let local_addrs = addrs(&shell.listeners).map_err(AppError::Listener)?;
        let redirect_addrs = addrs(&shell.redirect_listeners).map_err(AppError::Listener)?;
        let scheme = shell.transport.scheme();
        let api_url = api_url(&local_addrs, scheme);
        store
            .advertise(&LockOwner {
                pid: std::process::id(),
                role: role.into(),
                api_url: Some(api_url.clone()),
            })
            .map_err(AppError::Advertise)?;

        // Two signals: the listeners stop first; the background tasks keep
        // flushing while requests drain, and stop after them.
        let (listeners_stop, listeners_rx) = watch::channel(false);
        let (background_stop, background_rx) = watch::channel(false);
        let background = Background {
            last_used: tasks::spawn_last_used_flusher(
                Arc::clone(&vault),
                Arc::clone(&auth),
                background_rx.clone(),
            ),
            audit_pruner: tasks::spawn_audit_pruner(
                Arc::clone(&store),
                settings.auth.audit_retention,
                background_rx.clone(),
            ),
            auth_pruner: tasks::spawn_auth_pruner(Arc::clone(&auth), background_rx.clone()),
            usage: Arc::clone(&state.proxy).spawn_usage_flusher(background_rx.clone()),
            refresher: Arc::clone(&state.connections).spawn_refresher(background_rx.clone()),
            updates: Arc::clone(&state.updates).spawn(background_rx.clone()),
            rate_sync: Arc::clone(&state.proxy).spawn_rate_sync(background_rx.clone()),
            reload: reload::spawn_cache_reloader(
                Arc::clone(&store),
                caches(&state),
                background_rx.clone(),
            ),
        };

        let mut listeners = JoinSet::new();
        let mut heartbeats = Vec::new();
        for listener in shell.listeners {
            let (front, transport) = (front.clone(), shell.transport.clone());
            // Each loop its own beat: one stuck listener is enough to stop
            // vouching for the server.
            let heartbeat = Arc::new(Heartbeat::new());
            heartbeats.push(Arc::clone(&heartbeat));
            let opts = ServeOptions {
                heartbeat,
                ..opts.clone()
            };
            let stop = stopped(listeners_rx.clone());
            listeners.spawn(async move {
                crate::serve::serve(listener, transport, front, stop, opts).await
            });
        }
        let https_port = local_addrs.first().map_or(0, SocketAddr::port);
        for listener in shell.redirect_listeners {
            let stop = stopped(listeners_rx.clone());
            let conns = Arc::clone(&opts.connections);
            listeners.spawn(async move {
                crate::serve::serve_http_redirect(listener, https_port, stop, conns).await
            });
        }
        tracing::info!(addresses = ?local_addrs, %scheme, "serving");
        Ok(Running {
            state,
            heartbeats,
            store,
            listeners,
            listeners_stop,
            background,
            background_stop,
            background_rx,
            local_addrs,
            redirect_addrs,
            scheme,
            api_url,
        })
    }
}

/// What a shell hands [`App::serve`].
pub struct Shell {
    /// What only the shell knows (certificate validity, TLS details).
    pub host: Arc<dyn HostInfo>,
    /// The host's admin token, accepted from the host itself only.
    pub admin: Arc<dyn TokenVerifier>,
    /// What `listeners` speak.
    pub transport: Transport,
    /// Bound, e.g. with [`crate::serve::bind`].
    pub listeners: Vec<TcpListener>,
    /// Plain-HTTP listeners that only redirect to the first listener's
    /// port (HTTPS only).
    pub redirect_listeners: Vec<TcpListener>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("transport", &self.transport)
            .field("listeners", &self.listeners.len())
            .field("redirect_listeners", &self.redirect_listeners.len())
            .finish_non_exhaustive()
    }
}

/// The background tasks, stopped in [`Running::run_until`]'s order.
struct Background {
    last_used: JoinHandle<()>,
    audit_pruner: JoinHandle<()>,
    auth_pruner: JoinHandle<()>,
    usage: JoinHandle<()>,
    refresher: JoinHandle<()>,
    updates: JoinHandle<()>,
    rate_sync: JoinHandle<()>,
    reload: JoinHandle<()>,
}

/// The caches the reload task keeps in step with other replicas' commits.
fn caches(state: &AppState) -> Vec<reload::Cache> {
    let (auth, vault, connections, proxy) = (
        Arc::clone(&state.auth),
        Arc::clone(&state.vault),
        Arc::clone(&state.connections),
        Arc::clone(&state.proxy),
    );
    vec![
        reload::Cache::new("auth keys, people and revocations", move |c| {
            auth.on_store_change(c).map_err(Into::into)
        }),
        reload::Cache::new("vault secrets", move |c| {
            vault.on_store_change(c).map(drop).map_err(Into::into)
        }),
        reload::Cache::new("connection tokens", move |c| {
            connections.on_store_change(c).map(drop).map_err(Into::into)
        }),
        reload::Cache::new("proxy key limits", move |c| {
            proxy.on_store_change(c).map_err(Into::into)
        }),
    ]
}

/// A serving app: the handle the shell awaits (see the module docs).
pub struct Running {
    state: AppState,
    heartbeats: Vec<Arc<Heartbeat>>,
    store: Arc<Store>,
    listeners: JoinSet<io::Result<()>>,
    listeners_stop: watch::Sender<bool>,
    background: Background,
    background_stop: watch::Sender<bool>,
    background_rx: watch::Receiver<bool>,
    local_addrs: Vec<SocketAddr>,
    redirect_addrs: Vec<SocketAddr>,
    scheme: Scheme,
    api_url: String,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("local_addrs", &self.local_addrs)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// How long [`Running::run_until`] waits, at its end, for requests cut off
/// at the deadline to let go of the store (their blocking work finishing)
/// before it returns anyway.
const STORE_RELEASE_WAIT: Duration = Duration::from_secs(5);

impl Running {
    /// The addresses being served.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The redirect listeners' addresses.
    pub fn redirect_addrs(&self) -> &[SocketAddr] {
        &self.redirect_addrs
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The URL this machine's CLI reaches the server at (written to the
    /// lock file).
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The HTTP state being served.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// A handle for a supervisor: readiness and the accept loops' liveness
    /// (see [`Monitor`]), usable while `run_until` runs.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            state: self.state.clone(),
            heartbeats: self.heartbeats.clone(),
        }
    }

    /// Turns true when the app's background work stops (after the
    /// listeners have drained): for the shell's own tasks, e.g.
    /// certificate renewal.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.background_rx.clone()
    }

    /// Serves until `stop` resolves (or a listener fails), then shuts down
    /// in order. The error is the listener's failure, if one ended it.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> Result<(), AppError> {
        let failure = tokio::select! {
            biased;
            () = stop => None,
            Some(res) = self.listeners.join_next() => Some(match res {
                Ok(Ok(())) => AppError::ListenerStopped,
                Ok(Err(e)) => AppError::Listener(e),
                Err(e) => AppError::Task { what: "listener", message: e.to_string() },
            }),
        };
        self.shutdown_in_order().await;
        failure.map_or(Ok(()), Err)
    }

    /// Stops now, in order (see [`Running::run_until`]).
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.run_until(std::future::ready(())).await
    }

    async fn shutdown_in_order(self) {
        let Running {
            state,
            store,
            mut listeners,
            listeners_stop,
            background,
            background_stop,
            background_rx,
            ..
        } = self;
        tracing::info!("shutting down: no new connections; finishing requests");
        // 1. Listeners: each drains its connections for shutdown_grace.
        let _ = listeners_stop.send(true);
        while let Some(res) = listeners.join_next().await {
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "listener ended with an error"),
                Err(e) => tracing::warn!(error = %e, "listener task failed"),
            }
        }
        // 2. Background tasks.
        let _ = background_stop.send(true);
        drop(background_rx);
        for (what, task) in [
            ("last-used flush", background.last_used),
            ("audit pruning", background.audit_pruner),
            ("auth pruning", background.auth_pruner),
            ("usage flusher", background.usage),
            ("connections refresher", background.refresher),
            ("update check", background.updates),
            ("request count sync", background.rate_sync),
            ("cache reload", background.reload),
        ] {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, task = what, "background task failed");
            }
        }
        // 3. What the last requests left pending.
        let proxy = Arc::clone(&state.proxy);
        let connections = Arc::clone(&state.connections);
        let (vault, auth) = (Arc::clone(&state.vault), Arc::clone(&state.auth));
        let flushed = tokio::task::spawn_blocking(move || {
            if let Err(e) = proxy.flush_usage() {
                tracing::warn!(error = %e, "could not write proxy usage on shutdown");
            }
            if let Err(e) = connections.flush() {
                tracing::warn!(error = %e, "could not write connection events on shutdown");
            }
            if let Err(e) = vault.flush_last_used() {
                tracing::warn!(error = %e, "could not write last-used times on shutdown");
            }
            if let Err(e) = auth.flush_key_usage() {
                tracing::warn!(error = %e, "could not write key last-used times on shutdown");
            }
        })
        .await;
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "the shutdown flush failed");
        }
        // 4. The store last.
        drop(state);
        let started = Instant::now();
        while Arc::strong_count(&store) > 1 && started.elapsed() < STORE_RELEASE_WAIT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&store) > 1 {
            tracing::warn!(
                "requests cut off at the shutdown deadline still hold the database; \
                 it closes when they end"
            );
        }
        drop(store);
        tracing::info!("stopped");
    }
}

/// Resolves once `rx` turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn addrs(listeners: &[TcpListener]) -> io::Result<Vec<SocketAddr>> {
    listeners.iter().map(TcpListener::local_addr).collect()
}

/// The connection caps and idle timeout of `server`, lowered to what the
/// process's open-file limit allows (with a warning when that bites).
fn conn_limits(server: &crate::config::ServerSettings) -> ConnLimits {
    let wanted = ConnLimits {
        max_connections: server.max_connections,
        max_per_ip: server.max_connections_per_ip,
        idle_timeout: server.idle_timeout,
    };
    let fds = crate::serve::fd_soft_limit();
    let limits = wanted.fit_to_fd_limit(fds);
    if limits != wanted {
        tracing::warn!(
            open_files = fds,
            max_connections = limits.max_connections,
            max_connections_per_ip = limits.max_per_ip,
            "the open-file limit is low: connection caps lowered (raise LimitNOFILE / ulimit -n)"
        );
    }
    limits
}

fn register_connection_metrics(metrics: &Metrics, opts: &ServeOptions) {
    metrics.register_counter(
        "latchkey_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out.",
        Arc::clone(&opts.handshake_failures),
    );
    metrics.register_counter(
        "latchkey_connections_refused_total",
        "Connections closed at accept because server.max_connections or \
         server.max_connections_per_ip was reached.",
        Arc::clone(&opts.connections.refused),
    );
    metrics.register_counter(
        "latchkey_connections_idle_closed_total",
        "Connections closed after server.idle_timeout with no request in flight.",
        Arc::clone(&opts.connections.idle_closed),
    );
}

/// Logs a warning when the system clock is visibly wrong: TOTP codes and
/// every expiry depend on it.
fn warn_if_clock_wrong() {
    use crate::http::ops::{BUILD_UNIX, clock_problem};
    if let Some(problem) = clock_problem(crate::auth::service::now(), BUILD_UNIX) {
        tracing::warn!("{problem}");
    }
}

/// The URL this machine's CLI reaches the server at: loopback when the
/// server listens there (or on a wildcard), otherwise its first address.
pub fn api_url(bound: &[SocketAddr], scheme: Scheme) -> String {
    let reachable = |a: &SocketAddr| -> Option<SocketAddr> {
        match a.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() || ip.is_loopback() => {
                Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port()))
            }
            IpAddr::V6(ip) if ip.is_unspecified() || ip.is_loopback() => {
                Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port()))
            }
            _ => None,
        }
    };
    let chosen = bound
        .iter()
        .filter_map(reachable)
        .find(SocketAddr::is_ipv4)
        .or_else(|| bound.iter().find_map(reachable))
        .or_else(|| bound.first().copied());
    chosen.map_or_else(String::new, |a| format!("{scheme}://{a}"))
}
