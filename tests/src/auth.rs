//! Accounts from the outside: the setup token from the banner, a browser-like
//! client with a cookie jar (curl's own `-c`/`-b` files) and an `Origin`
//! header, bearer clients, and TOTP codes computed by an independent
//! implementation — Debian's `oathtool` (OATH Toolkit), never the project's
//! own code.

use crate::server::{Resp, Server};
use crate::{Out, run_cmd_for};
use std::cell::Cell;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A password the policy accepts (≥ 12 characters, not a common one).
pub const PASSWORD: &str = "Tangerine-Lighthouse-Quartz-417";

/// The `[auth]` section tests start from: rate limits high enough that a
/// test's own traffic from 127.0.0.1 never trips them, plus `extra` lines.
pub fn auth_config(extra: &str) -> String {
    let mut s = String::from("[auth]\n");
    if !extra.contains("rate_limit_burst") {
        s.push_str("rate_limit_burst = 100000\n");
    }
    if !extra.contains("rate_limit_per_minute") {
        s.push_str("rate_limit_per_minute = 100000\n");
    }
    s.push_str(extra);
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `oathtool ARGS…`; a missing program fails with a pointer to the setup
/// script.
pub fn oathtool(args: &[&str]) -> Out {
    let mut c = Command::new("oathtool");
    c.args(args);
    let out = run_cmd_for(c, b"", Duration::from_secs(10));
    assert!(
        out.status.success(),
        "oathtool {args:?} failed: {}",
        out.stderr
    );
    out
}

/// A query parameter of an `otpauth://` URI (raw, not percent-decoded).
pub fn uri_param(uri: &str, name: &str) -> Option<String> {
    let (_, query) = uri.split_once('?')?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The base32 secret of an `otpauth://` URI.
pub fn totp_secret(uri: &str) -> String {
    uri_param(uri, "secret").unwrap_or_else(|| panic!("no secret in the otpauth URI"))
}

/// The code for the TOTP step containing `unix` (`oathtool --totp -b
/// --now @UNIX SECRET`).
pub fn totp_code_at(uri: &str, unix: u64) -> String {
    let secret = totp_secret(uri);
    let now = format!("@{unix}");
    let out = oathtool(&["--totp", "-b", "--now", &now, &secret]);
    let code = out.stdout.trim().to_string();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "oathtool printed {code:?}"
    );
    code
}

/// The current code (`oathtool --totp -b SECRET`).
pub fn totp_code(uri: &str) -> String {
    let secret = totp_secret(uri);
    let out = oathtool(&["--totp", "-b", &secret]);
    out.stdout.trim().to_string()
}

/// A user's authenticator: hands out codes the server has not seen yet.
/// The server accepts each 30 s step at most once, within ±1 step of its
/// clock; this uses the earliest fresh step in that window and waits
/// (bounded, < 31 s) for the next step when the window is used up.
pub struct Authenticator {
    pub uri: String,
    last: Cell<Option<u64>>,
}

impl Authenticator {
    pub fn new(uri: &str) -> Self {
        Authenticator {
            uri: uri.to_string(),
            last: Cell::new(None),
        }
    }

    /// A code for a step never used before, and marks it used.
    pub fn code(&self) -> String {
        loop {
            let now = unix_now();
            let current = now / 30;
            // Two seconds of margin at the window's trailing edge.
            let earliest = current.saturating_sub(1) + u64::from(now % 30 >= 28);
            let step = match self.last.get() {
                Some(l) => (l + 1).max(earliest),
                None => earliest,
            };
            if step <= current + 1 {
                self.last.set(Some(step));
                return totp_code_at(&self.uri, step * 30);
            }
            let wait = 30 - now % 30;
            std::thread::sleep(Duration::from_secs(wait) + Duration::from_millis(200));
        }
    }

    /// The last step handed out.
    pub fn last_step(&self) -> Option<u64> {
        self.last.get()
    }
}

/// The one-time setup token `serve` prints while no owner exists
/// (`…/setup#token=<token>`).
pub fn setup_token(s: &Server) -> String {
    let out = s.stdout();
    let (_, rest) = out
        .split_once("/setup#token=")
        .unwrap_or_else(|| panic!("no `/setup#token=` in the banner:\n{out}"));
    rest.split(|c: char| c.is_whitespace() || c == ')')
        .next()
        .expect("token")
        .to_string()
}

static JARS: AtomicUsize = AtomicUsize::new(0);

/// A browser-like client: a curl cookie jar, and `Origin: <server origin>`
/// on every request (as a page of the server itself would send).
pub struct Browser<'a> {
    pub s: &'a Server,
    jar: PathBuf,
    /// `Origin` sent with every request; `None` sends none.
    pub origin: Option<String>,
}

impl<'a> Browser<'a> {
    pub fn new(s: &'a Server) -> Self {
        let n = JARS.fetch_add(1, Ordering::Relaxed);
        let jar = s.work_dir().join(format!("cookies-{n}.txt"));
        Browser {
            s,
            jar,
            origin: Some(s.url()),
        }
    }

    /// A request with the jar (read and updated), the origin, and `json` as
    /// an `application/json` body.
    pub fn call(&self, method: &str, path: &str, json: Option<&str>) -> Resp {
        self.call_with(method, path, &[], json)
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        json: Option<&str>,
    ) -> Resp {
        let jar = self.jar.to_str().expect("utf8 path");
        let flags = ["-b", jar, "-c", jar];
        let origin = self.origin.as_ref().map(|o| format!("Origin: {o}"));
        let mut h: Vec<&str> = headers.to_vec();
        if let Some(o) = &origin {
            h.push(o);
        }
        if json.is_some() {
            h.push("Content-Type: application/json");
        }
        self.s
            .early_request(&flags, method, path, &h, json.map(str::as_bytes))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, json: &serde_json::Value) -> Resp {
        self.call("POST", path, Some(&json.to_string()))
    }

    /// The session cookie's value as curl stored it (`None` if none).
    pub fn cookie(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.jar).ok()?;
        text.lines()
            .map(|l| l.strip_prefix("#HttpOnly_").unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .find(|f| f.len() == 7 && f[5] == "__Host-latchkey_session")
            .map(|f| f[6].to_string())
            .filter(|v| !v.is_empty())
    }

    /// Signs in with a password and, when asked, a TOTP code from `totp`.
    /// Panics unless both steps succeed; returns the `/mfa` (or login)
    /// response.
    pub fn login(&self, username: &str, password: &str, totp: Option<&Authenticator>) -> Resp {
        let r = self.post(
            "/api/auth/login",
            &serde_json::json!({"username": username, "password": password}),
        );
        assert_eq!(r.status, 200, "login {username}: {}", r.body);
        let v = r.json();
        if v["mfa_required"] == false {
            assert!(totp.is_none(), "{username} has no second factor");
            return r;
        }
        assert_eq!(v["mfa_required"], true, "{}", r.body);
        let ticket = v["ticket"].as_str().expect("ticket").to_string();
        let totp = totp.unwrap_or_else(|| panic!("{username} needs a TOTP code"));
        let r = self.post(
            "/api/auth/mfa",
            &serde_json::json!({"ticket": ticket, "code": totp.code()}),
        );
        assert_eq!(r.status, 200, "mfa {username}: {}", r.body);
        r
    }
}

impl Server {
    /// [`Server::request_with`] for requests the server may answer before
    /// reading their body (401, 403 `csrf`, 429). The server reads up to
    /// 64 KiB of such an unread body before answering (the `limits`
    /// middleware; `early_refusals_reach_http2_clients_that_are_still_uploading`
    /// checks it); past that, hyper ends the HTTP/2 stream with
    /// `RST_STREAM(NO_ERROR)` after the complete response, as RFC 9113 §8.1
    /// allows, and Debian 12's curl 7.88 wrongly reports error 92 instead
    /// of the response. Such a request, and only such a one, is repeated
    /// once over HTTP/1.1.
    pub fn early_request(
        &self,
        curl_flags: &[&str],
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&[u8]>,
    ) -> Resp {
        let r = self.request_with(curl_flags, method, path, headers, body);
        if r.status == 0 && body.is_some() && r.body.contains("(92)") {
            let mut flags = curl_flags.to_vec();
            flags.push("--http1.1");
            return self.request_with(&flags, method, path, headers, body);
        }
        r
    }

    /// A request with `Authorization: Bearer TOKEN` and a JSON body.
    pub fn bearer(&self, token: &str, method: &str, path: &str, json: Option<&str>) -> Resp {
        let auth = format!("Authorization: Bearer {token}");
        let mut headers = vec![auth.as_str()];
        if json.is_some() {
            headers.push("Content-Type: application/json");
        }
        self.early_request(&[], method, path, &headers, json.map(str::as_bytes))
    }

    /// A JSON request without credentials.
    pub fn anon(&self, method: &str, path: &str, json: Option<&serde_json::Value>) -> Resp {
        let body = json.map(ToString::to_string);
        let mut headers = vec![];
        if body.is_some() {
            headers.push("Content-Type: application/json");
        }
        self.early_request(
            &[],
            method,
            path,
            &headers,
            body.as_deref().map(str::as_bytes),
        )
    }
}

/// What web setup leaves behind: the owner's authenticator, the recovery
/// codes and the signed-in browser.
pub struct Owner<'a> {
    pub username: String,
    pub totp: Authenticator,
    pub recovery_codes: Vec<String>,
    pub browser: Browser<'a>,
}

/// First run through the web endpoints with the banner's token.
pub fn web_setup<'a>(s: &'a Server, username: &str) -> Owner<'a> {
    let token = setup_token(s);
    let b = Browser::new(s);
    let r = b.post(
        "/api/setup/begin",
        &serde_json::json!({"token": token, "username": username, "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "setup/begin: {}", r.body);
    let uri = r.json()["otpauth_uri"]
        .as_str()
        .expect("otpauth_uri")
        .to_string();
    let totp = Authenticator::new(&uri);
    let r = b.post(
        "/api/setup/confirm",
        &serde_json::json!({"token": token, "username": username, "code": totp.code()}),
    );
    assert_eq!(r.status, 200, "setup/confirm: {}", r.body);
    let recovery_codes = r.json()["recovery_codes"]
        .as_array()
        .expect("recovery_codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_string())
        .collect();
    Owner {
        username: username.to_string(),
        totp,
        recovery_codes,
        browser: b,
    }
}

/// An invited user of `role`, signed in (no second factor): the admin's
/// browser creates the invite, a fresh browser accepts it and logs in.
pub fn invited<'a>(s: &'a Server, admin: &Browser<'_>, username: &str, role: &str) -> Browser<'a> {
    let r = admin.post("/api/users/invites", &serde_json::json!({"role": role}));
    assert_eq!(r.status, 201, "invite {role}: {}", r.body);
    let token = r.json()["token"].as_str().expect("token").to_string();
    let r = s.anon(
        "POST",
        "/api/invites/accept",
        Some(&serde_json::json!({"token": token, "username": username, "password": PASSWORD})),
    );
    assert_eq!(r.status, 201, "accept invite: {}", r.body);
    let b = Browser::new(s);
    b.login(username, PASSWORD, None);
    b
}

/// Creates an API key with `scopes` for the browser's user; returns
/// `(id, key)`.
pub fn create_key(b: &Browser<'_>, name: &str, scopes: &[&str]) -> (String, String) {
    let r = b.post(
        "/api/keys",
        &serde_json::json!({"name": name, "scopes": scopes}),
    );
    assert_eq!(r.status, 201, "create key {scopes:?}: {}", r.body);
    let v = r.json();
    (
        v["id"].as_str().expect("id").to_string(),
        v["key"].as_str().expect("key").to_string(),
    )
}
