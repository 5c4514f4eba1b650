//! A small typed client for a running server's admin API, so CLI commands
//! keep working while `latchkey serve` holds the data directory.
//!
//! The server says where it listens in the data directory's lock file; the
//! client trusts only that data directory's own CA (`tls/ca.pem`) and
//! authenticates with `admin.token`. A server with `server.tls = false`
//! advertises `http://` on loopback: the token then never leaves the
//! machine, and a plain `http://` URL to anywhere else is refused. Errors
//! come back as the API's one-line message.

use crate::context::Context;
use crate::server::host::{admin_token_path, read_admin_token};
use anyhow::{Context as _, anyhow, bail};
use latchkey_core::secrecy::{ExposeSecret, SecretString};
use latchkey_core::store::current_owner;
use latchkey_core::vault::{NewRecord, RecordMeta, record::validate_name};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use zeroize::Zeroizing;

/// A connection to the server running on this data directory.
pub struct Remote {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
    token: SecretString,
}

/// What `POST /api/backup` returns.
pub struct RemoteBackup {
    pub bytes: Vec<u8>,
    pub vault_records: String,
    pub schema_version: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

impl Remote {
    /// The running server for `ctx`'s data directory, if one holds it.
    pub fn detect(ctx: &Context) -> anyhow::Result<Option<Remote>> {
        let Some(owner) = current_owner(&ctx.data_dir) else {
            return Ok(None);
        };
        if owner.role != "serve" {
            return Ok(None); // another one-shot command: the lock error says so
        }
        let Some(url) = owner.api_url else {
            bail!(
                "the Latchkey server (PID {}) on {} is still starting; try again in a moment",
                owner.pid,
                ctx.data_dir.display()
            );
        };
        Remote::connect(ctx, url).map(Some)
    }

    fn connect(ctx: &Context, base: String) -> anyhow::Result<Remote> {
        // reqwest is built without a provider of its own (no aws-lc-rs) and
        // wants one even for a client that will only speak plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Backups and passphrase unsealing (scrypt) take a while.
            .timeout(Duration::from_secs(300))
            // The admin token goes to exactly the advertised address.
            .redirect(reqwest::redirect::Policy::none())
            .local_address(source_address(&base, &ctx.settings.auth.trusted_proxies)?);
        let builder = if plain_loopback(&base)? {
            builder.https_only(false)
        } else {
            let ca_pem = crate::tls::export_ca_pem(&ctx.data_dir.join("tls"))?;
            let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
                .context("reading the server's CA certificate")?;
            builder.tls_certs_only([ca]).https_only(true)
        };
        let token = read_admin_token(&admin_token_path(&ctx.data_dir))?;
        let client = builder.build().context("building the HTTP client")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(Remote {
            runtime,
            client,
            base,
            token,
        })
    }

    fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .client
            .request(method, &url)
            .bearer_auth(self.token.expose_secret());
        if let Some(b) = body {
            req = req.json(b);
        }
        // Futures are built inside the runtime: reqwest arms its timers on
        // creation.
        let resp = self
            .runtime
            .block_on(async move { req.send().await })
            .with_context(|| format!("cannot reach the Latchkey server at {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = self
            .runtime
            .block_on(async move { resp.text().await })
            .unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) if status == StatusCode::UNAUTHORIZED => Err(anyhow!(
                "the server refused the admin token in {} ({})",
                self.base,
                e.error
            )),
            Ok(e) => Err(anyhow!("{}", e.message)),
            Err(_) => Err(anyhow!("the server answered {status}")),
        }
    }

    fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
        let resp = self.send(method, path, body)?;
        let bytes = Zeroizing::new(
            self.runtime
                .block_on(async move { resp.bytes().await })
                .context("reading the server's answer")?
                .to_vec(),
        );
        serde_json::from_slice(&bytes).context("the server's answer is not what was expected")
    }

    fn entry_path(name: &str) -> anyhow::Result<String> {
        // Validated names are URL-safe (letters, digits, `.`, `_`, `-`).
        validate_name(name)?;
        Ok(format!("/api/vault/{name}"))
    }

    pub fn list(&self) -> anyhow::Result<Vec<RecordMeta>> {
        self.json(Method::GET, "/api/vault", None)
    }

    pub fn put(
        &self,
        new: &NewRecord,
        secret: &SecretString,
        replace: bool,
    ) -> anyhow::Result<RecordMeta> {
        // The CLI process is short-lived; the copy in this JSON value goes
        // with it (reqwest owns the body buffer, so it cannot be zeroized).
        let body = serde_json::json!({
            "name": new.name,
            "kind": new.kind,
            "provider": new.provider,
            "labels": new.labels,
            "secret": secret.expose_secret(),
            "replace": replace,
        });
        self.json(Method::POST, "/api/vault", Some(&body))
    }

    pub fn meta(&self, name: &str) -> anyhow::Result<RecordMeta> {
        self.json(Method::GET, &Self::entry_path(name)?, None)
    }

    pub fn reveal(&self, name: &str) -> anyhow::Result<SecretString> {
        #[derive(Deserialize)]
        struct Revealed {
            value: String,
        }
        let path = format!("{}/reveal", Self::entry_path(name)?);
        let r: Revealed = self.json(Method::POST, &path, None)?;
        Ok(SecretString::from(r.value))
    }

    pub fn remove(&self, name: &str) -> anyhow::Result<RecordMeta> {
        self.json(Method::DELETE, &Self::entry_path(name)?, None)
    }

    /// Number of entries that decrypted and belong to their records.
    pub fn verify(&self) -> anyhow::Result<u64> {
        #[derive(Deserialize)]
        struct Verified {
            verified: u64,
        }
        let v: Verified = self.json(Method::POST, "/api/vault/verify", None)?;
        Ok(v.verified)
    }

    pub fn init(&self, passphrase: &SecretString) -> anyhow::Result<()> {
        let body = serde_json::json!({ "passphrase": passphrase.expose_secret() });
        self.send(Method::POST, "/api/vault/init", Some(&body))
            .map(drop)
    }

    pub fn seal(&self) -> anyhow::Result<()> {
        self.send(Method::POST, "/api/vault/seal", None).map(drop)
    }

    pub fn unseal(&self, passphrase: Option<&SecretString>) -> anyhow::Result<()> {
        let body = passphrase.map(|p| serde_json::json!({ "passphrase": p.expose_secret() }));
        self.send(Method::POST, "/api/vault/unseal", body.as_ref())
            .map(drop)
    }

    /// Passphrase mode sends both passphrases; stored-key modes send none.
    pub fn rotate_master(
        &self,
        passphrases: Option<(&SecretString, &SecretString)>,
    ) -> anyhow::Result<()> {
        let body = passphrases.map(|(cur, new)| {
            serde_json::json!({
                "current_passphrase": cur.expose_secret(),
                "new_passphrase": new.expose_secret(),
            })
        });
        self.send(Method::POST, "/api/vault/rotate-master", body.as_ref())
            .map(drop)
    }

    /// `recipient` (age1…) or `passphrase`: exactly one.
    pub fn backup(
        &self,
        recipient: Option<&str>,
        passphrase: Option<&SecretString>,
    ) -> anyhow::Result<RemoteBackup> {
        let body = match (recipient, passphrase) {
            (Some(r), _) => serde_json::json!({ "recipient": r }),
            (None, Some(p)) => serde_json::json!({ "passphrase": p.expose_secret() }),
            (None, None) => bail!("give --recipient AGE_RECIPIENT or --passphrase-stdin"),
        };
        let resp = self.send(Method::POST, "/api/backup", Some(&body))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string()
        };
        let vault_records = header("x-latchkey-vault-records");
        let schema_version = header("x-latchkey-schema-version");
        let bytes = self
            .runtime
            .block_on(async move { resp.bytes().await })
            .context("reading the backup from the server")?
            .to_vec();
        Ok(RemoteBackup {
            bytes,
            vault_records,
            schema_version,
        })
    }

    /// `latchkey setup` against the running server (host token only).
    pub fn setup_host(
        &self,
        username: &str,
        password: &SecretString,
    ) -> anyhow::Result<serde_json::Value> {
        let body = serde_json::json!({
            "username": username,
            "password": password.expose_secret(),
        });
        self.json(Method::POST, "/api/setup/host", Some(&body))
    }

    pub fn users(&self) -> anyhow::Result<serde_json::Value> {
        self.json(Method::GET, "/api/users", None)
    }

    pub fn reset_mfa(&self, username: &str) -> anyhow::Result<serde_json::Value> {
        let path = format!("/api/users/{}/reset-mfa", path_segment(username)?);
        self.json(Method::POST, &path, None)
    }

    pub fn invite(&self, role: &str) -> anyhow::Result<serde_json::Value> {
        let body = serde_json::json!({ "role": role });
        self.json(Method::POST, "/api/users/invites", Some(&body))
    }

    /// `GET /api/audit` with `query` (already URL-safe: numbers only).
    pub fn audit(&self, query: &str) -> anyhow::Result<serde_json::Value> {
        self.json(Method::GET, &format!("/api/audit?{query}"), None)
    }
}

/// Whether `base` is a plain-HTTP URL, which is accepted only to a
/// loopback address (the lock file of a `server.tls = false` server);
/// `https://` is the other choice, anything else is refused.
fn plain_loopback(base: &str) -> anyhow::Result<bool> {
    if base.starts_with("https://") {
        return Ok(false);
    }
    let Some(rest) = base.strip_prefix("http://") else {
        bail!("the lock file names an unusable server address `{base}`");
    };
    let addr: std::net::SocketAddr = rest
        .trim_end_matches('/')
        .parse()
        .map_err(|_| anyhow!("the lock file names an unusable server address `{base}`"))?;
    if !addr.ip().to_canonical().is_loopback() {
        bail!(
            "the server at {base} speaks plain HTTP on a network address; `latchkey` commands \
             send the admin token only over HTTPS or to loopback: add a loopback address \
             (e.g. 127.0.0.1:8080) to server.listen"
        );
    }
    Ok(true)
}

/// The loopback address to connect from, when the usual one would not do.
///
/// A reverse proxy on this machine usually connects from 127.0.0.1, so
/// that address is listed in `auth.trusted_proxies` — and then nothing
/// from it is the host (the server cannot tell the proxy's requests from
/// ours), and the admin token would be refused. The CLI then connects from
/// another loopback address that no trusted-proxy entry covers (Linux
/// routes all of 127.0.0.0/8 to the loopback interface). `None`: the
/// system's choice is fine.
fn source_address(base: &str, trusted_proxies: &[String]) -> anyhow::Result<Option<IpAddr>> {
    let Some(server) = base
        .split_once("://")
        .and_then(|(_, rest)| {
            rest.trim_end_matches('/')
                .parse::<std::net::SocketAddr>()
                .ok()
        })
        .map(|a| a.ip().to_canonical())
        .filter(IpAddr::is_loopback)
    else {
        return Ok(None);
    };
    let proxies =
        latchkey_core::http::parse_trusted_proxies(trusted_proxies).map_err(|e| anyhow!(e))?;
    let trusted = |ip: &IpAddr| proxies.iter().any(|net| net.contains(ip));
    // The source the system picks for a loopback destination: itself on
    // IPv6 (::1), 127.0.0.1 on IPv4.
    let usual = match server {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    if !trusted(&usual) {
        return Ok(None);
    }
    let other = match server {
        IpAddr::V4(_) => (2..=254u8)
            .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
            .find(|ip| !trusted(ip)),
        IpAddr::V6(_) => None,
    };
    match other {
        Some(ip) => Ok(Some(ip)),
        None => bail!(
            "auth.trusted_proxies covers {usual}, the address `latchkey` commands reach the \
             server from, so the server would take them for the proxy and refuse the admin \
             token: list only the proxy's own address (e.g. 127.0.0.1, not 127.0.0.0/8 or ::1)"
        ),
    }
}

/// A username as a path segment: usernames are letters, digits and
/// `._-@`, all URL-safe in a path.
fn path_segment(s: &str) -> anyhow::Result<&str> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
        Ok(s)
    } else {
        bail!("`{s}` is not a valid username")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(!plain_loopback("https://192.168.1.2:8443").expect("https"));
        assert!(plain_loopback("http://127.0.0.1:8080").expect("v4"));
        assert!(plain_loopback("http://[::1]:8080").expect("v6"));
        let err = plain_loopback("http://192.168.1.2:8080").expect_err("lan");
        assert!(err.to_string().contains("server.listen"), "{err}");
        assert!(plain_loopback("ftp://127.0.0.1:1").is_err());
        assert!(plain_loopback("http://localhost:1").is_err());
    }

    /// A proxy trusted at 127.0.0.1 must not take the CLI's authority: the
    /// CLI then connects from the first loopback address no entry covers.
    #[test]
    fn cli_source_address_avoids_trusted_proxies() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let url = "http://127.0.0.1:8080";
        assert_eq!(source_address(url, &[]).expect("none"), None);
        assert_eq!(
            source_address(url, &list(&["10.0.0.5"])).expect("other"),
            None
        );
        assert_eq!(
            source_address(url, &list(&["127.0.0.1"])).expect("moved"),
            Some("127.0.0.2".parse().expect("ip"))
        );
        assert_eq!(
            source_address(url, &list(&["127.0.0.0/31", "127.0.0.2"])).expect("moved"),
            Some("127.0.0.3".parse().expect("ip"))
        );
        assert_eq!(
            source_address("https://192.168.1.2:8443", &list(&["127.0.0.1"])).expect("lan"),
            None
        );
        let err = source_address(url, &list(&["127.0.0.0/8"])).expect_err("all of loopback");
        assert!(err.to_string().contains("auth.trusted_proxies"), "{err}");
        let err = source_address("https://[::1]:8443", &list(&["::1"])).expect_err("v6");
        assert!(err.to_string().contains("auth.trusted_proxies"), "{err}");
    }
}
