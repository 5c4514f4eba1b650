//! A running `latchkey serve` for end-to-end tests, and the outside tools
//! (`curl`, `openssl`) that talk to it the way a user's would.
//!
//! [`spawn_server`] starts the real binary on `127.0.0.1:0`, learns the port
//! from its startup banner (cross-checked with the lock file), waits until
//! `/health` answers and returns a [`Server`]. Its output goes to files in
//! the test's temporary folder so tests can read the logs afterwards. A
//! `Server` that goes out of scope is killed (SIGKILL), so no test leaves a
//! process behind, even when it panics.

use crate::{Out, TestDir, run_cmd_for};
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to come up (first start generates keys).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Numbers the files each server run and each request leave behind.
static SEQ: AtomicUsize = AtomicUsize::new(0);

fn next_seq() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// How to start a server. Everything is optional.
#[derive(Debug, Clone)]
pub struct ServeOpts {
    /// `--listen` value.
    pub listen: String,
    /// Extra arguments after `serve --listen ADDR` (global flags such as
    /// `--log-format json` are accepted there too).
    pub args: Vec<String>,
    /// Extra environment variables (the environment is otherwise clean).
    pub env: Vec<(String, String)>,
    /// Variables the clean environment would have that are removed
    /// (e.g. `LATCHKEY_LOG`, to let `log.level` decide).
    pub unset: Vec<String>,
    /// Written to `DATA_DIR/latchkey.toml` before starting, if set.
    pub config: Option<String>,
    /// Trust this CA file instead of the data directory's own CA (for a
    /// user-provided certificate).
    pub ca_file: Option<PathBuf>,
}

impl Default for ServeOpts {
    fn default() -> Self {
        ServeOpts {
            listen: "127.0.0.1:0".into(),
            args: Vec::new(),
            env: Vec::new(),
            unset: Vec::new(),
            config: None,
            ca_file: None,
        }
    }
}

impl ServeOpts {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn unset(mut self, k: &str) -> Self {
        self.unset.push(k.to_string());
        self
    }

    pub fn ca_file(mut self, p: &Path) -> Self {
        self.ca_file = Some(p.to_path_buf());
        self
    }
}

impl TestDir {
    /// Writes `DATA_DIR/latchkey.toml`, creating the data directory (0700).
    pub fn write_config(&self, toml: &str) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.data())
            .expect("create data dir");
        std::fs::write(self.data().join("latchkey.toml"), toml).expect("write latchkey.toml");
    }

    /// `latchkey serve` with default options.
    pub fn serve(&self) -> Server {
        spawn_server(self, &ServeOpts::default())
    }
}

/// A `latchkey serve` process. Killed with SIGKILL on drop if still running.
pub struct Server {
    child: Child,
    exit: Option<ExitStatus>,
    /// The server's process id.
    pub pid: u32,
    /// The bound port.
    pub port: u16,
    /// `https`, or `http` for a `server.tls = false` server (read from the
    /// lock file's `api_url`).
    pub scheme: &'static str,
    data: PathBuf,
    work: PathBuf,
    ca: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

/// Starts `latchkey --data-dir D serve --listen 127.0.0.1:0 …` and waits
/// (at most 30 s) until it prints its banner and `/health` answers.
/// Panics with the server's stderr if it exits or never comes up.
pub fn spawn_server(d: &TestDir, opts: &ServeOpts) -> Server {
    if let Some(cfg) = &opts.config {
        d.write_config(cfg);
    }
    let n = next_seq();
    let stdout_path = d.path().join(format!("serve-{n}.stdout"));
    let stderr_path = d.path().join(format!("serve-{n}.stderr"));
    let mut c = d.cmd(&["serve", "--listen", &opts.listen]);
    c.args(&opts.args);
    for (k, v) in &opts.env {
        c.env(k, v);
    }
    for k in &opts.unset {
        c.env_remove(k);
    }
    c.stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("create stdout file"))
        .stderr(File::create(&stderr_path).expect("create stderr file"));
    let child = c.spawn().expect("spawn latchkey serve");
    let mut server = Server {
        pid: child.id(),
        child,
        exit: None,
        port: 0,
        scheme: "https",
        data: d.data(),
        work: d.path().to_path_buf(),
        ca: opts
            .ca_file
            .clone()
            .unwrap_or_else(|| d.path().join(format!("ca-export-{n}.pem"))),
        stdout_path,
        stderr_path,
    };
    server.port = server.wait_for_banner();
    if opts.ca_file.is_none() && server.scheme == "https" {
        // The user's way to get the CA, while the server runs.
        let out = d.ok(&["tls", "export-ca"], b"");
        std::fs::write(&server.ca, out.stdout).expect("write exported CA");
    }
    server.wait_healthy();
    server
}

impl Server {
    /// Waits for the complete banner on stdout and returns the port it
    /// names, after checking the lock file advertises the same URL.
    fn wait_for_banner(&mut self) -> u16 {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "latchkey serve exited during startup ({status}):\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            let out = self.stdout();
            // The banner is written in one piece and ends with this line.
            if out.contains("Stop with Ctrl-C") {
                let port = out
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Listening on:"))
                    .and_then(|l| l.split(',').next())
                    .and_then(|a| a.trim().rsplit_once(':'))
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .unwrap_or_else(|| panic!("no `Listening on:` port in the banner:\n{out}"));
                let lock = self.lock_file();
                assert_eq!(lock["pid"], self.pid, "lock file names another process");
                let api_url = lock["api_url"].as_str().unwrap_or_default();
                self.scheme = if api_url.starts_with("http://") {
                    "http"
                } else {
                    "https"
                };
                assert_eq!(
                    api_url,
                    format!("{}://127.0.0.1:{port}", self.scheme),
                    "lock file and banner disagree"
                );
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "latchkey serve printed no banner within {START_TIMEOUT:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let r = self.get("/health");
            if r.status == 200 {
                return;
            }
            assert!(
                self.try_wait().is_none(),
                "latchkey serve exited; stderr:\n{}",
                self.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "/health did not answer 200 within {START_TIMEOUT:?} (last: {} {}); stderr:\n{}",
                r.status,
                r.body,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `DATA_DIR/latchkey.lock` as JSON.
    pub fn lock_file(&self) -> serde_json::Value {
        let path = self.data.join("latchkey.lock");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("lock file {text:?}: {e}"))
    }

    /// `https://localhost:PORT` (the name the certificate covers), or
    /// `http://localhost:PORT` for a plain server.
    pub fn url(&self) -> String {
        format!("{}://localhost:{}", self.scheme, self.port)
    }

    /// The test's temporary folder (request and log files go there).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// The CA file requests are verified against.
    pub fn ca_pem(&self) -> &Path {
        &self.ca
    }

    /// The admin token `serve` wrote to `DATA_DIR/admin.token`.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .expect("read admin.token")
            .trim()
            .to_string()
    }

    /// Everything the server wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the server wrote to stderr (its logs) so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", self.pid);
    }

    /// Sends SIGHUP (what `systemctl reload` does, through `ExecReload=`).
    pub fn sighup(&self) {
        self.signal("-HUP");
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGINT (what Ctrl-C does).
    pub fn sigint(&self) {
        self.signal("-INT");
    }

    /// Sends SIGKILL without waiting (usable while other threads still
    /// send requests); [`Server::kill9`] reaps it.
    pub fn sigkill(&self) {
        self.signal("-KILL");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then asserts a clean exit (status 0) within 30 s.
    pub fn stop(&mut self) {
        self.sigterm();
        let status = self
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("server did not stop within 30 s:\n{}", self.stderr()));
        assert!(
            status.success(),
            "server exited with {status}:\n{}",
            self.stderr()
        );
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.exit = Some(self.child.wait().expect("wait after kill"));
        }
    }

    /// `curl -sS --cacert CA ARGS…` for this server (`localhost` resolves to
    /// 127.0.0.1, where it listens). Every transfer is limited to 30 s.
    pub fn curl(&self, args: &[&str], stdin: &[u8]) -> Out {
        let mut c = self.curl_command();
        c.args(args);
        run_cmd_for(c, stdin, Duration::from_secs(60))
    }

    /// [`curl_cmd`] trusting this server's CA, `localhost` on 127.0.0.1.
    fn curl_command(&self) -> Command {
        let mut c = curl_cmd();
        c.arg("--cacert")
            .arg(&self.ca)
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", self.port));
        c
    }

    /// A request to `path`: `headers` are `Name: value` strings, `body` is
    /// sent as is (no content type is added).
    pub fn request(&self, method: &str, path: &str, headers: &[&str], body: Option<&[u8]>) -> Resp {
        self.request_with(&[], method, path, headers, body)
    }

    /// [`Server::request`] with extra curl flags (e.g. `--http1.1`).
    pub fn request_with(
        &self,
        curl_flags: &[&str],
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&[u8]>,
    ) -> Resp {
        let mut c = self.curl_command();
        c.args(curl_flags).args(["-X", method]);
        for h in headers {
            c.args(["-H", h]);
        }
        let url = format!("{}{path}", self.url());
        curl_answer(c, &url, &self.work, body, Duration::from_secs(60))
    }

    /// `GET path` without credentials.
    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], None)
    }

    /// An admin API call: bearer token, and a JSON body if given.
    pub fn api(&self, method: &str, path: &str, json: Option<&str>) -> Resp {
        let auth = format!("Authorization: Bearer {}", self.admin_token());
        let mut headers = vec![auth.as_str()];
        if json.is_some() {
            headers.push("Content-Type: application/json");
        }
        self.request(method, path, &headers, json.map(str::as_bytes))
    }

    /// `openssl s_client -connect 127.0.0.1:PORT ARGS…` with no input: the
    /// handshake, then a clean close.
    pub fn s_client(&self, args: &[&str]) -> Out {
        s_client(self.port, args)
    }

    /// The leaf certificate the server presents for `localhost` (PEM).
    pub fn served_cert(&self) -> String {
        let out = self.s_client(&["-servername", "localhost", "-showcerts"]);
        first_pem_cert(&out.stdout).unwrap_or_else(|| {
            panic!(
                "no certificate from the server:\n{}\n{}",
                out.stdout, out.stderr
            )
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP response as curl saw it. `status` 0 means no response at all
/// (then `body` holds curl's error).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Lower-cased names, in order, of the final response's headers.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {:?}", self.status, self.body))
    }

    /// The `error` code of an error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` in {}", self.body))
            .to_string()
    }
}

/// Headers of the last response in a `curl -D` dump (skipping `100
/// Continue` and the like).
pub(crate) fn parse_headers(dump: &str) -> Vec<(String, String)> {
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

/// Runs `c` (curl with its options, but no output options and no URL)
/// on `url`, sending `body` if any, and reads the answer: status, the
/// last response's headers and the body; status 0 with curl's error when
/// no answer came. The files it uses under `work` are removed.
pub fn curl_answer(
    mut c: Command,
    url: &str,
    work: &Path,
    body: Option<&[u8]>,
    limit: Duration,
) -> Resp {
    let n = next_seq();
    let body_file = work.join(format!("curl-{n}.body"));
    let head_file = work.join(format!("curl-{n}.head"));
    c.args(["-w", "%{http_code}", "-o"])
        .arg(&body_file)
        .arg("-D")
        .arg(&head_file);
    if body.is_some() {
        c.args(["--data-binary", "@-"]);
    }
    c.arg(url);
    let out = run_cmd_for(c, body.unwrap_or_default(), limit);
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

/// `curl -sS --max-time 30`.
pub fn curl_cmd() -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30"]);
    c
}

/// `openssl s_client -connect 127.0.0.1:PORT ARGS…`, stdin closed at once.
pub fn s_client(port: u16, args: &[&str]) -> Out {
    let mut c = Command::new("openssl");
    c.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(args);
    run_cmd_for(c, b"", Duration::from_secs(30))
}

/// `openssl ARGS…` with `stdin`; asserts success.
pub fn openssl(args: &[&str], stdin: &[u8]) -> Out {
    let mut c = Command::new("openssl");
    c.args(args);
    let out = run_cmd_for(c, stdin, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        out.stderr
    );
    out
}

/// The first `BEGIN CERTIFICATE` block in `text`.
pub fn first_pem_cert(text: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find(BEGIN)?;
    let len = text[start..].find(END)? + END.len();
    Some(format!("{}\n", &text[start..start + len]))
}

/// `openssl x509 -noout ARGS` on a PEM certificate, e.g. `-serial`.
pub fn x509(pem: &str, args: &[&str]) -> String {
    let mut all = vec!["x509", "-noout"];
    all.extend_from_slice(args);
    openssl(&all, pem.as_bytes()).stdout
}

/// A raw HTTPS connection through `openssl s_client`: the test writes the
/// request bytes itself, as slowly or as incompletely as it likes, and reads
/// what the server sends back. Killed on drop.
pub struct TlsConn {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    err: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl TlsConn {
    /// Connects to `127.0.0.1:port` as `localhost`, verifying against
    /// `ca`, and waits (at most 10 s) until the handshake is done.
    pub fn open(port: u16, ca: &Path) -> TlsConn {
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args([
                "-servername",
                "localhost",
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(ca)
            .args(["-brief", "-ign_eof", "-nocommands"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}); run scripts/install-deps.sh"));
        let pump = |mut r: Box<dyn std::io::Read + Send>| {
            let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = std::sync::Arc::clone(&buf);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
            });
            buf
        };
        let out = pump(Box::new(child.stdout.take().expect("stdout")));
        let err = pump(Box::new(child.stderr.take().expect("stderr")));
        let stdin = child.stdin.take();
        let mut conn = TlsConn {
            child,
            stdin,
            out,
            err,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !conn.stderr().contains("CONNECTION ESTABLISHED") {
            assert!(
                Instant::now() < deadline && conn.child.try_wait().ok().flatten().is_none(),
                "TLS handshake with 127.0.0.1:{port} failed: {}",
                conn.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        conn
    }

    /// Writes `bytes` to the connection.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("input still open");
        stdin.write_all(bytes).expect("write to s_client");
        stdin.flush().expect("flush");
    }

    /// What the server sent so far.
    pub fn received(&self) -> Vec<u8> {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits up to `limit` for the server to close the connection; returns
    /// whether it did.
    pub fn wait_closed(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.child.try_wait().ok().flatten().is_some() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// Parses `bytes` as one complete HTTP/1.1 response (with Content-Length),
/// or `None` if it is not complete yet.
pub fn parse_raw_response(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())?;
    let body = bytes.get(end + 4..end + 4 + len)?.to_vec();
    Some(RawResponse { status, head, body })
}
