//! Forward-auth: `GET /api/verify` on its own, and behind real nginx
//! (`auth_request`) and real Caddy (`forward_auth`) configured with the very
//! snippets of docs/FORWARD_AUTH.md (read from the file; only addresses and
//! the CA path are replaced), in front of the recording backend of
//! `agent.rs`.

use crate::agent::{Backend, verify_assertion};
use latchkey_e2e::peer::free_port;
use latchkey_e2e::{
    ServeOpts, Server, TestDir, auth_config, create_key, curl_cmd, invited, run_cmd_for, web_setup,
};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DOC: &str = include_str!("../../docs/FORWARD_AUTH.md");

/// The fenced block after `<!-- snippet: NAME -->` in docs/FORWARD_AUTH.md.
fn snippet(name: &str) -> String {
    let marker = format!("<!-- snippet: {name} -->");
    let start = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in docs/FORWARD_AUTH.md"));
    let rest = &DOC[start + marker.len()..];
    let open = rest.find("```").expect("opening fence");
    let body_start = open + rest[open..].find('\n').expect("fence line") + 1;
    let close = rest[body_start..].find("\n```").expect("closing fence");
    rest[body_start..body_start + close + 1].to_string()
}

/// The snippet with the documented addresses replaced; each must occur, so
/// a changed document cannot silently escape the test.
fn adapt(text: &str, s: &Server, backend: u16, listen: u16) -> String {
    let ca = s.ca_pem().to_str().expect("utf8 path").to_string();
    let mut out = text.to_string();
    for (from, to) in [
        ("127.0.0.1:8443", format!("127.0.0.1:{}", s.port)),
        ("127.0.0.1:3000", format!("127.0.0.1:{backend}")),
        ("127.0.0.1:8080", format!("127.0.0.1:{listen}")),
        ("/var/lib/latchkey/tls/ca.pem", ca),
    ] {
        assert!(out.contains(from), "the snippet lost `{from}`:\n{text}");
        out = out.replace(from, &to);
    }
    out
}

/// A child process killed (and reaped) on drop.
struct Proc {
    child: Child,
    log: std::path::PathBuf,
}

impl Proc {
    fn spawn(mut c: Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        c.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = c.spawn().expect("spawn proxy");
        Proc {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `port` accepts connections (at most 15 s).
    fn wait_port(&mut self, port: u16) {
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the proxy exited ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the proxy did not listen on {port}:\n{}", self.log());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(dir: &Path, s: &Server, backend: u16) -> (Proc, u16) {
    let port = free_port();
    let server_block = adapt(&snippet("nginx"), s, backend, port);
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         {server_block}}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let mut c = Command::new("nginx");
    c.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&path);
    let mut p = Proc::spawn(c, &dir.join("nginx.out"));
    p.wait_port(port);
    (p, port)
}

fn start_caddy(dir: &Path, s: &Server, backend: u16) -> (Proc, u16) {
    let port = free_port();
    let site = adapt(&snippet("caddy"), s, backend, port);
    // No admin endpoint: tests run side by side, and it would take :2019.
    let file = format!("{{\n\tadmin off\n}}\n\n{site}");
    let path = dir.join("Caddyfile");
    std::fs::write(&path, file).expect("write Caddyfile");
    let home = dir.join("caddy-home");
    std::fs::create_dir_all(&home).expect("caddy home");
    let mut c = Command::new("caddy");
    c.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"));
    let mut p = Proc::spawn(c, &dir.join("caddy.out"));
    p.wait_port(port);
    (p, port)
}

/// `curl http://127.0.0.1:PORT/PATH` with `headers`: `(status, body)`.
fn plain(port: u16, path: &str, headers: &[&str]) -> (u16, String) {
    let mut c = curl_cmd();
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}"]);
    for h in headers {
        c.args(["-H", h]);
    }
    c.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = run_cmd_for(c, b"", Duration::from_secs(30));
    let (body, status) = out.stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

struct Setup {
    _d: TestDir,
    s: Server,
    backend: Backend,
    key: String,
    key_id: String,
    wrong: String,
}

fn setup() -> Setup {
    let backend = Backend::start();
    let d = TestDir::new();
    let s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&auth_config("")));
    let owner = web_setup(&s, "ada");
    let (key_id, key) = create_key(&owner.browser, "app", &["agent:app"]);
    let (_, wrong) = create_key(&owner.browser, "llm", &["proxy:*"]);
    Setup {
        _d: d,
        s,
        backend,
        key,
        key_id,
        wrong,
    }
}

/// The three promises, through a proxy listening on `port`.
fn exercise(t: &Setup, port: u16, proxy: &str) {
    let before = t.backend.count();
    // No credential (and a made-up identity): 401, the app not reached.
    let (status, body) = plain(port, "/hello", &["X-Latchkey-User: ada"]);
    assert_eq!(status, 401, "{proxy}: {body}");
    let (status, body) = plain(port, "/hello", &[]);
    assert_eq!(status, 401, "{proxy}: {body}");
    // A key without `agent:app`: 403, not reached.
    let (status, body) = plain(
        port,
        "/hello",
        &[&format!("Authorization: Bearer {}", t.wrong)],
    );
    assert_eq!(status, 403, "{proxy}: {body}");
    assert_eq!(t.backend.count(), before, "{proxy}: {:?}", t.backend.seen());

    // A valid key with made-up identity headers: the app sees Latchkey's.
    let (status, body) = plain(
        port,
        "/hello?q=1",
        &[
            &format!("Authorization: Bearer {}", t.key),
            "X-Latchkey-User: root",
            "X-Latchkey-Role: superuser",
            "X-Latchkey-Assertion: forged",
        ],
    );
    assert_eq!(status, 200, "{proxy}: {body}");
    let seen = t.backend.last();
    assert_eq!(seen.target, "/hello?q=1", "{proxy}");
    assert_eq!(
        seen.header("x-latchkey-user"),
        Some("ada"),
        "{proxy}: {}",
        seen.all()
    );
    assert_eq!(seen.header("x-latchkey-role"), Some("admin"), "{proxy}");
    assert_eq!(
        seen.header("x-latchkey-key"),
        Some(t.key_id.as_str()),
        "{proxy}"
    );
    assert!(!seen.all().contains("lk_"), "{proxy}: {}", seen.all());
    let jwt = seen.header("x-latchkey-assertion").expect("assertion");
    let (_, claims) = verify_assertion(&t.s, jwt, "agent:app").expect("verifies");
    assert_eq!(claims["name"], "ada", "{proxy}");

    // `x-api-key` works too, and a forged key id does not survive.
    let (status, body) = plain(
        port,
        "/other",
        &[&format!("x-api-key: {}", t.key), "X-Latchkey-Key: forged"],
    );
    assert_eq!(status, 200, "{proxy}: {body}");
    let seen = t.backend.last();
    assert_eq!(
        seen.header("x-latchkey-key"),
        Some(t.key_id.as_str()),
        "{proxy}"
    );
    assert!(!seen.all().contains("lk_"), "{proxy}: {}", seen.all());
}

#[test]
fn nginx_auth_request_with_the_documented_snippet() {
    let t = setup();
    let dir = t.s.work_dir().join("nginx");
    std::fs::create_dir_all(&dir).expect("dir");
    let (nginx, port) = start_nginx(&dir, &t.s, t.backend.port);
    exercise(&t, port, "nginx");
    drop(nginx);
}

#[test]
fn caddy_forward_auth_with_the_documented_snippet() {
    let t = setup();
    let dir = t.s.work_dir().join("caddy");
    std::fs::create_dir_all(&dir).expect("dir");
    let (caddy, port) = start_caddy(&dir, &t.s, t.backend.port);
    exercise(&t, port, "caddy");
    drop(caddy);
}

#[test]
fn verify_endpoint_answers() {
    let backend = Backend::start();
    let d = TestDir::new();
    let cfg = format!(
        "{}\n[agents.notes]\nupstream = \"http://127.0.0.1:{}\"\n",
        auth_config(""),
        backend.port
    );
    let s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&cfg));
    let owner = web_setup(&s, "ada");
    let (key_id, key) = create_key(&owner.browser, "app", &["agent:app"]);
    let bearer = format!("Authorization: Bearer {key}");

    // No credential: 401 JSON, no redirect.
    let r = s.get("/api/verify?agent=app");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "unauthenticated");
    assert!(r.header("location").is_none());
    let r = s.request("GET", "/api/verify", &["X-Latchkey-User: ada"], None);
    assert_eq!(r.status, 401, "{}", r.body);

    // A key: the identity headers and an assertion for the audience.
    let r = s.request("GET", "/api/verify?agent=app", &[&bearer], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-latchkey-user"), Some("ada"));
    assert_eq!(r.header("x-latchkey-role"), Some("admin"));
    assert_eq!(r.header("x-latchkey-key"), Some(key_id.as_str()));
    assert_eq!(r.json()["user"], "ada");
    let jwt = r.header("x-latchkey-assertion").expect("assertion");
    let (_, claims) = verify_assertion(&s, jwt, "agent:app").expect("verifies");
    assert_eq!(claims["key_id"], key_id.as_str());
    // Without `agent` any valid credential passes, with audience latchkey.
    let r = s.request("GET", "/api/verify", &[&bearer], None);
    assert_eq!(r.status, 200, "{}", r.body);
    let jwt = r.header("x-latchkey-assertion").expect("assertion");
    assert!(verify_assertion(&s, jwt, "latchkey").is_ok());
    // The scope is needed for another agent.
    let r = s.request("GET", "/api/verify?agent=other", &[&bearer], None);
    assert_eq!(r.status, 403, "{}", r.body);
    // Bad queries.
    for q in ["?agent=Bad", "?agent=", "?nope=1"] {
        let r = s.request("GET", &format!("/api/verify{q}"), &[&bearer], None);
        assert_eq!(r.status, 400, "{q}: {}", r.body);
    }

    // A browser session: no key header; the CSRF rule uses the original
    // method.
    let r = owner.browser.get("/api/verify?agent=app");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("x-latchkey-key").is_none());
    let r = owner.browser.call_with(
        "GET",
        "/api/verify?agent=app",
        &["X-Forwarded-Method: POST", "Origin: https://evil.example"],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error_code(), "csrf");

    // A configured agent's roles apply: a guest is refused by `notes`.
    let guest = invited(&s, &owner.browser, "gus", "guest");
    let (_, gkey) = create_key(&guest, "g", &["agent:notes", "agent:app"]);
    let gb = format!("Authorization: Bearer {gkey}");
    let r = s.request("GET", "/api/verify?agent=notes", &[&gb], None);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = s.request("GET", "/api/verify?agent=app", &[&gb], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-latchkey-role"), Some("guest"));
    assert_eq!(backend.count(), 0);
}
