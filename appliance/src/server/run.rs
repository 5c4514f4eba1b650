//! `latchkey serve`: open everything, bind, print where to go, serve until
//! SIGTERM/SIGINT, then shut down in order.
//!
//! Order matters on the way down: listeners stop accepting, in-flight
//! requests get `server.shutdown_grace`, then pending proxy usage totals
//! and last-used times are written and the store is dropped last, so redb closes cleanly and the
//! data-dir lock is released only when nothing can write any more.

use super::host::{ApplianceHost, admin_token_path, ensure_admin_token};
use crate::cli::ServeArgs;
use crate::context::Context;
use crate::tls::TlsManager;
use anyhow::Context as _;
use latchkey_core::auth::Auth;
use latchkey_core::config::MasterKeyKind;
use latchkey_core::http::{AppState, Front, HostInfo, Metrics, NoHostInfo, StaticToken};
use latchkey_core::secrecy::{ExposeSecret, SecretString};
use latchkey_core::serve::{
    ConnLimits, ConnTracker, ServeOptions, Transport, fd_soft_limit, serve_http_redirect,
};
use latchkey_core::store::{self, LockOwner, Store};
use latchkey_core::vault::{Vault, rotation};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often pending last-used times are written.
const FLUSH_INTERVAL: Duration = Duration::from_secs(30);
/// How often audit entries past `auth.audit_retention` are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(86400);
/// How often expired sessions, tokens, invites and in-memory auth state
/// are pruned (`Auth::prune_expired`).
const AUTH_PRUNE_INTERVAL: Duration = Duration::from_secs(600);

pub fn run(mut ctx: Context, args: ServeArgs) -> anyhow::Result<()> {
    if !args.listen.is_empty() {
        ctx.settings.server.listen = args.listen;
    }
    // Again with the flags applied: `--listen 0.0.0.0:…` with tls = false.
    ctx.settings
        .check_listeners()
        .map_err(|(key, message)| anyhow::anyhow!("`{key}`: {message}"))?;
    // Process-wide default for anything that does not pass a provider
    // explicitly; an error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // Blocking setup (file I/O, key generation) before the runtime starts.
    store::ensure_data_dir(&ctx.data_dir)?;
    let store = Store::open(&ctx.data_dir, "serve")?;
    let vault = Arc::new(Vault::new(Arc::clone(&store)));
    let source = ctx.source();
    if ctx.settings.vault.master_key == MasterKeyKind::Passphrase {
        // Nothing to read the key from: stay sealed until `latchkey unseal`.
        if !vault.is_initialized()? {
            tracing::warn!(
                "the vault has no passphrase yet; stop the server and run `latchkey vault init`"
            );
        }
    } else {
        rotation::open_recovering(&vault, &source)?;
    }
    // With `server.tls = false` no certificate is made or needed: a
    // reverse proxy in front (or loopback) provides the transport.
    let tls = if ctx.settings.server.tls {
        Some(TlsManager::new(super::tls_settings(&ctx)?)?)
    } else {
        None
    };
    let token = ensure_admin_token(&ctx.data_dir)?;
    let auth = Auth::new(
        Arc::clone(&store),
        Arc::clone(&vault),
        ctx.settings.auth.clone(),
    )?;
    // While no owner exists: a one-time link to create one.
    let setup_token = auth.issue_setup_token()?;
    warn_if_clock_wrong();

    // On one CPU (a small VM, or a service pinned with CPUAffinity=) the
    // work-stealing scheduler has nobody to steal from and only adds
    // bookkeeping to every wake-up; the single-threaded one does the same
    // work for ~5 % less CPU per proxied request (docs/PERFORMANCE.md).
    // Blocking work goes to the blocking pool in both.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let runtime = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .thread_name("latchkey")
    .build()
    .context("starting the async runtime")?;
    let result = runtime.block_on(serve(
        &ctx,
        &store,
        &vault,
        &auth,
        tls.as_ref(),
        token,
        setup_token,
    ));
    // Last writes, then the database closes when the last Arc goes.
    if let Err(e) = vault.flush_last_used() {
        tracing::warn!(error = %e, "could not write last-used times on shutdown");
    }
    if let Err(e) = auth.flush_key_usage() {
        tracing::warn!(error = %e, "could not write key last-used times on shutdown");
    }
    drop(runtime);
    drop(auth);
    drop(vault);
    drop(store);
    result
}

/// The connection caps and idle timeout of `server`, lowered to what the
/// process's open-file limit allows (with a warning when that bites).
fn conn_limits(server: &latchkey_core::config::ServerSettings) -> ConnLimits {
    let wanted = ConnLimits {
        max_connections: server.max_connections,
        max_per_ip: server.max_connections_per_ip,
        idle_timeout: server.idle_timeout,
    };
    let fds = fd_soft_limit();
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

/// Logs (and prints) a warning when the system clock is visibly wrong:
/// TOTP codes and every expiry depend on it.
fn warn_if_clock_wrong() {
    use latchkey_core::http::ops::{BUILD_UNIX, clock_problem};
    if let Some(problem) = clock_problem(latchkey_core::auth::service::now(), BUILD_UNIX) {
        tracing::warn!("{problem}");
    }
}

async fn serve(
    ctx: &Context,
    store: &Arc<Store>,
    vault: &Arc<Vault>,
    auth: &Arc<Auth>,
    tls: Option<&Arc<TlsManager>>,
    token: SecretString,
    setup_token: Option<SecretString>,
) -> anyhow::Result<()> {
    let settings = Arc::new(ctx.settings.clone());
    let metrics = Arc::new(Metrics::new());
    let limits = conn_limits(&settings.server);
    let opts = ServeOptions {
        graceful_deadline: settings.server.shutdown_grace,
        connections: Arc::new(ConnTracker::new(limits)),
        ..ServeOptions::default()
    };
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
    let host: Arc<dyn HostInfo> = match tls {
        Some(tls) => Arc::new(ApplianceHost {
            tls: Arc::clone(tls),
        }),
        None => Arc::new(NoHostInfo),
    };
    let state = AppState::new(
        Arc::clone(vault),
        Arc::clone(auth),
        Arc::clone(&settings),
        host,
        metrics,
        Arc::new(StaticToken::new(token.expose_secret())),
    )
    .map_err(anyhow::Error::msg)?;
    drop(token);
    let proxy = Arc::clone(&state.proxy);
    let connections = Arc::clone(&state.connections);
    let app = Front::new(state);

    let mut https = Vec::new();
    for addr in &settings.server.listen {
        https.push(bind(*addr)?);
    }
    let bound: Vec<SocketAddr> = https
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()?;
    let mut redirects = Vec::new();
    for addr in &settings.server.http_redirect_listen {
        redirects.push(bind(*addr)?);
    }
    let redirect_bound: Vec<SocketAddr> = redirects
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()?;

    let transport = match tls {
        Some(tls) => Transport::Tls(tls.server_config()?),
        None => Transport::Plain,
    };
    let scheme = transport.scheme();
    let api_url = api_url(&bound, scheme.as_str());
    store
        .advertise(&LockOwner {
            pid: std::process::id(),
            role: "serve".into(),
            api_url: Some(api_url.clone()),
        })
        .context("writing the lock file")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let maintenance = tls
        .map(|tls| Arc::clone(tls).spawn_maintenance(settings.tls.check_interval, stop_rx.clone()));
    let flusher = spawn_flusher(Arc::clone(vault), Arc::clone(auth), stop_rx.clone());
    let usage_flusher = Arc::clone(&proxy).spawn_usage_flusher(stop_rx.clone());
    // OAuth connections: proactive and daily refreshes, batched audit.
    let refresher = Arc::clone(&connections).spawn_refresher(stop_rx.clone());
    let pruner = spawn_audit_pruner(
        Arc::clone(store),
        settings.auth.audit_retention,
        stop_rx.clone(),
    );
    let auth_pruner = spawn_auth_pruner(Arc::clone(auth), stop_rx.clone());

    let mut tasks = tokio::task::JoinSet::new();
    for listener in https {
        let (app, transport, opts) = (app.clone(), transport.clone(), opts.clone());
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            latchkey_core::serve::serve(listener, transport, app, stop, opts).await
        });
    }
    let https_port = bound.first().map_or(0, SocketAddr::port);
    for listener in redirects {
        let stop = stopped(stop_rx.clone());
        let conns = Arc::clone(&opts.connections);
        tasks.spawn(async move { serve_http_redirect(listener, https_port, stop, conns).await });
    }

    // Handlers go in before the banner: whoever reads it may signal at once.
    let signals = Signals::install()?;
    print_banner(&Banner {
        data_dir: &ctx.data_dir,
        ca: tls.map(|t| (t.ca().cert_path().to_path_buf(), t.ca_fingerprint_sha256())),
        scheme: scheme.as_str(),
        public_url: settings.server.public_url.as_deref(),
        bound: &bound,
        redirects: &redirect_bound,
        vault_line: if vault.is_sealed() {
            "sealed; unseal it with `latchkey unseal`".to_string()
        } else {
            format!("unsealed ({})", ctx.source().kind_name())
        },
        setup: setup_token
            .as_ref()
            .map(|t| (t, settings.auth.setup_token_lifetime)),
    });
    drop(setup_token);
    tracing::info!(addresses = ?bound, %scheme, "serving");

    // Serve until a signal, or until a listener fails.
    let mut failure = None;
    tokio::select! {
        sig = signals.recv() => {
            let name = sig?;
            tracing::info!(signal = name, "shutting down: no new connections; finishing requests");
        }
        Some(res) = tasks.join_next() => {
            failure = Some(match res {
                Ok(Ok(())) => anyhow::anyhow!("a listener stopped unexpectedly"),
                Ok(Err(e)) => anyhow::Error::new(e).context("listener failed"),
                Err(e) => anyhow::Error::new(e).context("listener task failed"),
            });
        }
    }
    let _ = stop_tx.send(true);
    while let Some(res) = tasks.join_next().await {
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, "listener ended with an error");
        }
    }
    if let Some(m) = maintenance {
        let _ = m.await;
    }
    let _ = flusher.await;
    let _ = pruner.await;
    let _ = auth_pruner.await;
    // After the last request: usage counted since the last periodic flush.
    let _ = usage_flusher.await;
    match tokio::task::spawn_blocking(move || proxy.flush_usage()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not write proxy usage on shutdown"),
        Err(e) => tracing::warn!(error = %e, "proxy usage flush task failed"),
    }
    let _ = refresher.await;
    // Broker audit entries and last-used times queued by the last requests.
    match tokio::task::spawn_blocking(move || connections.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not write connection events on shutdown"),
        Err(e) => tracing::warn!(error = %e, "connection flush task failed"),
    }
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Resolves once `rx` turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn recv(mut self) -> anyhow::Result<&'static str> {
        Ok(tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        })
    }
}

/// Binds one address. IPv6 sockets are IPv6-only, so `0.0.0.0:P` and
/// `[::]:P` can both be listed (Linux would otherwise make `[::]` take the
/// IPv4 port too and the second bind fail).
fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot listen on {addr}: {e}");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}

/// The URL local CLI commands use to reach this server: loopback when the
/// server listens there (or on a wildcard), otherwise its first address.
fn api_url(bound: &[SocketAddr], scheme: &str) -> String {
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

/// The URLs to show a person: `localhost` for loopback and wildcard
/// addresses (the certificate names it), the host name for wildcards.
fn display_urls(bound: &[SocketAddr], scheme: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for a in bound {
        let port = a.port();
        let ip = a.ip();
        if ip.is_loopback() || ip.is_unspecified() {
            urls.push(format!("{scheme}://localhost:{port}/"));
        }
        if ip.is_unspecified() {
            if let Some(host) = crate::tls::server_cert::local_host_name() {
                urls.push(format!("{scheme}://{host}:{port}/"));
            }
        } else {
            urls.push(format!("{scheme}://{}/", SocketAddr::new(ip, port)));
        }
    }
    urls.dedup();
    urls
}

/// What the startup banner shows.
struct Banner<'a> {
    data_dir: &'a std::path::Path,
    /// The CA's certificate path and fingerprint; `None` with
    /// `server.tls = false` (no certificate of ours is in use).
    ca: Option<(std::path::PathBuf, String)>,
    scheme: &'a str,
    /// `server.public_url`, shown as where to go (with plain HTTP the
    /// reverse proxy's address is the one people use).
    public_url: Option<&'a str>,
    bound: &'a [SocketAddr],
    redirects: &'a [SocketAddr],
    vault_line: String,
    setup: Option<(&'a SecretString, Duration)>,
}

fn print_banner(b: &Banner<'_>) {
    let out = banner_text(b);
    let mut stdout = std::io::stdout().lock();
    // stdout may be a closed pipe under a supervisor; serving matters more.
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

fn banner_text(b: &Banner<'_>) -> String {
    let mut out = String::new();
    let mut urls = display_urls(b.bound, b.scheme);
    if b.ca.is_none()
        && let Some(u) = b.public_url
    {
        urls.insert(0, format!("{}/", u.trim_end_matches('/')));
    }
    out.push_str(&format!(
        "Latchkey {} is running.\n\n",
        env!("CARGO_PKG_VERSION")
    ));
    for (i, url) in urls.iter().enumerate() {
        let label = if i == 0 {
            "  Open:           "
        } else {
            "                  "
        };
        out.push_str(&format!("{label}{url}\n"));
    }
    for r in b.redirects {
        out.push_str(&format!("  HTTP redirect:  http://{r}/ -> HTTPS\n"));
    }
    out.push_str(&format!(
        "  Listening on:   {}\n",
        b.bound
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    match &b.ca {
        Some((path, fingerprint)) => {
            out.push_str(&format!(
                "  CA certificate: {}\n  CA SHA-256:     {fingerprint}\n",
                path.display(),
            ));
            out.push_str(
                "  Trust the CA:   latchkey tls export-ca > latchkey-ca.pem, then import it into \
                 your browser or OS\n",
            );
        }
        None => out.push_str(
            "  Transport:      plain HTTP (server.tls = false): loopback, or TLS at the reverse \
             proxy in auth.trusted_proxies\n",
        ),
    }
    out.push_str(&format!(
        "  Admin token:    {} (mode 0600; `latchkey` commands on this machine use it)\n",
        admin_token_path(b.data_dir).display()
    ));
    out.push_str(&format!("  Vault:          {}\n", b.vault_line));
    if let Some((t, lifetime)) = b.setup {
        // The token is in the fragment: browsers never send it, so it
        // cannot reach a server or proxy log.
        let port = b.bound.first().map_or(0, SocketAddr::port);
        let origin = match (b.ca.is_none(), b.public_url) {
            (true, Some(u)) => u.trim_end_matches('/').to_string(),
            _ => format!("{}://localhost:{port}", b.scheme),
        };
        out.push_str(&format!(
            "\nFirst run: no owner yet. Open this one-time setup link in a browser \
             (expires in {}):\n\
             \x20   {origin}/setup#token={}\n\
             or create the owner on this machine with\n\
             \x20   latchkey setup --username NAME --password-stdin\n",
            human_duration(lifetime),
            t.expose_secret(),
        ));
    }
    out.push_str("\nStop with Ctrl-C (SIGINT) or SIGTERM.\n");
    out
}

/// `1h`, `30m`, `45s`: the largest whole unit.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Prunes audit entries past the retention period, at start and daily.
fn spawn_audit_pruner(
    store: Arc<Store>,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let keep = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(PRUNE_INTERVAL);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let s = Arc::clone(&store);
            let now = latchkey_core::auth::service::now();
            match tokio::task::spawn_blocking(move || latchkey_core::audit::prune(&s, keep, now))
                .await
            {
                Ok(Ok(n)) if n > 0 => tracing::info!(entries = n, "pruned old audit entries"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not prune the audit log"),
                Err(e) => tracing::warn!(error = %e, "audit prune task failed"),
            }
        }
    })
}

/// Prunes what can no longer be used (the core decides what: see
/// `Auth::prune_expired`), at start and every [`AUTH_PRUNE_INTERVAL`].
fn spawn_auth_pruner(
    auth: Arc<Auth>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(AUTH_PRUNE_INTERVAL);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let a = Arc::clone(&auth);
            let now = latchkey_core::auth::service::now();
            match tokio::task::spawn_blocking(move || a.prune_expired(now)).await {
                Ok(Ok(p)) if p.total() > 0 => tracing::info!(
                    sessions = p.sessions,
                    access_tokens = p.access_tokens,
                    refresh_tokens = p.refresh_tokens,
                    families = p.families,
                    invites = p.invites,
                    "pruned expired sessions and tokens"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not prune expired sessions"),
                Err(e) => tracing::warn!(error = %e, "auth prune task failed"),
            }
        }
    })
}

fn spawn_flusher(
    vault: Arc<Vault>,
    auth: Arc<Auth>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let v = Arc::clone(&vault);
            match tokio::task::spawn_blocking(move || v.flush_last_used()).await {
                Ok(Ok(n)) if n > 0 => tracing::debug!(records = n, "wrote last-used times"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not write last-used times"),
                Err(e) => tracing::warn!(error = %e, "last-used flush task failed"),
            }
            let a = Arc::clone(&auth);
            match tokio::task::spawn_blocking(move || a.flush_key_usage()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not write key last-used times"),
                Err(e) => tracing::warn!(error = %e, "key last-used flush task failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_prefers_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            api_url(&[a("0.0.0.0:8443")], "https"),
            "https://127.0.0.1:8443"
        );
        assert_eq!(api_url(&[a("[::]:9")], "https"), "https://[::1]:9");
        assert_eq!(
            api_url(&[a("192.168.1.2:5"), a("127.0.0.1:6")], "https"),
            "https://127.0.0.1:6"
        );
        assert_eq!(
            api_url(&[a("192.168.1.2:5")], "https"),
            "https://192.168.1.2:5"
        );
        assert_eq!(api_url(&[a("127.0.0.1:7")], "http"), "http://127.0.0.1:7");
    }

    #[test]
    fn plain_banner_shows_http_and_no_ca() {
        let token = SecretString::from("t0k".to_string());
        let bound = ["127.0.0.1:8080".parse::<SocketAddr>().expect("addr")];
        let mut b = Banner {
            data_dir: std::path::Path::new("/data"),
            ca: None,
            scheme: "http",
            public_url: None,
            bound: &bound,
            redirects: &[],
            vault_line: "unsealed (keyfile)".into(),
            setup: Some((&token, Duration::from_secs(3600))),
        };
        let text = banner_text(&b);
        assert!(
            text.contains("Open:           http://localhost:8080/"),
            "{text}"
        );
        assert!(
            text.contains("http://localhost:8080/setup#token=t0k"),
            "{text}"
        );
        assert!(!text.contains("https://"), "{text}");
        assert!(!text.contains("CA"), "{text}");
        assert!(text.contains("server.tls = false"), "{text}");
        b.public_url = Some("https://vault.example");
        let text = banner_text(&b);
        assert!(
            text.contains("Open:           https://vault.example/"),
            "{text}"
        );
        assert!(
            text.contains("https://vault.example/setup#token=t0k"),
            "{text}"
        );
        b.ca = Some(("/data/tls/ca.pem".into(), "AB:CD".into()));
        b.scheme = "https";
        let text = banner_text(&b);
        assert!(
            text.contains("Open:           https://localhost:8080/"),
            "{text}"
        );
        assert!(text.contains("CA SHA-256:     AB:CD"), "{text}");
        assert!(
            text.contains("https://localhost:8080/setup#token="),
            "{text}"
        );
    }
}
