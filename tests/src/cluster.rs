//! Several `latchkey serve` replicas on one PostgreSQL database behind a
//! real nginx, round-robin, all on loopback: the deployment `docs/SCALE.md`
//! describes, for end-to-end tests.
//!
//! Each replica has its own data directory (its own lock file, admin token
//! and logs) and the same configuration: `server.tls = false` (the load
//! balancer speaks plain HTTP to it), `auth.trusted_proxies =
//! ["127.0.0.1/32"]` (nginx connects from there), one master-key file
//! shared by all, and `[store] backend = "postgres"` with the test
//! database's URL. The first replica starts alone (it creates the master
//! key and the schema), the others after it.
//!
//! [`Cluster::client`] talks to one replica's own port, so a test can pin
//! which replica serves a request; [`Cluster::balanced`] goes through
//! nginx. Every process is killed on drop (the replicas by `Server`,
//! nginx by `Nginx`, PostgreSQL by its harness).

use crate::caddy::Client;
use crate::nginx::Nginx;
use crate::postgres::{PgDatabase, PgServer};
use crate::{Resp, ServeOpts, Server, TestDir, auth_config, spawn_server};

/// A running cluster; see the module docs.
pub struct Cluster {
    /// The replicas (`None` once killed with [`Cluster::kill`]).
    pub replicas: Vec<Option<Server>>,
    pub nginx: Nginx,
    pub db: PgDatabase,
    dirs: Vec<TestDir>,
    /// Holds the shared master key and nginx's files.
    pub work: TestDir,
    /// Every replica's `latchkey.toml`.
    config: String,
}

/// The configuration every replica shares (see the module docs).
fn config(key_file: &std::path::Path, db: &PgDatabase, auth: &str) -> String {
    format!(
        "[vault]\nkey_file = \"{}\"\n\n[store]\nbackend = \"postgres\"\nurl = \"{}\"\n\n{}",
        key_file.display(),
        db.url(),
        auth_config(&format!("trusted_proxies = [\"127.0.0.1/32\"]\n{auth}"))
    )
}

/// Starts a replica in `dir` with `config`.
fn spawn(dir: &TestDir, config: &str) -> Server {
    let opts = ServeOpts::new()
        .config(config)
        .env("LATCHKEY_SERVER__TLS", "false");
    spawn_server(dir, &opts)
}

impl Cluster {
    /// `n` replicas behind nginx, with `auth` lines added to `[auth]`
    /// (see [`auth_config`]).
    pub fn start(n: usize, auth: &str) -> Cluster {
        Cluster::start_with(n, auth, "")
    }

    /// [`Cluster::start`] with `extra` sections appended to every
    /// replica's configuration (e.g. `[proxy]`, `[providers.…]`).
    pub fn start_with(n: usize, auth: &str, extra: &str) -> Cluster {
        assert!(n >= 1, "a cluster has at least one replica");
        let db = PgServer::shared().database();
        let work = TestDir::new();
        let config = format!(
            "{}\n{extra}",
            config(&work.path().join("master.key"), &db, auth)
        );
        let dirs: Vec<TestDir> = (0..n).map(|_| TestDir::new()).collect();
        // One after the other: the first creates the master key and the
        // schema, the others find them.
        let replicas: Vec<Option<Server>> = dirs.iter().map(|d| Some(spawn(d, &config))).collect();
        let upstreams: Vec<String> = replicas
            .iter()
            .flatten()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let nginx = Nginx::start(work.path(), &upstreams);
        Cluster {
            replicas,
            nginx,
            db,
            dirs,
            work,
            config,
        }
    }

    /// Starts replica `i` again (after [`Cluster::kill`]), on a new port:
    /// reachable directly, not through nginx.
    pub fn restart(&mut self, i: usize) -> &Server {
        assert!(self.replicas[i].is_none(), "replica {i} is running");
        let s = spawn(&self.dirs[i], &self.config);
        self.replicas[i] = Some(s);
        self.replica(i)
    }

    /// Replica `i`, which must be running.
    pub fn replica(&self, i: usize) -> &Server {
        self.replicas[i]
            .as_ref()
            .unwrap_or_else(|| panic!("replica {i} was killed"))
    }

    /// How many replicas the cluster was started with.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// A client of replica `i`'s own port.
    pub fn client(&self, i: usize) -> Client {
        let s = self.replica(i);
        Client::new(&format!("http://127.0.0.1:{}", s.port), s.work_dir())
    }

    /// A client of nginx, which spreads requests over the replicas.
    pub fn balanced(&self) -> Client {
        Client::new(&self.nginx.url(), self.work.path())
    }

    /// SIGKILL replica `i` (no chance to clean up) and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.replicas[i].take() {
            s.kill9();
        }
    }

    /// Everything every replica logged, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.replicas.iter().enumerate() {
            if let Some(s) = s {
                out.push_str(&format!("--- replica {i} stderr:\n{}\n", s.stderr()));
            }
        }
        out.push_str(&format!("--- nginx:\n{}\n", self.nginx.log()));
        out
    }
}

/// The session cookie a response set (`__Host-latchkey_session`).
pub fn session_cookie(r: &Resp) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find_map(|(_, v)| {
            v.strip_prefix("__Host-latchkey_session=")
                .and_then(|rest| rest.split(';').next())
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        })
}
