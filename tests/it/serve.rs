//! `latchkey serve` as a user meets it: the first start with no
//! configuration, probes, headers, configuration errors, the CLI against a
//! running server, metrics and logs.

use latchkey_e2e::{ServeOpts, Server, TestDir, curl_cmd, run_cmd, spawn_server};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn first_start_with_no_configuration_serves_https() {
    let d = TestDir::new();
    assert!(!d.data().exists());
    let s = d.serve();

    // The README's check, with the CA in a file instead of `<(…)`.
    let ca = d.path().join("exported-ca.pem");
    std::fs::write(&ca, d.ok(&["tls", "export-ca"], b"").stdout).expect("write CA");
    let mut c = curl_cmd();
    c.arg("--cacert")
        .arg(&ca)
        .arg(format!("https://localhost:{}/health", s.port));
    let out = run_cmd(c, b"");
    assert!(out.status.success(), "curl failed: {}", out.stderr);
    assert_eq!(out.stdout, r#"{"status":"ok"}"#);

    // Without the CA, curl refuses the certificate: it is really checked.
    let mut c = curl_cmd();
    c.arg("--cacert")
        .arg("/etc/ssl/certs/ca-certificates.crt")
        .arg(format!("https://localhost:{}/health", s.port));
    let out = run_cmd(c, b"");
    assert!(!out.status.success(), "an unknown CA must not verify");

    let r = s.get("/ready");
    assert_eq!(r.status, 200, "{}", r.body);
    let ready = r.json();
    assert_eq!(ready["status"], "ready");
    let checks = ready["checks"].as_array().expect("checks");
    for name in ["database", "vault", "certificates"] {
        let check = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` check in {ready}"));
        assert_eq!(check["ok"], true, "{check}");
    }

    // One block that says where to go and what to trust.
    let banner = s.stdout();
    let fingerprint = d.ok(&["tls", "status", "--json"], b"").stdout;
    let status: serde_json::Value = serde_json::from_str(&fingerprint).expect("status json");
    let ca_fp = status["ca"]["fingerprint_sha256"]
        .as_str()
        .expect("CA fingerprint");
    assert!(
        banner.contains(&format!("https://localhost:{}/", s.port)),
        "{banner}"
    );
    assert!(banner.contains(ca_fp), "CA fingerprint not in:\n{banner}");
    let ca_path = d.data().join("tls").join("ca.pem");
    assert!(
        banner.contains(&ca_path.display().to_string()),
        "CA path not in:\n{banner}"
    );
    assert_eq!(
        std::fs::read_to_string(&ca_path).expect("ca.pem"),
        std::fs::read_to_string(&ca).expect("export"),
        "export-ca prints the CA the banner points at"
    );
    assert!(
        !banner.contains(&s.admin_token()),
        "the banner names the token file, never the token"
    );

    for (f, want) in [
        ("master.key", 0o600),
        ("admin.token", 0o600),
        ("tls/ca.key", 0o600),
        ("tls/server.key", 0o600),
        ("latchkey.redb", 0o600),
    ] {
        assert_eq!(mode(&d.data().join(f)), want, "{f}");
    }
    assert_eq!(mode(&d.data()), 0o700, "data dir");
    assert_eq!(s.admin_token().len(), 64);
}

#[test]
fn security_headers_and_request_ids_on_every_response() {
    let d = TestDir::new();
    let s = d.serve();
    let token = format!("Authorization: Bearer {}", s.admin_token());
    let cases = [
        ("/health", vec![], 200),
        ("/no/such/route", vec![], 404),
        ("/api/vault", vec![], 401),
        ("/api/vault/missing", vec![token.as_str()], 404),
    ];
    for (path, headers, status) in cases {
        let r = s.request("GET", path, &headers, None);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        for (name, value) in [
            (
                "strict-transport-security",
                "max-age=63072000; includeSubDomains",
            ),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
            ("cache-control", "no-store"),
        ] {
            assert_eq!(r.header(name), Some(value), "{path}: {name}");
        }
        let csp = r.header("content-security-policy").expect("CSP");
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        // A generated id: 32 hex digits.
        let id = r.header("x-request-id").expect("x-request-id");
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{path}: {id}"
        );
        if status >= 400 {
            assert!(r.json()["error"].is_string(), "{path}: {}", r.body);
        }
    }
    // Two requests get two ids.
    let a = s.get("/health");
    let b = s.get("/health");
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));

    // A plain client id is echoed; one that could smuggle text into logs
    // is replaced.
    let r = s.request("GET", "/health", &["x-request-id: trace-42.a_b:c"], None);
    assert_eq!(r.header("x-request-id"), Some("trace-42.a_b:c"));
    let long = format!("x-request-id: {}", "a".repeat(65));
    for bad in [
        "x-request-id: two words",
        "x-request-id: a\"b",
        long.as_str(),
    ] {
        let r = s.request("GET", "/no/such/route", &[bad], None);
        let id = r.header("x-request-id").expect("id");
        assert_eq!(id.len(), 32, "`{bad}` must be replaced, got {id}");
    }
}

/// Runs `serve` expecting a configuration error; checks that nothing was
/// started or created and returns the error line.
fn serve_fails(d: &TestDir, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut c = d.cmd(&args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run_cmd(c, b"");
    assert_eq!(
        out.status.code(),
        Some(1),
        "serve {extra:?} {env:?} should fail: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        !out.stdout.contains("is running"),
        "no banner: {}",
        out.stdout
    );
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line, got:\n{}", out.stderr);
    assert!(lines[0].starts_with("latchkey: "), "{}", lines[0]);
    for f in ["latchkey.lock", "admin.token", "tls", "latchkey.redb"] {
        assert!(
            !d.data().join(f).exists(),
            "{f} created despite a configuration error ({})",
            lines[0]
        );
    }
    lines[0].to_string()
}

#[test]
fn configuration_errors_name_the_key_and_start_nothing() {
    let cases: [(&str, &str, &[&str]); 8] = [
        (
            "[server]\nlisten_addr = \"127.0.0.1:1\"\n",
            "`server.listen_addr`",
            &["unknown field"],
        ),
        (
            "[server]\nmax_body_bytes = \"big\"\n",
            "`server.max_body_bytes`",
            &["invalid type"],
        ),
        (
            "[server]\nlisten = \"localhost:8443x\"\n",
            "`server.listen`",
            &["is not an address:port"],
        ),
        (
            "[tls]\ncheck_interval = \"soon\"\n",
            "`tls.check_interval`",
            &["not a duration"],
        ),
        (
            "[tls]\nserver_cert_lifetime = \"30m\"\nrenew_before = \"1m\"\n",
            "`tls.server_cert_lifetime`",
            &["30m", "1h"],
        ),
        (
            "[metrics]\naccess = \"token\"\n",
            "`metrics.token`",
            &["at least 16"],
        ),
        (
            "[tls]\nextra_names = [\"not a name\"]\n",
            "`tls.extra_names`",
            &["not a name"],
        ),
        (
            "[vault]\nmaster_key = \"post-it\"\n",
            "`vault.master_key`",
            &["unknown variant"],
        ),
    ];
    for (toml, key, words) in cases {
        let d = TestDir::new();
        d.write_config(toml);
        let err = serve_fails(&d, &[], &[]);
        assert!(err.contains(key), "{toml:?}: {err}");
        assert!(err.contains("latchkey.toml"), "names the file: {err}");
        for w in words {
            assert!(err.contains(w), "{toml:?}: `{w}` missing in {err}");
        }
    }

    // TOML syntax: the file and the position.
    let d = TestDir::new();
    d.write_config("[server\nlisten = 1\n");
    let err = serve_fails(&d, &[], &[]);
    assert!(
        err.contains("latchkey.toml") && err.contains("line 1"),
        "{err}"
    );

    // An explicit --config must exist and be readable.
    let d = TestDir::new();
    let missing = d.path().join("nowhere.toml");
    let err = serve_fails(&d, &["--config", missing.to_str().expect("utf8")], &[]);
    assert!(
        err.contains("cannot read the configuration file") && err.contains("nowhere.toml"),
        "{err}"
    );
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the cause is said once: {err}"
    );
    let err = serve_fails(&d, &["--config", d.path().to_str().expect("utf8")], &[]);
    assert!(err.contains("Is a directory"), "{err}");

    // Environment overrides are checked like the file, naming the key.
    let d = TestDir::new();
    for (var, value, key) in [
        ("LATCHKEY_SERVER__LISTEN", "nonsense", "`server.listen`"),
        (
            "LATCHKEY_SERVER__MAX_BODY_BYTES",
            "0",
            "`server.max_body_bytes`",
        ),
        ("LATCHKEY_TLS__CHECK_INTERVAL", "0", "`tls.check_interval`"),
        ("LATCHKEY_SERVER__NO_SUCH_KEY", "1", "`server.no_such_key`"),
    ] {
        let err = serve_fails(&d, &[], &[(var, value)]);
        assert!(err.contains(key) && err.contains("environment"), "{err}");
    }

    // A bad flag is a usage error (exit 2).
    let out = d.run(&["serve", "--listen", "nonsense"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--listen"), "{}", out.stderr);
    assert!(!d.data().join("latchkey.lock").exists());
}

#[test]
fn config_check_prints_effective_settings_with_secrets_redacted() {
    let d = TestDir::new();
    let metrics_token = "metrics-token-CANARY-5e1f0a9b";
    d.write_config(&format!(
        "[server]\nrequest_timeout = \"12s\"\n[metrics]\naccess = \"token\"\ntoken = \"{metrics_token}\"\n"
    ));
    let out = d.ok(&["config", "check"], b"");
    let mut c = d.cmd(&["config", "check"]);
    c.env("LATCHKEY_SERVER__MAX_BODY_BYTES", "4096");
    let with_env = run_cmd(c, b"");
    assert!(with_env.status.success(), "{}", with_env.stderr);
    for o in [&out, &with_env] {
        let all = format!("{}{}", o.stdout, o.stderr);
        assert!(!all.contains(metrics_token), "token printed:\n{all}");
        assert!(all.contains("redacted"), "{all}");
        assert!(all.contains("12s"), "file value shown:\n{all}");
        assert!(all.contains("loopback") || all.contains("token"), "{all}");
    }
    assert!(
        with_env.stdout.contains("4096"),
        "env override shown:\n{}",
        with_env.stdout
    );
    assert!(
        out.stdout.contains("1048576"),
        "default shown:\n{}",
        out.stdout
    );

    // A broken file: non-zero exit and the key.
    d.write_config("[server]\nrequest_timeout = \"forever\"\n");
    let err = d.fails(&["config", "check"], b"");
    assert!(err.contains("`server.request_timeout`"), "{err}");
}

#[test]
fn cli_uses_the_running_server() {
    let d = TestDir::new();
    let mut s = d.serve();
    d.ok(
        &[
            "vault",
            "put",
            "openai",
            "--kind",
            "api_key",
            "--provider",
            "openai",
        ],
        b"sk-served-0001\n",
    );
    // The CLI went through the API: the server's own listing has it.
    let r = s.api("GET", "/api/vault", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["name"], "openai");

    let list = d.ok(&["vault", "list", "--json"], b"").stdout;
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["kind"], "api_key");
    assert_eq!(
        d.ok(&["vault", "get", "openai", "--reveal"], b"").stdout,
        "sk-served-0001"
    );
    d.ok(&["vault", "put", "gone"], b"x");
    d.ok(&["vault", "rm", "gone"], b"");
    let err = d.fails(&["vault", "get", "gone", "--reveal"], b"");
    assert!(err.contains("gone"), "{err}");

    // Seal: metadata stays readable, values do not.
    d.ok(&["seal"], b"");
    let err = d.fails(&["vault", "get", "openai", "--reveal"], b"");
    assert!(err.contains("sealed"), "{err}");
    assert_eq!(s.get("/ready").status, 503);
    assert!(d.ok(&["vault", "list"], b"").stdout.contains("openai"));
    d.ok(&["unseal"], b"");
    assert_eq!(s.get("/ready").status, 200);

    let backup = d.path().join("served.backup");
    let b = backup.to_str().expect("utf8");
    d.ok(
        &["backup", "--out", b, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );
    s.stop();
    let restored = TestDir::new();
    restored.ok(
        &["restore", b, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );
    assert_eq!(
        restored
            .ok(&["vault", "get", "openai", "--reveal"], b"")
            .stdout,
        "sk-served-0001"
    );
    // The original opens cleanly once the server is gone.
    d.ok(&["vault", "verify"], b"");
}

#[test]
fn passphrase_mode_starts_sealed_until_unsealed() {
    let d = TestDir::new();
    d.write_config("[vault]\nmaster_key = \"passphrase\"\n");
    let pass = b"correct horse battery staple\n";
    d.ok(&["vault", "init", "--passphrase-stdin"], pass);
    let s = d.serve();
    assert!(s.stdout().contains("sealed"), "{}", s.stdout());

    // What the signed-out pages read to offer the unseal form.
    let setup = s.get("/api/setup").json();
    assert_eq!(
        (&setup["sealed"], &setup["unseal_with_passphrase"]),
        (&serde_json::json!(true), &serde_json::json!(true)),
        "{setup}"
    );

    let r = s.get("/ready");
    assert_eq!(r.status, 503, "{}", r.body);
    let vault = r.json()["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "vault")
        .cloned()
        .expect("vault check");
    assert_eq!(vault["ok"], false);
    assert!(
        vault["detail"]
            .as_str()
            .is_some_and(|t| t.contains("sealed"))
    );

    let r = s.api(
        "POST",
        "/api/vault",
        Some(r#"{"name":"k","kind":"generic","secret":"v"}"#),
    );
    assert_eq!((r.status, r.error_code().as_str()), (423, "vault_sealed"));

    let err = d.fails(&["unseal", "--passphrase-stdin"], b"not the passphrase\n");
    assert!(err.contains("passphrase"), "{err}");
    assert_eq!(
        s.get("/ready").status,
        503,
        "a wrong passphrase unseals nothing"
    );

    d.ok(&["unseal", "--passphrase-stdin"], pass);
    assert_eq!(s.get("/ready").status, 200);
    assert_eq!(s.get("/api/setup").json()["sealed"], false);
    d.ok(&["vault", "put", "k"], b"value-after-unseal");
    assert_eq!(
        d.ok(&["vault", "get", "k", "--reveal"], b"").stdout,
        "value-after-unseal"
    );
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn metrics_count_requests_latency_and_failed_handshakes() {
    let d = TestDir::new();
    let s = d.serve();
    s.get("/health");
    s.get("/no/such/route");
    let before = s.get("/metrics");
    assert_eq!(before.status, 200, "{}", before.body);
    assert!(
        before
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        before.header("content-type")
    );
    let text = &before.body;
    assert!(
        metric(
            text,
            r#"latchkey_http_requests_total{method="GET",route="/health",status="200"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(
        metric(
            text,
            r#"latchkey_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ) == Some(1.0),
        "unknown paths are one series, not their raw path:\n{text}"
    );
    assert!(!text.contains("/no/such/route"));
    assert!(text.contains("# TYPE latchkey_http_request_duration_seconds histogram"));
    assert!(
        text.contains(
            r#"latchkey_http_request_duration_seconds_bucket{route="/health",le="+Inf"}"#
        ),
        "{text}"
    );
    let failures = r"latchkey_tls_handshake_failures_total";
    let n0 = metric(text, failures).unwrap_or_else(|| panic!("no {failures}:\n{text}"));

    // Garbage instead of a ClientHello.
    {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        tcp.write_all(b"this is not TLS at all\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 512];
        while matches!(tcp.read(&mut buf), Ok(n) if n > 0) {}
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n1 = metric(&s.get("/metrics").body, failures).expect("counter");
        if n1 >= n0 + 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "handshake failure not counted ({n0} → {n1})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_access_off_and_token() {
    let d = TestDir::new();
    let s = spawn_server(
        &d,
        &ServeOpts::new().config("[metrics]\naccess = \"off\"\n"),
    );
    let r = s.get("/metrics");
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    drop(s);

    let d = TestDir::new();
    let token = "a-long-random-metrics-token";
    let s = spawn_server(
        &d,
        &ServeOpts::new().config(&format!(
            "[metrics]\naccess = \"token\"\ntoken = \"{token}\"\n"
        )),
    );
    let r = s.get("/metrics");
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    for bad in [
        "Authorization: Bearer a-long-random-metrics-tokeX".to_string(),
        format!("Authorization: Basic {token}"),
        format!("Authorization: Bearer {}", s.admin_token()),
    ] {
        let r = s.request("GET", "/metrics", &[&bad], None);
        assert_eq!(r.status, 401, "{bad}");
    }
    let r = s.request(
        "GET",
        "/metrics",
        &[&format!("Authorization: Bearer {token}")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("latchkey_http_requests_total"));
}

const CANARY: &str = "sk-SERVECANARY-93c1d7e05a";

/// Stores and reveals the canary every way the server offers, including
/// requests that fail with the canary in them; returns the admin token.
fn exercise_with_canary(d: &TestDir, s: &Server) -> String {
    let put =
        format!(r#"{{"name":"canary","kind":"api_key","provider":"openai","secret":"{CANARY}"}}"#);
    let auth = format!("Authorization: Bearer {}", s.admin_token());
    let r = s.request(
        "POST",
        "/api/vault",
        &[
            &auth,
            "Content-Type: application/json",
            "x-request-id: canary-put-1",
        ],
        Some(put.as_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = s.api("POST", "/api/vault/canary/reveal", None);
    assert_eq!(r.json()["value"], CANARY);
    assert_eq!(
        d.ok(&["vault", "get", "canary", "--reveal"], b"").stdout,
        CANARY
    );
    d.ok(&["vault", "put", "canary2", "--replace"], CANARY.as_bytes());
    // Failures with the canary in the body must not quote it.
    for body in [
        format!(r#"{{"name":"canary","kind":"api_key","secret":"{CANARY}"}}"#), // exists
        format!(r#"{{"name":"x","kind":"api_key","secret":"{CANARY}","extra":1}}"#),
        format!(r#"{{"name":"x","kind":"{CANARY}","secret":"v"}}"#),
        format!(r#"{{"name":"{CANARY}!","kind":"api_key","secret":"v"}}"#),
        format!(r#"{{"name":"x","kind":"api_key","provider":"{CANARY}","secret":"v"}}"#),
        format!(r#"{{"name":"x","kind":"api_key","labels":{{"{CANARY}":"v"}},"secret":"v"}}"#),
        format!(r#"{{"name":"x","secret":"{CANARY}""#),
    ] {
        let r = s.api("POST", "/api/vault", Some(&body));
        assert!(r.status >= 400, "{body}");
        assert!(
            !r.body.contains(CANARY),
            "error echoes the secret: {}",
            r.body
        );
    }
    let r = s.api(
        "POST",
        "/api/vault/unseal",
        Some(&format!(r#"{{"passphrase":"{CANARY}"}}"#)),
    );
    assert!(!r.body.contains(CANARY));
    s.admin_token()
}

#[test]
fn secrets_never_reach_the_server_logs() {
    for format in ["human", "json"] {
        let d = TestDir::new();
        let mut s = spawn_server(
            &d,
            &ServeOpts::new()
                .arg("--log-format")
                .arg(format)
                .env("LATCHKEY_LOG", "debug"),
        );
        let token = exercise_with_canary(&d, &s);
        s.stop();
        let (out, err) = (s.stdout(), s.stderr());
        assert!(
            err.lines().count() > 10,
            "debug logging was on; expected a real log:\n{err}"
        );
        for (what, text) in [("stdout", &out), ("stderr", &err)] {
            assert!(!text.contains(CANARY), "{format}: secret in {what}");
            assert!(!text.contains(&token), "{format}: admin token in {what}");
        }
        assert!(
            err.contains("canary-put-1"),
            "{format}: the request id is logged"
        );
        if format == "json" {
            let mut with_id = 0;
            for line in err.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(
                    v["level"].is_string() && v["timestamp"].is_string(),
                    "{line}"
                );
                if v["fields"]["message"] == "request finished" {
                    // The router's requests carry their facts in a span;
                    // proxied ones (the short path) on the event itself.
                    let span = v["spans"]
                        .as_array()
                        .and_then(|s| s.iter().find(|s| s["name"] == "request"))
                        .or_else(|| v["fields"]["request_id"].is_string().then(|| &v["fields"]))
                        .unwrap_or_else(|| panic!("no request span or fields: {line}"));
                    assert!(span["request_id"].as_str().is_some_and(|id| !id.is_empty()));
                    assert!(
                        span["status"].is_u64() && span["route"].is_string(),
                        "{line}"
                    );
                    with_id += 1;
                }
            }
            assert!(with_id >= 8, "every request is logged with its id");
        }
    }
}

/// `server.tls = false` on loopback: plain HTTP, no certificates made, the
/// banner says `http://` and names no CA, and everything a person or the
/// CLI does over HTTPS works the same — sign-in sets the same cookie, the
/// CLI finds the server through the lock file.
#[test]
fn plain_http_on_loopback_with_tls_off() {
    use latchkey_e2e::{Browser, PASSWORD, auth_config, web_setup};
    let d = TestDir::new();
    let mut s = spawn_server(
        &d,
        &ServeOpts::new().config(&format!("[server]\ntls = false\n{}", auth_config(""))),
    );
    assert_eq!(s.scheme, "http", "lock file advertises http://");
    assert!(!d.data().join("tls").exists(), "no certificate was made");
    let banner = s.stdout();
    assert!(
        banner.contains(&format!("Open:           http://localhost:{}/", s.port)),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("http://localhost:{}/setup#token=", s.port)),
        "{banner}"
    );
    assert!(!banner.contains("https://"), "{banner}");
    assert!(!banner.contains("CA "), "{banner}");

    // Really plain HTTP: no TLS on the port.
    let mut c = curl_cmd();
    c.arg(format!("http://127.0.0.1:{}/health", s.port));
    let out = run_cmd(c, b"");
    assert_eq!(out.stdout, r#"{"status":"ok"}"#, "{}", out.stderr);
    let r = s.get("/ready");
    assert_eq!(r.status, 200, "{}", r.body);
    let checks = r.json()["checks"].clone();
    assert!(
        checks
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["name"] != "certificates")),
        "no certificate check without certificates: {checks}"
    );

    // A browser on http://localhost: the cookie keeps every flag.
    let owner = web_setup(&s, "owner");
    let b = Browser::new(&s);
    let r = b.login("owner", PASSWORD, Some(&owner.totp));
    let cookie = r
        .headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("__Host-latchkey_session="))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no session cookie: {:?}", r.headers));
    for flag in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    // Same-origin is http://localhost:PORT here; the https origin is another.
    let r = b.post("/api/users/invites", &serde_json::json!({"role": "user"}));
    assert_eq!(r.status, 201, "{}", r.body);
    let url = r.json()["url"].as_str().unwrap_or_default().to_string();
    assert!(
        url.starts_with(&format!("http://localhost:{}/invite#", s.port)),
        "{url}"
    );
    let mut other = Browser::new(&s);
    other.login("owner", PASSWORD, Some(&owner.totp));
    other.origin = Some(format!("https://localhost:{}", s.port));
    let r = other.post("/api/users/invites", &serde_json::json!({"role": "user"}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error_code(), "csrf");

    // The CLI reaches it over http:// on loopback with the admin token.
    d.ok(&["vault", "put", "plain-entry"], b"sk-plain-0001\n");
    let r = s.api("GET", "/api/vault/plain-entry", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        d.ok(&["vault", "get", "plain-entry", "--reveal"], b"")
            .stdout,
        "sk-plain-0001"
    );
    s.stop();
}

/// Runs `serve ARGS` (with `env`) expecting a refusal at startup; returns
/// the one error line after checking nothing was created.
fn serve_refused(d: &TestDir, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let mut c = d.cmd(&all);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = latchkey_e2e::run_cmd_for(c, b"", Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(1),
        "serve {args:?} {env:?} should be refused: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(!out.stdout.contains("is running"), "{}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line, got:\n{}", out.stderr);
    for f in ["latchkey.lock", "admin.token", "tls", "latchkey.redb"] {
        assert!(!d.data().join(f).exists(), "{f} created: {}", lines[0]);
    }
    lines[0].to_string()
}

/// Plain HTTP on a network address would carry passwords and cookies in
/// the clear: refused at startup, naming the key, unless a trusted proxy
/// is listed — from the file, the environment or `--listen` alike.
#[test]
fn plain_listener_on_the_network_without_trusted_proxies_is_refused() {
    let d = TestDir::new();
    d.write_config("[server]\ntls = false\n");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let err = serve_refused(&d, &["--listen", listen], &[]);
        assert!(
            err.starts_with("latchkey: ")
                && err.contains("`server.tls`")
                && err.contains("auth.trusted_proxies")
                && err.contains(listen),
            "{err}"
        );
    }

    let d = TestDir::new();
    let err = serve_refused(
        &d,
        &["--listen", "0.0.0.0:0"],
        &[("LATCHKEY_SERVER__TLS", "false")],
    );
    assert!(err.contains("`server.tls`"), "{err}");

    let d = TestDir::new();
    d.write_config("[server]\ntls = false\nlisten = \"0.0.0.0:0\"\n");
    let err = serve_refused(&d, &[], &[]);
    assert!(
        err.contains("latchkey.toml") && err.contains("`server.tls`"),
        "{err}"
    );

    let d = TestDir::new();
    d.write_config("[server]\ntls = false\nhttp_redirect_listen = \"127.0.0.1:0\"\n");
    let err = serve_refused(&d, &["--listen", "127.0.0.1:0"], &[]);
    assert!(err.contains("`server.http_redirect_listen`"), "{err}");

    // With HTTPS (the default) the same address is fine.
    let d = TestDir::new();
    let mut s = spawn_server(
        &d,
        &ServeOpts {
            listen: "0.0.0.0:0".into(),
            ..ServeOpts::new()
        },
    );
    assert_eq!(s.scheme, "https");
    s.stop();
}

/// Behind a trusted reverse proxy (here: a plain listener on every
/// address with 127.0.0.1 listed) the origin a browser used comes from
/// `X-Forwarded-Proto`/`X-Forwarded-Host`, and only from the listed peer;
/// the admin token relayed by it is refused.
#[test]
fn forwarded_origin_is_believed_only_from_a_trusted_proxy() {
    use latchkey_e2e::{Browser, PASSWORD, auth_config, web_setup};
    let d = TestDir::new();
    let d2 = TestDir::new();
    let cfg = |proxies: &str| {
        format!(
            "[server]\ntls = false\n{}",
            auth_config(&format!("trusted_proxies = [{proxies}]\n"))
        )
    };
    let s = spawn_server(
        &d,
        &ServeOpts {
            listen: "0.0.0.0:0".into(),
            ..ServeOpts::new().config(&cfg("\"127.0.0.1\""))
        },
    );
    let owner = web_setup(&s, "owner");
    let mut b = Browser::new(&s);
    b.login("owner", PASSWORD, Some(&owner.totp));
    b.origin = Some("https://vault.example".into());
    let fwd = [
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: vault.example",
    ];
    let invite = r#"{"role":"user"}"#;
    let r = b.call_with("POST", "/api/users/invites", &fwd, Some(invite));
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.json()["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://vault.example/invite#")),
        "{}",
        r.body
    );
    let r = b.call("POST", "/api/users/invites", Some(invite));
    assert_eq!(r.status, 403, "without the proxy's word: {}", r.body);
    // The relayed admin token is not the host's.
    let r = s.request(
        "GET",
        "/api/vault",
        &[&format!("Authorization: Bearer {}", s.admin_token())],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    // The CLI on this machine keeps the token's authority: it connects from
    // a loopback address the trusted-proxy list does not cover.
    d.ok(&["vault", "put", "behind-proxy"], b"sk-behind-proxy-1\n");
    assert!(
        d.ok(&["vault", "list"], b"")
            .stdout
            .contains("behind-proxy"),
        "the CLI reached the running server"
    );

    // The same headers from a peer that is not listed change nothing.
    let s2 = spawn_server(&d2, &ServeOpts::new().config(&cfg("\"10.9.9.9\"")));
    let owner2 = web_setup(&s2, "owner");
    let mut b2 = Browser::new(&s2);
    b2.login("owner", PASSWORD, Some(&owner2.totp));
    b2.origin = Some("https://vault.example".into());
    let r = b2.call_with("POST", "/api/users/invites", &fwd, Some(invite));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error_code(), "csrf");
}
