//! `latchkey serve` with `server.tls = false` (plain HTTP, as behind a
//! TLS-terminating reverse proxy), and a curl client for any origin —
//! Latchkey's plain port or a proxy in front of it — that can connect from
//! a chosen loopback address, keep a cookie jar and send an `Origin`.
//!
//! [`PlainServer`] starts the real binary with `LATCHKEY_SERVER__TLS=false`
//! (the environment name scripts rely on), learns the port from its startup
//! banner, waits until `/health` answers over plain HTTP and is killed
//! (SIGKILL) on drop, so no test leaves a process behind.

use crate::server::{Resp, curl_cmd};
use crate::{TestDir, run_cmd_for};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to come up (first start generates keys).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Numbers the files each server run and each request leave behind.
static SEQ: AtomicUsize = AtomicUsize::new(0);

fn next_seq() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A `latchkey serve` speaking plain HTTP. Killed with SIGKILL on drop.
pub struct PlainServer {
    child: Child,
    exit: Option<ExitStatus>,
    pub pid: u32,
    /// The bound port (plain HTTP).
    pub port: u16,
    data: PathBuf,
    work: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl PlainServer {
    /// `latchkey --data-dir D serve --listen LISTEN` with
    /// `LATCHKEY_SERVER__TLS=false` and `env` added to the clean
    /// environment, after writing `config` to `DATA_DIR/latchkey.toml`.
    /// Waits (at most 30 s) for the banner and a 200 from `/health`;
    /// panics with the server's output if it exits or never comes up.
    pub fn spawn(d: &TestDir, listen: &str, config: &str, env: &[(&str, &str)]) -> PlainServer {
        d.write_config(config);
        let n = next_seq();
        let stdout_path = d.path().join(format!("plain-serve-{n}.stdout"));
        let stderr_path = d.path().join(format!("plain-serve-{n}.stderr"));
        let mut c = d.cmd(&["serve", "--listen", listen]);
        c.env("LATCHKEY_SERVER__TLS", "false");
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create stdout file"))
            .stderr(File::create(&stderr_path).expect("create stderr file"));
        let child = c.spawn().expect("spawn latchkey serve");
        let mut s = PlainServer {
            pid: child.id(),
            child,
            exit: None,
            port: 0,
            data: d.data(),
            work: d.path().to_path_buf(),
            stdout_path,
            stderr_path,
        };
        s.port = s.wait_for_banner();
        s.wait_healthy();
        s
    }

    fn wait_for_banner(&mut self) -> u16 {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "latchkey serve (plain) exited during startup ({status}):\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            let out = self.stdout();
            // The banner is written in one piece and ends with this line.
            if out.contains("Stop with Ctrl-C") {
                return out
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Listening on:"))
                    .and_then(|l| l.split(',').next())
                    .and_then(|a| a.trim().rsplit_once(':'))
                    .and_then(|(_, p)| p.trim_end_matches('/').parse::<u16>().ok())
                    .unwrap_or_else(|| panic!("no `Listening on:` port in the banner:\n{out}"));
            }
            assert!(
                Instant::now() < deadline,
                "latchkey serve (plain) printed no banner within {START_TIMEOUT:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = Client::new(&self.url(), &self.work);
        loop {
            let r = client.get("/health", &[]);
            if r.status == 200 {
                return;
            }
            assert!(
                self.try_wait().is_none(),
                "latchkey serve (plain) exited; stderr:\n{}",
                self.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "/health did not answer 200 over plain HTTP within {START_TIMEOUT:?} (last: {} {}); stderr:\n{}",
                r.status,
                r.body,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `DATA_DIR/latchkey.lock` as JSON.
    pub fn lock_file(&self) -> serde_json::Value {
        let path = self.data.join("latchkey.lock");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("lock file {text:?}: {e}"))
    }

    /// The admin token `serve` wrote to `DATA_DIR/admin.token`.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .expect("read admin.token")
            .trim()
            .to_string()
    }

    /// The one-time setup token the banner prints while no owner exists,
    /// with the origin of the link it is printed in.
    pub fn setup_link(&self) -> (String, String) {
        let out = self.stdout();
        let (before, rest) = out
            .split_once("/setup#token=")
            .unwrap_or_else(|| panic!("no `/setup#token=` in the banner:\n{out}"));
        let origin = before
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or_default()
            .to_string();
        let token = rest
            .split(|c: char| c.is_whitespace() || c == ')')
            .next()
            .unwrap_or_default()
            .to_string();
        (origin, token)
    }

    /// Everything the server wrote to stdout so far (its banner).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the server wrote to stderr (its logs) so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// SIGTERM, then asserts a clean exit (status 0) within 30 s.
    pub fn stop(&mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.try_wait() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop within 30 s:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "server exited with {status}:\n{}",
            self.stderr()
        );
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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
        self.jar = Some(self.work.join(format!("plain-cookies-{n}.txt")));
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
        let n = next_seq();
        let body_file = self.work.join(format!("plain-curl-{n}.body"));
        let head_file = self.work.join(format!("plain-curl-{n}.head"));
        let mut c = curl_cmd();
        c.args(flags)
            .args(["-X", method, "-w", "%{http_code}", "-o"])
            .arg(&body_file)
            .arg("-D")
            .arg(&head_file);
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
        if body.is_some() {
            c.args(["--data-binary", "@-"]);
        }
        c.arg(format!("{}{path}", self.base));
        let out = run_cmd_for(c, body.unwrap_or_default(), Duration::from_secs(40));
        let status: u16 = out.stdout.trim().parse().unwrap_or(0);
        let head = std::fs::read_to_string(&head_file).unwrap_or_default();
        let text = std::fs::read_to_string(&body_file).unwrap_or_default();
        let _ = std::fs::remove_file(&head_file);
        let _ = std::fs::remove_file(&body_file);
        if status == 0 {
            return Resp {
                status: 0,
                headers: Vec::new(),
                body: out.stderr,
            };
        }
        Resp {
            status,
            headers: parse_headers(&head),
            body: text,
        }
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

/// Headers of the last response in a `curl -D` dump (lower-cased names).
fn parse_headers(dump: &str) -> Vec<(String, String)> {
    let last = dump
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or_default();
    last.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}
