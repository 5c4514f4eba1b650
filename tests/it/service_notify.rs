//! The server under a service manager, seen from outside: what it tells
//! systemd through a real `NOTIFY_SOCKET` (a datagram socket the test binds,
//! as systemd does) — `READY=1` only once `/ready` holds, `STATUS=`,
//! `WATCHDOG=1` at the asked interval, `STOPPING=1` on shutdown — and what
//! a real SIGHUP (`systemctl reload`) changes.

use latchkey_e2e::{ServeOpts, Server, TestDir, spawn_server};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The systemd side of the protocol: a bound datagram socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(d: &TestDir) -> Self {
        let path = d.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Receives messages until one satisfies `want` or `within` passes;
    /// returns that message.
    fn wait_for(&mut self, within: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if want(&msg) {
                    return Some(msg);
                }
            }
        }
        None
    }

    /// Everything received for `during`.
    fn collect(&mut self, during: Duration) -> Vec<String> {
        let start = self.seen.len();
        let _ = self.wait_for(during, |_| false);
        self.seen[start..].to_vec()
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn serve_notified(d: &TestDir, n: &NotifySocket, opts: ServeOpts) -> Server {
    let opts = opts
        .env("NOTIFY_SOCKET", n.path.to_str().expect("utf-8 path"))
        // 600 ms: pings every 200 ms.
        .env("WATCHDOG_USEC", "600000");
    spawn_server(d, &opts)
}

#[test]
fn notifies_ready_pings_the_watchdog_and_says_stopping() {
    let d = TestDir::new();
    let mut n = NotifySocket::bind(&d);
    let mut s = serve_notified(&d, &n, ServeOpts::new());
    let ready = n
        .wait_for(Duration::from_secs(30), |m| has_line(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}\n{}", n.seen, s.stderr()));
    assert!(has_line(&ready, "STATUS=ready"), "{ready:?}");
    let r = s.get("/ready");
    assert_eq!(r.status, 200, "READY=1 was sent, so /ready must agree");

    let pings = n
        .collect(Duration::from_millis(1500))
        .iter()
        .filter(|m| has_line(m, "WATCHDOG=1"))
        .count();
    assert!(
        (4..=12).contains(&pings),
        "{pings} pings in 1.5 s at 600 ms"
    );
    let readies = n.seen.iter().filter(|m| has_line(m, "READY=1")).count();
    assert_eq!(readies, 1, "READY=1 is sent once: {:?}", n.seen);

    s.sigterm();
    let stopping = n.wait_for(Duration::from_secs(10), |m| has_line(m, "STOPPING=1"));
    assert!(stopping.is_some(), "no STOPPING=1; got {:?}", n.seen);
    s.stop();
}

#[test]
fn a_sealed_vault_is_not_ready_until_unsealed() {
    const PASS: &str = "correct horse battery staple";
    let d = TestDir::new();
    let config = "[vault]\nmaster_key = \"passphrase\"\n";
    d.write_config(config);
    d.ok(
        &["vault", "init", "--passphrase-stdin"],
        format!("{PASS}\n").as_bytes(),
    );
    let mut n = NotifySocket::bind(&d);
    let mut s = serve_notified(&d, &n, ServeOpts::new());

    // Alive (pinging) but not ready, and the status says why.
    let seen = n.collect(Duration::from_secs(2));
    assert!(
        !seen.iter().any(|m| has_line(m, "READY=1")),
        "READY=1 while sealed: {seen:?}"
    );
    assert!(seen.iter().any(|m| has_line(m, "WATCHDOG=1")), "{seen:?}");
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=not ready (vault: the vault is sealed")),
        "{seen:?}"
    );
    assert_eq!(s.get("/ready").status, 503);

    let body = serde_json::json!({ "passphrase": PASS }).to_string();
    let r = s.request(
        "POST",
        "/api/vault/unseal",
        &["Content-Type: application/json"],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let ready = n.wait_for(Duration::from_secs(10), |m| has_line(m, "READY=1"));
    assert!(ready.is_some(), "no READY=1 after unsealing: {:?}", n.seen);
    assert_eq!(s.get("/ready").status, 200);
    s.stop();
}

fn wait_for_log(s: &Server, within: Duration, want: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if s.stderr().lines().any(&want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn sighup_reloads_the_log_level_names_restart_keys_and_survives_a_bad_file() {
    let d = TestDir::new();
    let base = "[log]\nlevel = \"info\"\nformat = \"json\"\n";
    let s = spawn_server(&d, &ServeOpts::new().config(base).unset("LATCHKEY_LOG"));
    let probe_logged = |s: &Server| {
        s.stderr()
            .lines()
            .any(|l| l.contains("request finished") && l.contains("/health"))
    };
    assert_eq!(s.get("/health").status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!probe_logged(&s), "probes are debug lines: not at info");

    // Debug logging, plus a key that needs a restart.
    d.write_config(
        "[log]\nlevel = \"debug\"\nformat = \"json\"\n[server]\nidle_timeout = \"7m\"\n",
    );
    s.sighup();
    assert!(
        wait_for_log(&s, Duration::from_secs(10), |l| l
            .contains("configuration reloaded")),
        "{}",
        s.stderr()
    );
    assert!(
        wait_for_log(&s, Duration::from_secs(5), |l| l
            .contains("take effect only after a restart")
            && l.contains("server.idle_timeout")
            && !l.contains("log.level")),
        "{}",
        s.stderr()
    );
    assert_eq!(s.get("/health").status, 200);
    assert!(
        wait_for_log(&s, Duration::from_secs(5), |l| l
            .contains("request finished")
            && l.contains("/health")),
        "log.level = debug was not applied:\n{}",
        s.stderr()
    );

    // A broken file: the running configuration stays, and the log says why.
    d.write_config("[log]\nlevel = \"info\"\n[server\nbroken");
    s.sighup();
    assert!(
        wait_for_log(&s, Duration::from_secs(10), |l| l
            .contains("keeping the running configuration")),
        "{}",
        s.stderr()
    );
    let before = s.stderr().matches("request finished").count();
    assert_eq!(s.get("/health").status, 200, "still serving");
    assert!(
        wait_for_log(&s, Duration::from_secs(5), |_| s
            .stderr()
            .matches("request finished")
            .count()
            > before),
        "the old level (debug) must stay in force"
    );
}
