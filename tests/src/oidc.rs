//! A real OpenID Connect provider for the connection tests, and a browser
//! that walks through its sign-in pages.
//!
//! [`Idp`] runs `tests/oidc/server.mjs` — the npm package `oidc-provider`,
//! which nobody on the project wrote — on a free port of 127.0.0.1 with one
//! confidential client (`latchkey`, `client_secret_basic`), PKCE S256
//! required, rotating refresh tokens and a short access-token lifetime. It
//! is killed on drop, and exits by itself when its stdin (held by the
//! [`Idp`]) closes, so even a killed test run leaves nothing behind. Its
//! `/_test/stats` counts token requests by grant type.
//!
//! [`OAuthBrowser`] is the user's browser during a connect flow: it follows
//! redirects one by one, keeps the provider's cookies (with their paths) and
//! Latchkey's separately, posts the provider's login and consent forms, and
//! — like a real browser on a cross-site navigation — sends Latchkey's
//! `SameSite=Strict` session cookie on `/start` but not on the callback,
//! where only the `SameSite=Lax` binding cookie goes along.

use crate::run_cmd_for;
use crate::server::{Resp, Server, curl_cmd};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// The provider name the tests configure (`[connections.testidp]`).
pub const PROVIDER: &str = "testidp";
/// The vault entry holding the client secret (the issue's name).
pub const SECRET_ENTRY: &str = "testidp-client";
/// Latchkey's session cookie (SameSite=Strict).
pub const SESSION_COOKIE: &str = "__Host-latchkey_session";
/// Latchkey's state-binding cookie set by `/start` (SameSite=Lax).
pub const BINDING_COOKIE: &str = "__Host-latchkey-oauth";

/// How long the provider may take to print its ready line. Generous: with
/// the whole suite running on two cores and a fresh clone's
/// `node_modules` not yet in the page cache, it once took over 20 s (a
/// fresh-clone CI run on 2026-12-04; the same test passed alone and in
/// the run before).
const START_TIMEOUT: Duration = Duration::from_secs(60);

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A port on 127.0.0.1 that was free a moment ago. The redirect URI must be
/// registered at the provider before Latchkey starts, so Latchkey's port is
/// chosen up front (`ServeOpts::listen`) rather than learnt from its banner.
pub use crate::peer::free_port;

/// Latchkey's callback URLs on `port`, under both names its certificate
/// covers; both are registered at the provider.
pub fn callback_urls(port: u16, provider: &str) -> Vec<String> {
    ["localhost", "127.0.0.1"]
        .iter()
        .map(|h| format!("https://{h}:{port}/api/connections/{provider}/callback"))
        .collect()
}

/// The `[connections.testidp]` section for `idp`, with `extra` lines.
pub fn connection_config(idp: &Idp, extra: &str) -> String {
    format!(
        "[connections.{PROVIDER}]\nissuer = \"{}\"\nclient_id = \"latchkey\"\n\
         client_secret_entry = \"{SECRET_ENTRY}\"\nscopes = [\"openid\", \"offline_access\"]\n{extra}\n",
        idp.issuer
    )
}

/// The running `oidc-provider`. Killed on drop.
pub struct Idp {
    child: Child,
    stdin: Option<ChildStdin>,
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub issuer: String,
    /// The client secret registered for `latchkey`.
    pub client_secret: String,
    stderr_path: PathBuf,
}

/// `tests/oidc` in this workspace.
pub fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

impl Idp {
    /// Starts the provider with `redirect_uris` for the client and access
    /// tokens living `access_ttl` seconds; waits (bounded) for its ready
    /// line. `log_dir` receives its stderr.
    pub fn start(redirect_uris: &[String], access_ttl: u64, log_dir: &Path) -> Idp {
        Idp::start_as("web", redirect_uris, access_ttl, log_dir)
    }

    /// [`Idp::start`] with the client registered as a native app
    /// (`application_type: native`): a loopback `http` redirect URI
    /// matches on any port (RFC 8252 §7.3), as the desktop app's
    /// per-flow port needs.
    pub fn start_native(redirect_uris: &[String], access_ttl: u64, log_dir: &Path) -> Idp {
        Idp::start_as("native", redirect_uris, access_ttl, log_dir)
    }

    fn start_as(
        application_type: &str,
        redirect_uris: &[String],
        access_ttl: u64,
        log_dir: &Path,
    ) -> Idp {
        let dir = oidc_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "{}/node_modules is missing: run scripts/install-deps.sh (npm ci --prefix tests/oidc)",
            dir.display()
        );
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let stderr_path = log_dir.join(format!("oidc-{n}.stderr"));
        let secret = format!("idp-secret-{}", random_hex(16));
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("OIDC_PORT", "0")
            .env("OIDC_CLIENT_SECRET", &secret)
            .env("OIDC_REDIRECT_URIS", redirect_uris.join(" "))
            .env("OIDC_ACCESS_TTL", access_ttl.to_string())
            .env("OIDC_APPLICATION_TYPE", application_type)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("create oidc stderr file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run node ({e}): Node.js 20+ is needed for the OIDC test server")
            });
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut idp = Idp {
            child,
            stdin,
            port: 0,
            issuer: String::new(),
            client_secret: secret,
            stderr_path,
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(line)) => line,
            _ => panic!(
                "the OIDC test server did not start within {START_TIMEOUT:?}:\n{}",
                idp.stderr()
            ),
        };
        let json = line
            .strip_prefix("OIDC READY ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}:\n{}", idp.stderr()));
        let v: serde_json::Value = serde_json::from_str(json).expect("ready line JSON");
        idp.port = v["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("port");
        idp.issuer = v["issuer"].as_str().expect("issuer").to_string();
        assert_eq!(idp.issuer, format!("http://127.0.0.1:{}", idp.port));
        idp
    }

    /// What the provider logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `GET /_test/stats`.
    pub fn stats(&self) -> serde_json::Value {
        let r = http("GET", &format!("{}/_test/stats", self.issuer), &[], None);
        assert_eq!(r.status, 200, "stats: {}", r.body);
        r.json()
    }

    /// One counter of [`Idp::stats`].
    pub fn count(&self, name: &str) -> u64 {
        self.stats()[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Refresh-token grant requests received so far (successful or not).
    pub fn refreshes(&self) -> u64 {
        self.count("refresh_requests")
    }

    /// Every refresh token and access token the provider issued so far.
    pub fn issued(&self) -> (Vec<String>, Vec<String>) {
        let r = http("GET", &format!("{}/_test/tokens", self.issuer), &[], None);
        assert_eq!(r.status, 200, "tokens: {}", r.body);
        let v = r.json();
        let list = |k: &str| {
            v[k].as_array()
                .expect("token list")
                .iter()
                .map(|t| t.as_str().expect("token").to_string())
                .collect::<Vec<_>>()
        };
        (list("refresh_tokens"), list("access_tokens"))
    }

    fn basic(&self) -> String {
        format!("latchkey:{}", self.client_secret)
    }

    /// A form POST to the provider authenticated as the client
    /// (`client_secret_basic`).
    pub fn client_post(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        let body = form_encode(form);
        let mut c = curl_cmd();
        c.args(["-u", &self.basic()]);
        http_with(
            c,
            "POST",
            &format!("{}{path}", self.issuer),
            &["Content-Type: application/x-www-form-urlencoded"],
            Some(body.as_bytes()),
        )
    }

    /// RFC 7662 introspection of `token`.
    pub fn introspect(&self, token: &str) -> serde_json::Value {
        let r = self.client_post("/token/introspection", &[("token", token)]);
        assert_eq!(r.status, 200, "introspection: {}", r.body);
        r.json()
    }

    /// RFC 7009 revocation of `token` by the client. This provider revokes
    /// the whole grant (refresh token included) whatever token is named —
    /// what a user's "remove access" at the provider does.
    pub fn revoke(&self, token: &str) -> u16 {
        self.client_post("/token/revocation", &[("token", token)])
            .status
    }

    /// `GET /me` (UserInfo) with `token`: 200 when the provider accepts it.
    pub fn userinfo(&self, token: &str) -> Resp {
        let auth = format!("Authorization: Bearer {token}");
        http("GET", &format!("{}/me", self.issuer), &[&auth], None)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lowercase hex of `n` random bytes.
pub fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `application/x-www-form-urlencoded`.
pub fn form_encode(form: &[(&str, &str)]) -> String {
    form.iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decodes a query component (`+` is a space).
pub fn pct_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded query parameters of `url`.
pub fn query_params(url: &str) -> BTreeMap<String, String> {
    let query = url
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('#')
        .next()
        .unwrap_or_default();
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

/// Replaces (or adds) query parameter `name` of `url` with `value`, or
/// removes it when `value` is `None`.
pub fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let (base, _) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<(String, String)> = query_params(url)
        .into_iter()
        .filter(|(k, _)| k != name)
        .collect();
    if let Some(v) = value {
        params.push((name.to_string(), v.to_string()));
    }
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    format!("{base}?{}", form_encode(&pairs))
}

/// A plain-HTTP request with curl (no redirects followed).
pub fn http(method: &str, url: &str, headers: &[&str], body: Option<&[u8]>) -> Resp {
    http_with(curl_cmd(), method, url, headers, body)
}

fn http_with(
    mut c: Command,
    method: &str,
    url: &str,
    headers: &[&str],
    body: Option<&[u8]>,
) -> Resp {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir();
    let head_file = dir.join(format!("latchkey-oidc-{}-{n}.head", std::process::id()));
    let body_file = dir.join(format!("latchkey-oidc-{}-{n}.body", std::process::id()));
    c.args(["-X", method, "-w", "%{http_code}", "-D"])
        .arg(&head_file)
        .arg("-o")
        .arg(&body_file);
    for h in headers {
        c.args(["-H", h]);
    }
    if body.is_some() {
        c.args(["--data-binary", "@-"]);
    }
    c.arg(url);
    let out = run_cmd_for(c, body.unwrap_or_default(), Duration::from_secs(40));
    let head = std::fs::read_to_string(&head_file).unwrap_or_default();
    let text = std::fs::read_to_string(&body_file).unwrap_or_default();
    let _ = std::fs::remove_file(&head_file);
    let _ = std::fs::remove_file(&body_file);
    let status: u16 = out.stdout.trim().parse().unwrap_or(0);
    if status == 0 {
        return Resp {
            status: 0,
            headers: Vec::new(),
            body: out.stderr,
        };
    }
    Resp {
        status,
        headers: crate::server::parse_headers(&head),
        body: text,
    }
}

/// Every `Set-Cookie` header of `r`.
pub fn set_cookies(r: &Resp) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect()
}

/// One stored cookie.
#[derive(Debug, Clone)]
struct Cookie {
    name: String,
    value: String,
    path: String,
}

/// A cookie jar for one origin: names, values, paths; a `Set-Cookie` with
/// an empty value, `Max-Age=0` or a past `Expires` removes the cookie.
#[derive(Debug, Default, Clone)]
pub struct Jar {
    cookies: Vec<Cookie>,
}

impl Jar {
    /// Applies the `Set-Cookie` headers of `r`.
    pub fn update(&mut self, r: &Resp) {
        for sc in set_cookies(r) {
            let mut parts = sc.split(';');
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim().to_string(), value.trim().to_string());
            let mut path = "/".to_string();
            let mut removed = value.is_empty();
            for attr in parts {
                let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "path" if v.starts_with('/') => path = v.to_string(),
                    "max-age" => removed |= v.parse::<i64>().is_ok_and(|s| s <= 0),
                    // Servers clear cookies with a date in 1970.
                    "expires" => removed |= v.contains("1970"),
                    _ => {}
                }
            }
            self.cookies.retain(|c| !(c.name == name && c.path == path));
            if !removed {
                self.cookies.push(Cookie { name, value, path });
            }
        }
    }

    /// A cookie's value (any path).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value.as_str())
    }

    /// Sets `name=value` for path `/`.
    pub fn set(&mut self, name: &str, value: &str) {
        self.cookies.retain(|c| c.name != name);
        self.cookies.push(Cookie {
            name: name.to_string(),
            value: value.to_string(),
            path: "/".to_string(),
        });
    }

    /// Removes a cookie.
    pub fn remove(&mut self, name: &str) {
        self.cookies.retain(|c| c.name != name);
    }

    /// The `Cookie:` header for a request to `path`, leaving out `except`.
    pub fn header(&self, path: &str, except: &[&str]) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .filter(|c| !except.contains(&c.name.as_str()))
            .filter(|c| {
                path == c.path
                    || (path.starts_with(&c.path)
                        && (c.path.ends_with('/') || path[c.path.len()..].starts_with('/')))
            })
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!pairs.is_empty()).then(|| format!("Cookie: {}", pairs.join("; ")))
    }
}

/// What the user does at the provider's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Signs in and consents.
    Approve,
    /// Cancels at the consent page (the provider answers `access_denied`).
    Deny,
}

/// A browser during a connect flow: Latchkey's cookies (the session copied
/// from a signed-in [`crate::Browser`]) and the provider's, kept apart.
#[derive(Debug, Clone)]
pub struct OAuthBrowser {
    /// Cookies for Latchkey's origin.
    pub latchkey: Jar,
    /// Cookies for the provider's origin.
    pub idp: Jar,
    /// The account name typed into the provider's login form.
    pub idp_login: String,
}

impl OAuthBrowser {
    /// A browser signed in to Latchkey as `b`'s user, signing in to the
    /// provider as `idp_login`.
    pub fn new(b: &crate::Browser<'_>, idp_login: &str) -> Self {
        let mut latchkey = Jar::default();
        if let Some(session) = b.cookie() {
            latchkey.set(SESSION_COOKIE, &session);
        }
        OAuthBrowser {
            latchkey,
            idp: Jar::default(),
            idp_login: idp_login.to_string(),
        }
    }

    /// A browser with no Latchkey session.
    pub fn anonymous(idp_login: &str) -> Self {
        OAuthBrowser {
            latchkey: Jar::default(),
            idp: Jar::default(),
            idp_login: idp_login.to_string(),
        }
    }

    /// A same-site request to Latchkey (all cookies sent).
    pub fn latchkey_get(&mut self, s: &Server, path: &str, headers: &[&str]) -> Resp {
        self.latchkey_request(s, "GET", path, headers, &[])
    }

    fn latchkey_request(
        &mut self,
        s: &Server,
        method: &str,
        path: &str,
        headers: &[&str],
        except: &[&str],
    ) -> Resp {
        let cookie = self.latchkey.header(path, except);
        let mut h: Vec<&str> = headers.to_vec();
        if let Some(c) = &cookie {
            h.push(c);
        }
        let r = s.request(method, path, &h, None);
        self.latchkey.update(&r);
        r
    }

    /// `POST /api/connections/<provider>/start` from Latchkey's own page
    /// (same-origin `fetch`: `Origin` is Latchkey's). Returns the response
    /// (200 `{"authorize_url"}` when it worked).
    pub fn start(&mut self, s: &Server, provider: &str) -> Resp {
        let origin = format!("Origin: https://localhost:{}", s.port);
        self.latchkey_request(
            s,
            "POST",
            &format!("/api/connections/{provider}/start"),
            &[&origin],
            &[],
        )
    }

    /// [`OAuthBrowser::start`], asserting a 200 with the provider's URL;
    /// returns the authorization URL.
    pub fn start_ok(&mut self, s: &Server, idp: &Idp, provider: &str) -> String {
        let r = self.start(s, provider);
        assert_eq!(r.status, 200, "start: {} {:?}", r.body, r.headers);
        let loc = r.json()["authorize_url"]
            .as_str()
            .expect("authorize_url")
            .to_string();
        assert!(
            loc.starts_with(&format!("{}/", idp.issuer)),
            "start redirects to {loc}, not to the provider"
        );
        assert!(
            self.latchkey.get(BINDING_COOKIE).is_some(),
            "start set no {BINDING_COOKIE} cookie: {:?}",
            r.headers
        );
        loc
    }

    /// Walks the provider's pages from `authorize_url`: follows redirects,
    /// signs in, consents or denies; returns the URL the provider finally
    /// redirects to (Latchkey's callback with `code`/`error` and `state`).
    pub fn authorize(&mut self, idp: &Idp, authorize_url: &str, decision: Decision) -> String {
        let mut url = authorize_url.to_string();
        let mut form: Option<String> = None;
        for _ in 0..20 {
            assert!(
                url.starts_with(&format!("{}/", idp.issuer)),
                "left the provider for {url}"
            );
            let path = &url[idp.issuer.len()..];
            let cookie = self.idp.header(path, &[]);
            let mut h: Vec<&str> = Vec::new();
            if let Some(c) = &cookie {
                h.push(c);
            }
            let r = match form.take() {
                Some(body) => {
                    h.push("Content-Type: application/x-www-form-urlencoded");
                    http("POST", &url, &h, Some(body.as_bytes()))
                }
                None => http("GET", &url, &h, None),
            };
            self.idp.update(&r);
            if (300..400).contains(&r.status) {
                let loc = r.header("location").expect("Location").to_string();
                let next = if loc.starts_with('/') {
                    format!("{}{loc}", idp.issuer)
                } else {
                    loc
                };
                if !next.starts_with(&format!("{}/", idp.issuer)) {
                    return next;
                }
                url = next;
                continue;
            }
            assert_eq!(r.status, 200, "provider page {url}: {}", r.body);
            if r.body.contains(r#"name="prompt" value="login""#) {
                form = Some(form_encode(&[
                    ("prompt", "login"),
                    ("login", &self.idp_login),
                    ("password", "any-password"),
                ]));
            } else if r.body.contains(r#"name="prompt" value="consent""#) {
                match decision {
                    Decision::Approve => form = Some(form_encode(&[("prompt", "consent")])),
                    Decision::Deny => {
                        url = format!("{}/abort", url.split('?').next().unwrap_or(&url));
                    }
                }
            } else {
                panic!("unexpected provider page at {url}:\n{}", r.body);
            }
        }
        panic!("the provider's pages did not end in a redirect after 20 steps");
    }

    /// Delivers the provider's redirect `callback_url` to Latchkey as a
    /// browser does after a cross-site navigation: the `SameSite=Strict`
    /// session cookie stays home, the binding cookie goes along. `headers`
    /// are extra request headers (e.g. `Accept: application/json`).
    pub fn callback(&mut self, s: &Server, callback_url: &str, headers: &[&str]) -> Resp {
        let path = latchkey_path(s, callback_url);
        self.latchkey_request(s, "GET", &path, headers, &[SESSION_COOKIE])
    }

    /// The whole flow, approving; returns Latchkey's answer to the callback.
    pub fn connect(&mut self, s: &Server, idp: &Idp, provider: &str) -> Resp {
        let auth = self.start_ok(s, idp, provider);
        let cb = self.authorize(idp, &auth, Decision::Approve);
        self.callback(s, &cb, &[])
    }
}

/// The path and query of `url` on Latchkey `s` (either name it answers to);
/// panics for any other origin.
pub fn latchkey_path(s: &Server, url: &str) -> String {
    for host in ["localhost", "127.0.0.1"] {
        let origin = format!("https://{host}:{}", s.port);
        if let Some(rest) = url.strip_prefix(&origin)
            && rest.starts_with('/')
        {
            return rest.to_string();
        }
    }
    panic!("{url} is not on Latchkey (port {})", s.port);
}
