//! A throwaway PostgreSQL server for tests: `initdb` into a temporary
//! directory, `pg_ctl start` on a free loopback port (and a Unix socket in
//! that directory), one fresh database per test.
//!
//! Used by the end-to-end tests (`LATCHKEY_TEST_STORE=postgres`) and, through
//! `#[path]`, by `latchkey-core`'s store tests, so this file needs nothing
//! but `std` and `tempfile`.
//!
//! Every server is stopped and its directory deleted when the test process
//! ends, however it ends: [`PgServer`]'s `Drop` stops it, and a watchdog
//! shell started beside it stops it too once the test process is gone (a
//! panic that aborts, `kill -9`, or the process-wide [`PgServer::shared`]
//! server, which a static never drops). For tests `fsync` is off: the data
//! is thrown away, and the server starts in about a second. Benchmarks start
//! a [`PgServer::start_durable`] one instead, which flushes its WAL on every
//! commit as a production server does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The superuser's password (the server accepts passwords on TCP only).
pub const PG_PASSWORD: &str = "latchkey-test-pw";
/// The superuser's name.
pub const PG_USER: &str = "latchkey";

/// A running PostgreSQL server, stopped and deleted on drop.
pub struct PgServer {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    /// The loopback TCP port.
    pub port: u16,
    /// Run the server's programs as this user (`postgres` refuses root).
    run_as: Option<String>,
    watchdog: Option<std::process::Child>,
}

/// One database on a [`PgServer`].
#[derive(Debug, Clone)]
pub struct PgDatabase {
    pub name: String,
    pub port: u16,
    socket_dir: PathBuf,
}

impl PgDatabase {
    /// `postgres://latchkey:PASSWORD@127.0.0.1:PORT/NAME` (TCP, password).
    pub fn url(&self) -> String {
        format!(
            "postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/{}",
            self.port, self.name
        )
    }

    /// The same database without a password in the URL.
    pub fn url_without_password(&self) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// The libpq key=value form over the Unix socket (trusted, no password).
    pub fn socket_url(&self) -> String {
        format!(
            "host={} port={} user={PG_USER} dbname={}",
            self.socket_dir.display(),
            self.port,
            self.name
        )
    }
}

fn next_id() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The directory holding `initdb`, `pg_ctl` and `psql`: `LATCHKEY_PG_BIN`, or
/// the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout).
pub fn pg_bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("LATCHKEY_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL's server programs are not installed (no /usr/lib/postgresql/*/bin/initdb); \
             run scripts/install-deps.sh, or set LATCHKEY_PG_BIN"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl PgServer {
    /// Starts a new server (at most ~30 s, usually about one), with `fsync`
    /// off: for tests.
    pub fn start() -> PgServer {
        Self::start_with(false)
    }

    /// Starts a new server with PostgreSQL's durable defaults (`fsync`,
    /// `synchronous_commit`, `full_page_writes` on): every commit waits for
    /// its WAL flush, as on a production server. For benchmarks.
    pub fn start_durable() -> PgServer {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> PgServer {
        let bin = pg_bin_dir();
        let run_as = is_root().then(|| "postgres".to_string());
        let dir = tempfile::Builder::new()
            .prefix("latchkey-pg-")
            .tempdir()
            .expect("tempdir for PostgreSQL");
        if run_as.is_some() {
            // The server runs as `postgres` and owns its directory.
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown of the PostgreSQL directory failed");
        }
        let mut server = PgServer {
            dir: Some(dir),
            bin,
            port: 0,
            run_as,
            watchdog: None,
        };
        let pwfile = server.path().join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).expect("write the password file");
        server.chown(&pwfile);
        let data = server.data_dir();
        server.run_ok(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                PG_USER,
                "--pwfile",
                &pwfile.display().to_string(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--encoding=UTF8",
                "--no-locale",
            ],
        );
        server.start_watchdog();
        // A free port can be taken between our probe and the server's bind:
        // try a few.
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            let fast = if durable {
                ""
            } else {
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            };
            let opts = format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} {fast} -c max_connections=200 \
                 -c shared_buffers=16MB",
                server.port,
                server.path().display()
            );
            let log = server.path().join("server.log");
            let out = server.output(
                "pg_ctl",
                &[
                    "-D",
                    &data.display().to_string(),
                    "-l",
                    &log.display().to_string(),
                    "-o",
                    &opts,
                    "-w",
                    "-t",
                    "30",
                    "start",
                ],
            );
            if out.status.success() {
                return server;
            }
            last = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start:\n{last}");
    }

    /// One server for the whole test process, started on first use.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(PgServer::start)
    }

    /// A fresh, empty database on this server.
    pub fn database(&self) -> PgDatabase {
        let name = format!("t{}_{}", std::process::id(), next_id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        PgDatabase {
            name,
            port: self.port,
            socket_dir: self.path().to_path_buf(),
        }
    }

    /// Runs `sql` in `database` as the superuser; panics with psql's
    /// output if it fails. Returns what psql printed (unaligned, tuples
    /// only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self.output(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.path().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
                "-d",
                database,
                "-c",
                sql,
            ],
        );
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pg_dump` of `database` (plain SQL, data included), as bytes.
    pub fn dump(&self, database: &str) -> Vec<u8> {
        let out = self.output(
            "pg_dump",
            &[
                "-h",
                &self.path().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
                database,
            ],
        );
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The server's temporary directory (data, socket, log).
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("server directory").path()
    }

    fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    fn chown(&self, p: &Path) {
        if self.run_as.is_some() {
            let _ = Command::new("chown")
                .arg("postgres:postgres")
                .arg(p)
                .status();
        }
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut c = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        c.env_remove("PGPASSWORD")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGDATABASE")
            .env_remove("PGUSER")
            .current_dir(self.path())
            .stdin(Stdio::null());
        c
    }

    /// Runs a server program with a time limit (60 s), capturing output.
    fn output(&self, program: &str, args: &[&str]) -> std::process::Output {
        let child = self
            .command(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(out) => out.unwrap_or_else(|e| panic!("wait for {program}: {e}")),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!("{program} did not finish within 60 s");
            }
        }
    }

    fn run_ok(&self, program: &str, args: &[&str]) {
        let out = self.output(program, args);
        assert!(
            out.status.success(),
            "{program} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A shell that waits for this test process to end, then stops the
    /// server and deletes its directory: the cleanup that survives a
    /// process that never runs destructors.
    fn start_watchdog(&mut self) {
        let stop = self.stop_script();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop}",
            pid = std::process::id()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL watchdog");
        self.watchdog = Some(child);
    }

    /// Shell words that stop the server (if running) and delete its files.
    fn stop_script(&self) -> String {
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let pg_ctl = quote(&self.bin.join("pg_ctl"));
        let prefix = match &self.run_as {
            Some(u) => format!("runuser -u {u} -- "),
            None => String::new(),
        };
        format!(
            "{prefix}{pg_ctl} -D {data} -m immediate -w -t 20 stop >/dev/null 2>&1; rm -rf {dir}",
            data = quote(&self.data_dir()),
            dir = quote(self.path())
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let script = self.stop_script();
        let deadline = Instant::now() + Duration::from_secs(30);
        if let Ok(mut child) = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        // The script deleted the directory; `TempDir` tolerates that.
        drop(self.dir.take());
    }
}
