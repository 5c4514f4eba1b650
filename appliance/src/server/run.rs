//! `latchkey serve`: parse, build the app, add TLS, serve.
//!
//! The core's [`App`] opens the data directory (store, vault, auth), runs
//! every background task and shuts down in its documented order
//! (`latchkey_core::app`). What is only the appliance's stays here: the
//! `--listen` flag, the runtime's flavour, the certificates (made and
//! renewed by [`TlsManager`], handed to the core as a rustls
//! configuration, or none with `server.tls = false`), the admin token
//! file, the startup banner, the signals that end serving (SIGTERM,
//! SIGINT) or reload the configuration (SIGHUP, [`super::reload`]), and
//! what systemd is told ([`super::notify`]).

use super::host::{ApplianceHost, admin_token_path, ensure_admin_token};
use super::notify;
use super::reload::Reloader;
use crate::cli::ServeArgs;
use crate::context::Context;
use crate::logging::Logging;
use crate::tls::TlsManager;
use anyhow::Context as _;
use latchkey_core::app::{App, Shell};
use latchkey_core::config::MasterKeyKind;
use latchkey_core::http::{HostInfo, NoHostInfo, StaticToken};
use latchkey_core::secrecy::{ExposeSecret, SecretString};
use latchkey_core::serve::{Transport, bind};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub fn run(mut ctx: Context, args: ServeArgs, logging: &Logging) -> anyhow::Result<()> {
    let listen_flag = args.listen;
    if !listen_flag.is_empty() {
        ctx.settings.server.listen = listen_flag.clone();
    }
    // Process-wide default for anything that does not pass a provider
    // explicitly; an error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // Blocking setup (file I/O, key generation) before the runtime starts.
    // The core checks the listener rules again (with `--listen` applied)
    // before it creates anything.
    let app = ctx.open_app("serve", true)?;
    if ctx.settings.vault.master_key == MasterKeyKind::Passphrase
        && !app.vault().is_initialized()?
    {
        // Nothing to read the key from: sealed until `latchkey unseal`.
        tracing::warn!(
            "the vault has no passphrase yet; stop the server and run `latchkey vault init`"
        );
    }
    // With `server.tls = false` no certificate is made or needed: a
    // reverse proxy in front (or loopback) provides the transport.
    let tls = if ctx.settings.server.tls {
        Some(TlsManager::new(super::tls_settings(&ctx)?)?)
    } else {
        None
    };
    let token = ensure_admin_token(&ctx.data_dir)?;
    // While no owner exists: a one-time link to create one.
    let setup_token = app.auth().issue_setup_token()?;

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
    let reloader = Reloader {
        global: ctx.global.clone(),
        listen_flag,
        running: Reloader::baseline(&ctx.settings),
        logging,
        tls: tls.clone(),
    };
    let result = runtime.block_on(serve(&ctx, app, tls, token, setup_token, reloader));
    // Whatever still runs (an upgraded connection past the deadline) ends
    // with the runtime, letting go of the database.
    drop(runtime);
    result
}

async fn serve(
    ctx: &Context,
    app: App,
    tls: Option<Arc<TlsManager>>,
    token: SecretString,
    setup_token: Option<SecretString>,
    mut reloader: Reloader<'_>,
) -> anyhow::Result<()> {
    let settings = Arc::clone(app.settings());
    let listeners = settings
        .server
        .listen
        .iter()
        .map(|a| bind(*a))
        .collect::<Result<Vec<_>, _>>()?;
    let redirect_listeners = settings
        .server
        .http_redirect_listen
        .iter()
        .map(|a| bind(*a))
        .collect::<Result<Vec<_>, _>>()?;
    let (transport, host): (Transport, Arc<dyn HostInfo>) = match &tls {
        Some(tls) => (
            Transport::Tls(tls.server_config()?),
            Arc::new(ApplianceHost {
                tls: Arc::clone(tls),
            }),
        ),
        None => (Transport::Plain, Arc::new(NoHostInfo)),
    };
    let source_kind = app.source().kind_name();
    // Handlers go in before the banner: whoever reads it may signal at once.
    let signals = Signals::install()?;
    let running = app.serve(Shell {
        host,
        admin: Arc::new(StaticToken::new(token.expose_secret())),
        transport,
        listeners,
        redirect_listeners,
    })?;
    drop(token);
    // READY=1 when the core says ready, watchdog pings while the accept
    // loops beat (under systemd only).
    let supervisor = notify::spawn_supervisor(running.monitor());
    let maintenance = tls.as_ref().map(|tls| {
        Arc::clone(tls).spawn_maintenance(settings.tls.check_interval, running.stopping())
    });
    print_banner(&Banner {
        data_dir: &ctx.data_dir,
        ca: tls
            .as_ref()
            .map(|t| (t.ca().cert_path().to_path_buf(), t.ca_fingerprint_sha256())),
        scheme: running.scheme().as_str(),
        public_url: settings.server.public_url.as_deref(),
        bound: running.local_addrs(),
        redirects: running.redirect_addrs(),
        vault_line: if running.state().vault.is_sealed() {
            "sealed; unseal it with `latchkey unseal`".to_string()
        } else {
            format!("unsealed ({source_kind})")
        },
        setup: setup_token
            .as_ref()
            .map(|t| (t, settings.auth.setup_token_lifetime)),
    });
    drop(setup_token);

    // Serve until a stop signal (or until a listener fails), then the core
    // shuts down in order; SIGHUP reloads on the way.
    let mut signals = signals;
    let result = running
        .run_until(async {
            loop {
                match signals.recv().await {
                    Ok(Received::Reload) => reloader.reload().await,
                    Ok(Received::Stop(name)) => {
                        tracing::info!(signal = name, "signal received");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for signals failed");
                        break;
                    }
                }
            }
            if let Some(s) = supervisor {
                s.stopping().await;
            }
        })
        .await;
    if let Some(m) = maintenance {
        let _ = m.await;
    }
    Ok(result?)
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

enum Received {
    Stop(&'static str),
    Reload,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    async fn recv(&mut self) -> anyhow::Result<Received> {
        Ok(tokio::select! {
            _ = self.term.recv() => Received::Stop("SIGTERM"),
            _ = self.int.recv() => Received::Stop("SIGINT"),
            _ = self.hup.recv() => Received::Reload,
        })
    }
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
        latchkey_core::update::version()
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
    out.push_str("\nStop with Ctrl-C (SIGINT) or SIGTERM; SIGHUP re-reads the configuration.\n");
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

#[cfg(test)]
mod tests {
    use super::*;

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
