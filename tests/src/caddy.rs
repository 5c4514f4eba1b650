//! A real Caddy (Debian's `/usr/bin/caddy`) in front of Latchkey for
//! end-to-end tests: TLS terminated with Caddy's own internal CA
//! (`tls internal`), a Caddyfile written per test into its temporary
//! folder, `caddy run` in the foreground, killed on drop.
//!
//! Nothing leaves the test's folder or loopback: the admin endpoint is off
//! (tests run side by side and it would take `:2019`), Caddy's data and
//! config directories (`XDG_DATA_HOME`, `XDG_CONFIG_HOME`, and `HOME` for
//! the `.step` folder its CA library creates) are under the folder, its
//! root is never installed into a system trust store
//! (`skip_install_trust`), every certificate comes from the internal CA
//! (`local_certs`: no ACME, no network), and no HTTP→HTTPS redirect server
//! is started, so it binds neither port 80 nor 443 (`auto_https
//! disable_redirects`, and `http_port`/`https_port` set to free ports for
//! good measure). Sites bind `127.0.0.1` only and speak HTTP/1.1 and
//! HTTP/2 (no HTTP/3 UDP socket).
//!
//! [`Client`] talks to either side the way a user's tools would: curl to
//! the proxy's https origin (trusting only Caddy's root) or straight to
//! Latchkey's plain port, from a chosen loopback address, with a cookie
//! jar and an `Origin`.

use crate::peer::Peer;
pub use crate::peer::free_port;
use crate::server::{Resp, curl_answer, curl_cmd};
use crate::{Out, run_cmd_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long Caddy may take to listen and serve its first certificate.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A site block: `https://localhost:PORT` with an internal-CA
/// certificate, reverse-proxying everything to `upstream` (`host:port`,
/// plain HTTP). Caddy's defaults are kept on purpose (that is what users
/// run): it passes `Host` through, and sets `X-Forwarded-For` to the
/// address it was connected from (dropping whatever the client claimed),
/// `X-Forwarded-Proto: https` and `X-Forwarded-Host`.
pub fn reverse_proxy_site(port: u16, upstream: &str) -> String {
    format!(
        "https://localhost:{port} {{\n\tbind 127.0.0.1\n\ttls internal\n\treverse_proxy {upstream}\n}}\n"
    )
}

/// A site block serving the files of `root` as they are, on
/// `https://localhost:PORT` (another origin of the same site as the
/// proxied one).
pub fn static_site(port: u16, root: &Path) -> String {
    format!(
        "https://localhost:{port} {{\n\tbind 127.0.0.1\n\ttls internal\n\troot * {}\n\tfile_server\n}}\n",
        root.display()
    )
}

/// A running `caddy run`. Killed (SIGKILL) and reaped on drop.
pub struct Caddy {
    process: Peer,
    /// The port of the first site (see [`Caddy::start`]).
    pub port: u16,
    home: PathBuf,
    log: PathBuf,
}

impl Caddy {
    /// Writes `DIR/caddy/Caddyfile` (the global options described in the
    /// module doc, then `sites`), starts Caddy with it and waits (at most
    /// 30 s) until `https://localhost:PORT/` completes a TLS handshake
    /// verified against Caddy's root certificate and answers (any status).
    /// `port` is the first site's port (the one tests talk to). Panics
    /// with Caddy's log if it exits or never comes up.
    pub fn start(dir: &Path, port: u16, sites: &str) -> Caddy {
        let home = dir.join("caddy");
        std::fs::create_dir_all(&home).unwrap_or_else(|e| panic!("create {}: {e}", home.display()));
        let caddyfile = format!(
            "{{\n\tadmin off\n\tlocal_certs\n\tskip_install_trust\n\tauto_https disable_redirects\n\
             \thttp_port {}\n\thttps_port {port}\n\tservers {{\n\t\tprotocols h1 h2\n\t}}\n}}\n\n{sites}",
            free_port()
        );
        let path = home.join("Caddyfile");
        std::fs::write(&path, caddyfile).expect("write Caddyfile");
        let log = home.join("caddy.log");
        let mut c = Command::new("caddy");
        c.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path);
        let env = [
            ("HOME", home.as_path()),
            ("XDG_DATA_HOME", &home.join("data")),
            ("XDG_CONFIG_HOME", &home.join("config")),
        ];
        let mut caddy = Caddy {
            process: Peer::spawn(c, &env, &log, "caddy"),
            port,
            home,
            log,
        };
        caddy.wait_ready();
        caddy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        loop {
            if let Some(status) = self.process.try_wait() {
                panic!("caddy exited during startup ({status}):\n{}", self.log());
            }
            if self.root_ca().exists() {
                let out = self.curl(&["-o", "/dev/null", "-w", "%{http_code}"], "/");
                if out.stdout.trim().parse::<u16>().unwrap_or(0) != 0 {
                    return;
                }
                last = out.stderr;
            }
            assert!(
                Instant::now() < deadline,
                "caddy did not serve https://localhost:{} within {START_TIMEOUT:?} (last: {last}):\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `https://localhost:PORT`, the origin browsers and clients use.
    pub fn origin(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The internal CA's root certificate (PEM), the one thing clients are
    /// told to trust.
    pub fn root_ca(&self) -> PathBuf {
        self.home.join("data/caddy/pki/authorities/local/root.crt")
    }

    /// Everything Caddy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `curl -sS --cacert ROOT --resolve localhost:PORT:127.0.0.1 ARGS…
    /// https://localhost:PORT<path>`, limited to 30 s.
    pub fn curl(&self, args: &[&str], path: &str) -> Out {
        let mut c = curl_cmd();
        c.arg("--cacert")
            .arg(self.root_ca())
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", self.port))
            .args(args)
            .arg(format!("{}{path}", self.origin()));
        run_cmd_for(c, b"", Duration::from_secs(40))
    }

    /// Whether Caddy is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.try_wait().is_none()
    }
}

/// Numbers the files each request and cookie jar leave behind.
static SEQ: AtomicUsize = AtomicUsize::new(0);

fn next_seq() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A curl client for one origin: `http://127.0.0.1:PORT` straight to
/// Latchkey, or `https://localhost:PORT` through a proxy (then with the
/// proxy's root certificate and `localhost` pinned to 127.0.0.1).
/// Optionally connects from a given loopback address (`--interface`),
/// keeps cookies in its own jar and sends `Origin` with every request.
pub struct Client {
    base: String,
    cacert: Option<PathBuf>,
    resolve: Option<String>,
    interface: Option<String>,
    jar: Option<PathBuf>,
    /// `Origin` sent with every request; `None` sends none.
    pub origin: Option<String>,
    work: PathBuf,
}

impl Client {
    /// A client of `base` (scheme, host and port) that keeps its request
    /// files under `work`.
    pub fn new(base: &str, work: &Path) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            cacert: None,
            resolve: None,
            interface: None,
            jar: None,
            origin: None,
            work: work.to_path_buf(),
        }
    }

    /// Trusts only `ca` for HTTPS, and resolves `localhost:port` to
    /// 127.0.0.1 (the proxy binds IPv4 loopback only).
    pub fn tls(mut self, ca: &Path, port: u16) -> Client {
        self.cacert = Some(ca.to_path_buf());
        self.resolve = Some(format!("localhost:{port}:127.0.0.1"));
        self
    }

    /// Connects from local address `ip` (e.g. `127.0.0.3`: every
    /// 127.0.0.0/8 address is this host's loopback on Linux).
    pub fn from_ip(mut self, ip: &str) -> Client {
        self.interface = Some(ip.to_string());
        self
    }

    /// Keeps cookies (curl's own `-b`/`-c` jar) and sends `Origin:
    /// <base>` with every request, as a page of the origin itself would.
    pub fn browser(mut self) -> Client {
        let n = next_seq();
        self.jar = Some(self.work.join(format!("client-cookies-{n}.txt")));
        self.origin = Some(self.base.clone());
        self
    }

    /// A request to `path`: `headers` are `Name: value` strings, `body` is
    /// sent as is. A request the server may answer before reading its body
    /// (401, 403) is repeated once over HTTP/1.1 when Debian 12's curl 7.88
    /// reports error 92 for the HTTP/2 stream reset that follows such an
    /// early answer (see `Server::early_request`).
    pub fn request(&self, method: &str, path: &str, headers: &[&str], body: Option<&[u8]>) -> Resp {
        let r = self.request_with(&[], method, path, headers, body);
        if r.status == 0 && body.is_some() && r.body.contains("(92)") {
            return self.request_with(&["--http1.1"], method, path, headers, body);
        }
        r
    }

    fn request_with(
        &self,
        flags: &[&str],
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&[u8]>,
    ) -> Resp {
        let mut c = curl_cmd();
        c.args(flags).args(["-X", method]);
        if let Some(ca) = &self.cacert {
            c.arg("--cacert").arg(ca);
        }
        if let Some(r) = &self.resolve {
            c.args(["--resolve", r]);
        }
        if let Some(ip) = &self.interface {
            c.args(["--interface", ip]);
        }
        if let Some(jar) = &self.jar {
            c.arg("-b").arg(jar).arg("-c").arg(jar);
        }
        if let Some(o) = &self.origin {
            c.arg("-H").arg(format!("Origin: {o}"));
        }
        for h in headers {
            c.args(["-H", h]);
        }
        let url = format!("{}{path}", self.base);
        curl_answer(c, &url, &self.work, body, Duration::from_secs(40))
    }

    pub fn get(&self, path: &str, headers: &[&str]) -> Resp {
        self.request("GET", path, headers, None)
    }

    /// A POST of `json` as `application/json`, with `headers` added.
    pub fn post(&self, path: &str, json: &serde_json::Value, headers: &[&str]) -> Resp {
        let mut h = headers.to_vec();
        h.push("Content-Type: application/json");
        self.request("POST", path, &h, Some(json.to_string().as_bytes()))
    }

    /// The session cookie's value in the jar (`None` if none).
    pub fn cookie(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.jar.as_ref()?).ok()?;
        text.lines()
            .map(|l| l.strip_prefix("#HttpOnly_").unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .find(|f| f.len() == 7 && f[5] == "__Host-latchkey_session")
            .map(|f| f[6].to_string())
            .filter(|v| !v.is_empty())
    }
}
