//! Realtime (WebSocket) sessions through the real binary: the official
//! `openai` (realtime extra) and `deepgram-sdk` clients pointed at
//! Latchkey with an `lk_` key, and a mock upstream on loopback that speaks
//! both protocols (tests/sdk/realtime_upstream.py, on the `websockets`
//! library — an implementation independent of ours) and logs every
//! handshake it sees. The clients are tests/sdk/check_realtime.py.

use latchkey_e2e::{
    ServeOpts, Server, TestDir, auth_config, create_key, run_cmd_for, sdk_script, web_setup,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const OPENAI_SECRET: &str = "sk-REAL-openai-realtime-0123";
const DEEPGRAM_SECRET: &str = "dg-REAL-deepgram-4567";

/// The mock upstream (a Python process), killed on drop.
struct Upstream {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Upstream {
    fn start(dir: &Path) -> Upstream {
        let log = dir.join("upstream.jsonl");
        let mut child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/realtime_upstream.py"))
            .env("MOCK_LOG", &log)
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the mock upstream (python3 with `websockets`: scripts/install-deps.sh)");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the mock upstream's port");
        let port = first
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("mock upstream said {first:?}"));
        Upstream { child, port, log }
    }

    /// Every handshake the upstream saw.
    fn seen(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line"))
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A thread turning a child's stdout into lines on a channel.
fn lines_of(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn config(port: u16, proxy: &str) -> String {
    format!(
        "{}\n[proxy]\n{proxy}\n\
         [providers.openai]\nupstream = \"http://127.0.0.1:{port}\"\nsecret = \"openai-main\"\n\n\
         [providers.deepgram]\nupstream = \"http://127.0.0.1:{port}\"\nsecret = \"deepgram-main\"\n\n\
         [providers.anthropic]\nupstream = \"http://127.0.0.1:{port}\"\nsecret = \"openai-main\"\n",
        auth_config("")
    )
}

fn seeded() -> TestDir {
    let d = TestDir::new();
    d.ok(&["vault", "put", "openai-main"], OPENAI_SECRET.as_bytes());
    d.ok(
        &["vault", "put", "deepgram-main"],
        DEEPGRAM_SECRET.as_bytes(),
    );
    d
}

fn client(s: &Server, key: &str, args: &[&str]) -> Command {
    let mut c = sdk_script(
        "check_realtime.py",
        "openai, websockets, deepgram",
        &s.url(),
        key,
        s.ca_pem(),
    );
    c.args(args);
    c
}

/// Runs a `raw` client to its end; its output.
fn raw(s: &Server, key: &str, spec: serde_json::Value) -> String {
    let out = run_cmd_for(
        client(s, key, &["raw", &spec.to_string()]),
        b"",
        Duration::from_secs(60),
    );
    format!("{}{}", out.stdout, out.stderr)
}

/// A `raw` client holding a session open: its output lines as they come.
struct Held {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Held {
    fn open(s: &Server, key: &str, spec: serde_json::Value) -> Held {
        let mut c = client(s, key, &["raw", &spec.to_string()]);
        c.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = c.spawn().expect("spawn client");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the client's first line");
        assert!(first.starts_with("open"), "session did not open: {first}");
        Held { child, lines }
    }

    /// The next line within `limit`.
    fn next(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until no realtime session is open (a closed one frees its place
/// when its relay has finished, a moment after the client saw the close).
fn wait_no_sessions(b: &latchkey_e2e::Browser<'_>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = b.get("/api/realtime/sessions");
        assert_eq!(r.status, 200, "{}", r.body);
        if r.json()["sessions"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(Instant::now() < deadline, "sessions still open: {}", r.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn no_secrets(what: &str, text: &str) {
    for secret in [OPENAI_SECRET, DEEPGRAM_SECRET] {
        assert!(!text.contains(secret), "{what} shows a provider secret");
    }
}

/// The official clients complete their sessions through Latchkey; the
/// upstream sees only the real credentials, in each provider's form;
/// usage (tokens, audio apart, and session seconds) is counted.
#[test]
fn official_realtime_clients_work_through_the_proxy() {
    let d = seeded();
    let up = Upstream::start(d.path());
    let s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config(up.port, "")));
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let (key_id, key) = create_key(b, "voice-agent", &["proxy:openai", "proxy:deepgram"]);

    for (cmd, want) in [
        ("openai", "ok   openai realtime session"),
        ("deepgram", "ok   deepgram live transcripts=5"),
    ] {
        let out = run_cmd_for(client(&s, &key, &[cmd]), b"", Duration::from_secs(90));
        let text = format!("{}\n{}", out.stdout, out.stderr);
        println!("{text}");
        assert!(
            out.status.success() && text.contains(want),
            "{cmd}:\n{text}"
        );
        no_secrets(cmd, &text);
    }

    // The upstream saw the real credentials in each provider's form, and
    // never the lk_ key (headers, path and query, subprotocols).
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for h in &seen {
        assert!(
            !h.to_string().contains(&key),
            "the upstream saw the lk_ key: {h}"
        );
        let path = h["path"].as_str().expect("path");
        let auth = h["headers"]["authorization"]
            .as_str()
            .expect("authorization");
        if path.starts_with("/v1/realtime") {
            assert!(path.starts_with("/v1/realtime?"), "{path}");
            assert!(path.contains("model=gpt-realtime-mock"), "{path}");
            assert_eq!(auth, format!("Bearer {OPENAI_SECRET}"));
        } else {
            assert!(path.starts_with("/v1/listen?"), "{path}");
            assert_eq!(auth, format!("Token {DEEPGRAM_SECRET}"));
        }
        assert!(
            h["headers"].get("sec-websocket-extensions").is_none(),
            "{h}"
        );
    }

    // Usage: the response's tokens with audio apart, and session seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (openai, deepgram) = loop {
        let rows = b.get("/api/usage").json()["usage"].clone();
        let rows = rows.as_array().cloned().unwrap_or_default();
        let find = |p: &str| rows.iter().find(|r| r["provider"] == p).cloned();
        if let (Some(o), Some(g)) = (find("openai"), find("deepgram"))
            && o["requests"] == 1
            && g["requests"] == 1
        {
            break (o, g);
        }
        assert!(Instant::now() < deadline, "usage rows: {rows:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(openai["key_id"], key_id.as_str(), "{openai}");
    assert_eq!(openai["model"], "gpt-realtime-mock", "{openai}");
    for (field, want) in [
        ("input_tokens", 120),
        ("output_tokens", 225),
        ("audio_input_tokens", 100),
        ("audio_output_tokens", 200),
    ] {
        assert_eq!(openai[field], want, "{field}: {openai}");
    }
    assert!(openai["session_seconds"].as_u64() >= Some(1), "{openai}");
    assert!(
        deepgram["session_seconds"].as_u64() >= Some(1),
        "{deepgram}"
    );
    assert_eq!(deepgram["input_tokens"], 0, "{deepgram}");
    no_secrets("the server's log", &format!("{}{}", s.stdout(), s.stderr()));
}

/// Every refusal and every end the docs promise, with its code.
#[test]
fn realtime_refusals_limits_and_ends_have_their_codes() {
    let d = seeded();
    let up = Upstream::start(d.path());
    let limits = "realtime_sessions_per_key = 1\nrealtime_max_message_bytes = 1024\n";
    let s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config(up.port, limits)));
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let (_, key) = create_key(b, "voice", &["proxy:*"]);
    let (_, narrow) = create_key(b, "narrow", &["proxy:deepgram"]);
    let bearer = |k: &str| serde_json::json!({"Authorization": format!("Bearer {k}")});
    let path = "/proxy/openai/v1/realtime?model=m";

    // Refused handshakes: wrong key, wrong scope, a provider without
    // WebSockets, an unknown provider, a cross-origin browser with a cookie.
    let wrong = "lk_0000000000000000000000000000000000000000000000000000000000000000";
    for (k, spec, want) in [
        (
            &key,
            serde_json::json!({"path": path, "headers": bearer(wrong)}),
            "status 401",
        ),
        (
            &key,
            serde_json::json!({"path": path, "headers": bearer(&narrow)}),
            "status 403",
        ),
        (
            &key,
            serde_json::json!({"path": "/proxy/anthropic/v1/x", "headers": bearer(&key)}),
            "status 403 {\"error\":\"websocket_disabled\"",
        ),
        (
            &key,
            serde_json::json!({"path": "/proxy/nope/v1/x", "headers": bearer(&key)}),
            "status 404 {\"error\":\"unknown_provider\"",
        ),
        (
            &key,
            serde_json::json!({"path": path, "headers": {
                "Authorization": format!("Bearer {key}"),
                "Cookie": "__Host-latchkey_session=abc",
                "Origin": "https://evil.example",
            }}),
            "status 403 {\"error\":\"csrf\"",
        ),
    ] {
        let out = raw(&s, k, spec.clone());
        assert!(out.contains(want), "{spec}: want {want}, got:\n{out}");
    }

    // The key in a subprotocol (the browser form): never offered upstream;
    // the upstream's close code and reason pass through.
    let out = raw(
        &s,
        &key,
        serde_json::json!({
            "path": path,
            "subprotocols": ["realtime", format!("openai-insecure-api-key.{key}")],
            "then": "close:4321",
        }),
    );
    assert!(out.contains("open realtime"), "{out}");
    assert!(out.contains("closed 4321 bye"), "{out}");
    for h in up.seen() {
        assert!(
            !h.to_string().contains(&key),
            "the upstream saw the lk_ key: {h}"
        );
    }

    // A message over the limit either way: never forwarded, 1009.
    let out = raw(
        &s,
        &key,
        serde_json::json!({"path": path, "headers": bearer(&key), "then": "big:4096"}),
    );
    assert!(out.contains("closed 1009 message too big"), "{out}");
    let out = raw(
        &s,
        &key,
        serde_json::json!({"path": path, "headers": bearer(&key), "then": "upbig:4096"}),
    );
    assert!(out.contains("closed 1009 message too big"), "{out}");

    // One session per key: a second is refused while the first is open;
    // an administrator sees it and ends it (4002).
    wait_no_sessions(b);
    let held = Held::open(
        &s,
        &key,
        serde_json::json!({"path": path, "headers": bearer(&key)}),
    );
    let out = raw(
        &s,
        &key,
        serde_json::json!({"path": path, "headers": bearer(&key)}),
    );
    assert!(
        out.contains("status 429 {\"error\":\"too_many_sessions\""),
        "{out}"
    );
    let list = b.get("/api/realtime/sessions");
    assert_eq!(list.status, 200, "{}", list.body);
    let sessions = list.json()["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["provider"], "openai");
    assert_eq!(sessions[0]["user"], "owner");
    let id = sessions[0]["id"].as_str().expect("id");
    let r = b.call("DELETE", &format!("/api/realtime/sessions/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let line = held.next(Duration::from_secs(3));
    assert_eq!(
        line.as_deref(),
        Some("closed 4002 ended by an administrator")
    );
    drop(held);
    wait_no_sessions(b);

    // A key revoked mid-session: closed within a second (1008).
    let (rid, revoked) = create_key(b, "revoked", &["proxy:openai"]);
    let held = Held::open(
        &s,
        &revoked,
        serde_json::json!({"path": path, "headers": bearer(&revoked)}),
    );
    let r = b.call("DELETE", &format!("/api/keys/{rid}"), None);
    assert!(r.status < 300, "{}", r.body);
    let t = Instant::now();
    let line = held.next(Duration::from_secs(3));
    assert_eq!(line.as_deref(), Some("closed 1008 credential revoked"));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    // A user disabled mid-session: the same.
    let erin = latchkey_e2e::invited(&s, b, "erin", "user");
    let (_, erin_key) = create_key(&erin, "erin-voice", &["proxy:openai"]);
    let held = Held::open(
        &s,
        &erin_key,
        serde_json::json!({"path": path, "headers": bearer(&erin_key)}),
    );
    let r = b.call("POST", "/api/users/erin/disable", None);
    assert_eq!(r.status, 200, "disable: {}", r.body);
    let t = Instant::now();
    let line = held.next(Duration::from_secs(3));
    assert_eq!(line.as_deref(), Some("closed 1008 credential revoked"));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    drop(held);

    // The vault sealed mid-session: the same.
    let (_, sealed) = create_key(b, "sealed", &["proxy:openai"]);
    let held = Held::open(
        &s,
        &sealed,
        serde_json::json!({"path": path, "headers": bearer(&sealed)}),
    );
    let r = b.call("POST", "/api/vault/seal", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let line = held.next(Duration::from_secs(3));
    assert_eq!(line.as_deref(), Some("closed 1008 credential revoked"));
    no_secrets("the server's log", &format!("{}{}", s.stdout(), s.stderr()));
}

/// The web UI's Realtime screen lists a live session and an administrator
/// ends it there (tests/ui/realtime.mjs, Chromium under playwright-core):
/// the client gets close 4002 and the end is audited.
#[test]
fn ui_realtime_sessions_are_listed_and_ended() {
    let d = seeded();
    let up = Upstream::start(d.path());
    let mut s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config(up.port, "")));
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let (_, key) = create_key(b, "voice", &["proxy:openai"]);
    let held = Held::open(
        &s,
        &key,
        serde_json::json!({
            "path": "/proxy/openai/v1/realtime?model=m",
            "headers": {"Authorization": format!("Bearer {key}")},
        }),
    );
    let session = b.cookie().expect("session cookie after setup");
    let artifacts = latchkey_e2e::ui::artifacts_dir("realtime");
    let out = latchkey_e2e::ui::run_script(
        &s,
        "realtime.mjs",
        &artifacts,
        &[("LK_SESSION", &session), ("LK_PROVIDER", "openai")],
        Duration::from_secs(180),
    );
    assert!(
        out.status.success() && out.stdout.contains(" passed, 0 failed"),
        "realtime.mjs:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let line = held.next(Duration::from_secs(3));
    assert_eq!(
        line.as_deref(),
        Some("closed 4002 ended by an administrator")
    );
    let r = s.api("GET", "/api/audit?action=realtime.end", None);
    assert!(r.body.contains("realtime.end"), "{}", r.body);
    drop(held);
    s.stop();
}
