//! Helpers for driving the real `latchkey` binary from tests and benchmarks:
//! a temporary data directory, a clean environment, commands with stdin, and
//! a running server ([`spawn_server`]) with `curl`/`openssl` to talk to it.

mod auth;
mod server;

pub mod caddy;
pub mod cluster;
pub mod desktop;
pub mod nginx;
pub mod oidc;
pub mod peer;
pub mod postgres;
pub mod race;
pub mod ui;
pub mod update;
pub mod webdriver;

pub use auth::{
    Authenticator, Browser, Owner, PASSWORD, auth_config, create_key, invited, oathtool,
    setup_token, totp_code, totp_code_at, totp_secret, uri_param, web_setup,
};

pub use server::{
    RawResponse, Resp, ServeOpts, Server, TlsConn, curl_cmd, first_pem_cert, openssl,
    parse_raw_response, s_client, spawn_server, x509,
};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The `latchkey` binary of this workspace's target directory.
///
/// `cargo test` does not build other packages' binaries, so the test command
/// (`scripts/test.sh`) builds it first; `LATCHKEY_BIN` overrides the path.
pub fn latchkey_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LATCHKEY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-… → target/<profile>/latchkey
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("latchkey");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p latchkey`), or run scripts/test.sh",
        bin.display()
    );
    bin
}

/// A data directory in a temporary folder, removed on drop.
///
/// With `LATCHKEY_TEST_STORE=postgres`, every `latchkey` it runs keeps its
/// data in a fresh PostgreSQL database of its own (on one throwaway server
/// for the test process, [`postgres::PgServer::shared`]) instead of the
/// redb file: the same tests then check the PostgreSQL backend.
pub struct TestDir {
    pub tmp: tempfile::TempDir,
    /// The database every command of this directory uses, if any.
    pub store: Option<postgres::PgDatabase>,
}

/// Whether `LATCHKEY_TEST_STORE=postgres` asks for the PostgreSQL backend.
pub fn test_store_is_postgres() -> bool {
    match std::env::var("LATCHKEY_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("redb") | Ok("") | Err(_) => false,
        Ok(other) => panic!("LATCHKEY_TEST_STORE={other}: expected `postgres` or `redb`"),
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDir {
    pub fn new() -> Self {
        TestDir {
            tmp: tempfile::tempdir().expect("tempdir"),
            store: test_store_is_postgres().then(|| postgres::PgServer::shared().database()),
        }
    }

    /// A data directory whose commands use `db` (another replica of the
    /// same deployment when `db` is shared).
    pub fn on_postgres(db: postgres::PgDatabase) -> Self {
        TestDir {
            tmp: tempfile::tempdir().expect("tempdir"),
            store: Some(db),
        }
    }

    /// The data directory (inside the temporary folder, not yet created).
    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Everything the store holds, to compare before and after a command
    /// that must change nothing (a refused restore): the database file's
    /// bytes, or on PostgreSQL every row of this directory's database.
    pub fn store_state(&self) -> Vec<u8> {
        match &self.store {
            Some(db) => postgres::PgServer::shared()
                .psql(
                    &db.name,
                    "SELECT tbl, encode(k, 'hex'), encode(v, 'hex') FROM latchkey_kv \
                     ORDER BY tbl, k",
                )
                .into_bytes(),
            None => file_bytes(&self.data().join("latchkey.redb")),
        }
    }

    /// `latchkey --data-dir DATA ARGS…` with a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(latchkey_bin());
        c.arg("--data-dir").arg(self.data()).args(args);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("LATCHKEY_LOG", "debug");
        if let Some(db) = &self.store {
            c.env("LATCHKEY_STORE__BACKEND", "postgres")
                .env("LATCHKEY_STORE__URL", db.url());
        }
        c
    }

    /// Runs with `stdin` fed in, waits at most 60 s.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Out {
        run_cmd(self.cmd(args), stdin)
    }

    /// Runs and asserts success.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> Out {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "latchkey {args:?} failed ({:?}):\n{}",
            out.status,
            out.stderr
        );
        out
    }

    /// Runs and asserts failure with exit status 1 and a one-line error.
    pub fn fails(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, stdin);
        assert_eq!(
            out.status.code(),
            Some(1),
            "latchkey {args:?} should fail with status 1; stdout={} stderr={}",
            out.stdout,
            out.stderr
        );
        out.stderr
            .lines()
            .rfind(|l| l.starts_with("latchkey: "))
            .unwrap_or_else(|| panic!("no `latchkey: …` error line in:\n{}", out.stderr))
            .to_string()
    }
}

/// What a finished command printed.
pub struct Out {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Out {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `c` with `stdin`, killing it after 60 s. Output is read while the
/// child runs, so large outputs cannot fill a pipe and stall it.
pub fn run_cmd(c: Command, stdin: &[u8]) -> Out {
    run_cmd_for(c, stdin, Duration::from_secs(60))
}

/// [`run_cmd`] with another time limit. A program that is not installed
/// (`curl`, `openssl`) fails the test with a pointer to the setup script.
pub fn run_cmd_for(mut c: Command, stdin: &[u8], limit: Duration) -> Out {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = c.get_program().to_string_lossy().into_owned();
    let mut child = match c.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed; run scripts/install-deps.sh (it installs every \
             tool the tests use)"
        ),
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    let pid = child.id();
    let input = stdin.to_vec();
    let mut pipe = child.stdin.take().expect("stdin pipe");
    let writer = std::thread::spawn(move || {
        // The child may exit before reading everything (an error); ignore EPIPE.
        let _ = pipe.write_all(&input);
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for the child"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{program} did not finish within {limit:?}");
        }
    };
    let _ = writer.join();
    out.into()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// SHA-256-free fingerprint good enough to see a file did not change.
pub fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Panics with the fix first unless python3 can import `imports` (e.g.
/// `"openai, anthropic"`, the official SDKs `install-deps.sh` installs).
pub fn require_python(imports: &str) {
    match Command::new("python3")
        .args(["-c", &format!("import {imports}")])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the official Python SDKs ({imports}) are not installed ({}); run scripts/install-deps.sh",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 is not runnable ({e}); run scripts/install-deps.sh"),
    }
}

/// `tests/sdk/<script>`.
pub fn sdk_path(script: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sdk")
        .join(script)
}

/// `python3 tests/sdk/<script>` with `LATCHKEY_URL`, `LATCHKEY_KEY` and
/// `LATCHKEY_CA` set, and the environment's proxy settings removed, so an
/// official SDK's traffic stays on loopback. Panics with the fix first if
/// `imports` (e.g. `"openai, anthropic"`) cannot be imported.
pub fn sdk_script(script: &str, imports: &str, url: &str, key: &str, ca: &Path) -> Command {
    require_python(imports);
    let mut c = Command::new("python3");
    c.arg(sdk_path(script))
        .env("LATCHKEY_URL", url)
        .env("LATCHKEY_KEY", key)
        .env("LATCHKEY_CA", ca)
        .env("PYTHONUNBUFFERED", "1");
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        c.env_remove(v);
    }
    c.env("NO_PROXY", "*");
    c
}
