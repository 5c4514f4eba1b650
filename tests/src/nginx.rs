//! A real nginx (Debian's `/usr/sbin/nginx`) balancing plain HTTP over
//! several `latchkey serve` replicas, round-robin, on loopback, for the
//! multi-replica tests.
//!
//! Everything stays in the test's folder: the configuration, the pid file,
//! the logs and the temporary directories nginx would otherwise put under
//! `/var/lib/nginx` (`-p` prefix, `-e` for the startup error log). It runs
//! in the foreground as one process (`daemon off`, `master_process off`)
//! and is killed (SIGKILL, then reaped) on drop. It binds `127.0.0.1`
//! only.
//!
//! The proxy behaves as a typical deployment's would: it replaces
//! `X-Forwarded-For` with the address it was connected from, passes
//! `Host`, and retries a request on the next replica only when the
//! failed one is idempotent (nginx's default `proxy_next_upstream error
//! timeout`, no `non_idempotent`): a POST cut off by a dying replica
//! reaches the client as 502, never twice.

use crate::peer::{Peer, free_port};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long nginx may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running nginx. Killed (SIGKILL) and reaped on drop.
pub struct Nginx {
    process: Peer,
    /// The port clients talk to (`http://127.0.0.1:PORT`).
    pub port: u16,
    log: PathBuf,
}

/// The `nginx.conf` for `upstreams` (`host:port` each) behind
/// `127.0.0.1:port`, with every path under `prefix`.
pub fn config(prefix: &Path, port: u16, upstreams: &[String]) -> String {
    let p = prefix.display();
    let servers: String = upstreams
        .iter()
        .map(|u| format!("    server {u} max_fails=1 fail_timeout=1s;\n"))
        .collect();
    // One process (no master forking workers): killing it on drop leaves
    // nothing behind, and it never switches to a user who could not enter
    // the test's 0700 folder.
    format!(
        "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n  access_log {p}/access.log;\n\
         client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n\
         fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n\
         scgi_temp_path {p}/tmp/scgi;\n\
         upstream latchkey {{\n{servers}  }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 10m;\n\
         location / {{\n      proxy_pass http://latchkey;\n      proxy_http_version 1.1;\n\
         proxy_set_header Host $http_host;\n      proxy_set_header X-Forwarded-For $remote_addr;\n\
         proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_buffering off;\n\
         proxy_read_timeout 60s;\n    }}\n  }}\n}}\n"
    )
}

impl Nginx {
    /// Writes `DIR/nginx/nginx.conf` for `upstreams`, starts nginx and
    /// waits (at most 20 s) until it accepts connections. Panics with its
    /// error log if it exits or never listens.
    pub fn start(dir: &Path, upstreams: &[String]) -> Nginx {
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("tmp"))
            .unwrap_or_else(|e| panic!("create {}: {e}", prefix.display()));
        let port = free_port();
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config(&prefix, port, upstreams)).expect("write nginx.conf");
        let log = prefix.join("error.log");
        let mut c = Command::new("/usr/sbin/nginx");
        c.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&log);
        let mut nginx = Nginx {
            process: Peer::spawn(c, &[], &prefix.join("nginx.out"), "nginx"),
            port,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = nginx.process.try_wait() {
                panic!("nginx exited during startup ({status}):\n{}", nginx.log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}:\n{}",
                nginx.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything nginx logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
