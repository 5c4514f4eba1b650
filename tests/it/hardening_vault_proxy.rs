//! Issue #19, items 6, 8, 11, 15 and 17, attacked through the real binary:
//! a CA created twice by racing processes, the passphrase unseal as an
//! unauthenticated memory sink and oracle, usage rows keyed by whatever an
//! upstream says, traversal paths for other parsers, and forged backups.

use super::proxy::{Mock, post};
use latchkey_e2e::race::vm_rss_kib;
use latchkey_e2e::{
    ServeOpts, Server, TestDir, auth_config, create_key, openssl, spawn_server, web_setup,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- item 6

/// The first `serve` while `tls export-ca` runs in a tight loop beside it
/// (two loops, so one is always mid-run): every export names one CA, that
/// CA verifies the certificate the server presents, and a restart loads the
/// same pair. Before the fix both processes created a CA; the server ran
/// with one no longer on disk, and the next start refused "private key …
/// does not match the certificate".
#[test]
fn first_serve_and_concurrent_export_ca_agree_on_one_ca() {
    for round in 0..4 {
        let d = TestDir::new();
        std::fs::create_dir_all(d.data()).expect("mkdir");
        let stop = AtomicBool::new(false);
        let (server, exports) = std::thread::scope(|scope| {
            let loops: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        let mut seen = Vec::new();
                        while !stop.load(Ordering::SeqCst) {
                            let out = d.run(&["tls", "export-ca"], b"");
                            if out.status.success() {
                                seen.push(out.stdout);
                            }
                        }
                        seen
                    })
                })
                .collect();
            // Let the loops get going, so the server's first start races them.
            std::thread::sleep(Duration::from_millis(30 * (round + 1)));
            let server = spawn_server(&d, &ServeOpts::new());
            stop.store(true, Ordering::SeqCst);
            let exports: Vec<String> = loops
                .into_iter()
                .flat_map(|h| h.join().expect("export loop"))
                .collect();
            (server, exports)
        });
        assert!(!exports.is_empty(), "round {round}: no export succeeded");
        let first = &exports[0];
        assert!(
            exports.iter().all(|e| e == first),
            "round {round}: the exports name {} different CAs",
            exports
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
        );
        let exported = d.path().join("exported-ca.pem");
        std::fs::write(&exported, first).expect("write");
        let verifies = |s: &Server| {
            let leaf = d.path().join("served.pem");
            std::fs::write(&leaf, s.served_cert()).expect("write");
            let out = openssl(
                &[
                    "verify",
                    "-CAfile",
                    exported.to_str().expect("utf8"),
                    leaf.to_str().expect("utf8"),
                ],
                b"",
            );
            assert!(
                out.status.success() && out.stdout.contains(": OK"),
                "round {round}: the exported CA does not verify the served certificate: {} {}",
                out.stdout,
                out.stderr
            );
        };
        verifies(&server);
        let mut server = server;
        server.stop();
        // The pair on disk is whole: a restart loads it and serves a
        // certificate from the same CA.
        let again = spawn_server(&d, &ServeOpts::new());
        verifies(&again);
        let after = d.ok(&["tls", "export-ca"], b"").stdout;
        assert_eq!(&after, first, "round {round}: the CA changed on restart");
    }
}

// ---------------------------------------------------------------- item 8

const VAULT_PASS: &str = "correct horse battery staple";

fn passphrase_server() -> (TestDir, Server) {
    let d = TestDir::new();
    std::fs::create_dir_all(d.data()).expect("mkdir");
    // Rate limits per address off, so what holds is the gate itself.
    let config = format!(
        "[vault]\nmaster_key = \"passphrase\"\n\n{}",
        auth_config("")
    );
    std::fs::write(d.data().join("latchkey.toml"), &config).expect("config");
    d.ok(
        &["vault", "init", "--passphrase-stdin"],
        format!("{VAULT_PASS}\n").as_bytes(),
    );
    let s = spawn_server(&d, &ServeOpts::new().config(&config));
    (d, s)
}

fn unseal(s: &Server, pass: &str, auth: Option<&str>) -> latchkey_e2e::Resp {
    let body = serde_json::json!({ "passphrase": pass }).to_string();
    let bearer = auth.map(|t| format!("Authorization: Bearer {t}"));
    let mut headers = vec!["Content-Type: application/json"];
    if let Some(b) = &bearer {
        headers.push(b);
    }
    s.request("POST", "/api/vault/unseal", &headers, Some(body.as_bytes()))
}

/// Runs `n` requests at once, sampling the server's RSS meanwhile; the
/// statuses and the highest RSS seen (KiB).
fn parallel_unseals(s: &Server, n: usize, pass: &str) -> (Vec<(u16, String)>, u64) {
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let results = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(vm_rss_kib(s.pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let hs: Vec<_> = (0..n)
            .map(|_| scope.spawn(|| unseal(s, pass, None)))
            .collect();
        let out: Vec<(u16, String)> = hs
            .into_iter()
            .map(|h| {
                let r = h.join().expect("request");
                (r.status, r.error_code())
            })
            .collect();
        done.store(true, Ordering::SeqCst);
        sampler.join().expect("sampler");
        out
    });
    (results, peak.load(Ordering::SeqCst))
}

/// 16 parallel unseal guesses took the process from 38 MB to 4.1 GB: one
/// 256 MiB scrypt each. Now one derivation runs at a time (the others are
/// refused at once, not queued), repeated failures start a global backoff,
/// every derivation's outcome is audited, and an unsealed vault answers
/// without any work.
#[test]
fn passphrase_unseal_is_one_at_a_time_audited_and_bounded() {
    let (_d, s) = passphrase_server();
    let base = vm_rss_kib(s.pid);

    let (results, peak) = parallel_unseals(&s, 16, "wrong passphrase, try 1");
    let wrong = results.iter().filter(|(st, _)| *st == 403).count();
    let busy = results
        .iter()
        .filter(|(st, code)| *st == 409 && code == "unseal_in_progress")
        .count();
    let backoff = results.iter().filter(|(st, _)| *st == 429).count();
    assert_eq!(wrong + busy + backoff, 16, "{results:?}");
    assert!(wrong >= 1, "no attempt ran: {results:?}");
    assert!(
        busy >= 1,
        "concurrent attempts were not refused: {results:?}"
    );
    // One 256 MiB derivation at most, plus the server itself.
    assert!(
        peak < base + 600 * 1024 && peak < 1024 * 1024,
        "RSS grew from {base} KiB to {peak} KiB"
    );

    // More wrong guesses, made by the administrator (who skips the wait
    // but whose failures count), push the global backoff to seconds.
    let admin = s.admin_token();
    for _ in 0..6 {
        let r = unseal(&s, "wrong passphrase, admin", Some(&admin));
        assert_eq!(r.status, 403, "{}", r.body);
    }
    // Now a stranger is refused without a derivation, with Retry-After …
    let limited = unseal(&s, "wrong passphrase, again", None);
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.error_code(), "rate_limited");
    assert!(
        limited.body.contains("wrong vault passphrases"),
        "{}",
        limited.body
    );
    let wait: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{limited:?}"));
    assert!(wait >= 2, "retry after {wait} s");
    // … even with the right passphrase: no oracle meanwhile.
    let r = unseal(&s, VAULT_PASS, None);
    assert_eq!(r.status, 429, "{}", r.body);
    // The host's administrator is not locked out by strangers' guesses.
    let r = unseal(&s, VAULT_PASS, Some(&admin));
    assert_eq!(r.status, 200, "{}", r.body);
    let wrong = wrong + 6;

    // Unsealed: refused without any derivation, however many at once.
    let before = Instant::now();
    let (results, peak) = parallel_unseals(&s, 16, "wrong passphrase, unsealed");
    assert!(
        results
            .iter()
            .all(|(st, code)| *st == 409 && code == "already_unsealed"),
        "{results:?}"
    );
    assert!(before.elapsed() < Duration::from_secs(20));
    assert!(peak < 1024 * 1024, "RSS {peak} KiB");

    // Every derivation's outcome is in the audit log, with the address.
    let audit = s.api("GET", "/api/audit?action=vault.unseal&limit=500", None);
    assert_eq!(audit.status, 200, "{}", audit.body);
    let events = audit.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let failures = events
        .iter()
        .filter(|e| e["outcome"] == "failure" && e["detail"] == "wrong_passphrase")
        .count();
    assert!(
        failures >= wrong,
        "{failures} audited, {wrong} wrong: {}",
        audit.body
    );
    assert!(
        events
            .iter()
            .any(|e| e["outcome"] == "success" && e["actor"] == "host"),
        "{}",
        audit.body
    );
    assert!(audit.body.contains("127.0.0.1"), "{}", audit.body);
}

// ---------------------------------------------------------------- item 11

/// An upstream that answers with whatever model the request named.
fn echo_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || echo_one(conn));
        }
    });
    port
}

fn echo_one(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut r = BufReader::new(&conn);
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    let model = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["model"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let out = serde_json::json!({
        "id": "x", "object": "chat.completion", "model": model, "choices": [],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1}
    })
    .to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
        out.len()
    );
}

/// An upstream echoing the request's model made one usage row per request
/// (302 rows from 300). Rows are now bounded per provider and day: the
/// first 64 plausible names count as themselves, the rest and anything
/// that is not a model name under `(other)`; every request still counts.
#[test]
fn usage_rows_stay_bounded_when_the_upstream_echoes_models() {
    let port = echo_upstream();
    let d = TestDir::new();
    d.ok(&["vault", "put", "openai-main"], b"sk-echo-0123456789");
    let config = format!(
        "{}\n[providers.openai]\nupstream = \"http://127.0.0.1:{port}\"\nsecret = \"openai-main\"\n",
        auth_config("")
    );
    let s = spawn_server(&d, &ServeOpts::new().config(&config));
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let (_, key) = create_key(b, "agent", &["proxy:openai"]);
    let auth = format!("Authorization: Bearer {key}");

    const N: usize = 160;
    let hostile = [
        "model with spaces",
        "evil\nmodel\u{1b}[31m",
        "(other)",
        "(other)x",
        "\u{202e}reversed",
    ];
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (s, auth) = (&s, &auth);
            scope.spawn(move || {
                for i in (t..N).step_by(4) {
                    let model = match i % 20 {
                        0 => "gpt-4o-mini".to_owned(),
                        1..=5 => hostile[i % hostile.len()].to_owned(),
                        _ => format!("echo-{i}-{}", "x".repeat(i % 7)),
                    };
                    let long;
                    let model = if i == 7 {
                        long = "m".repeat(10_000);
                        long.as_str()
                    } else {
                        model.as_str()
                    };
                    let body = serde_json::json!({"model": model, "messages": []}).to_string();
                    let r = post(s, "/proxy/openai/v1/chat/completions", auth, &body);
                    assert_eq!(r.status, 200, "{model:?}: {}", r.body);
                }
            });
        }
    });
    // Every request counted once the last response ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let r = b.get("/api/usage");
        assert_eq!(r.status, 200, "{}", r.body);
        let rows = r.json()["usage"].as_array().cloned().unwrap_or_default();
        let total: u64 = rows.iter().filter_map(|r| r["requests"].as_u64()).sum();
        if total as usize >= N {
            assert_eq!(total as usize, N, "{}", r.body);
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "usage never reached {N}: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let days: std::collections::HashSet<_> = rows.iter().map(|r| r["day"].clone()).collect();
    // At most 64 names and `(other)` per day (a run across midnight has two).
    assert!(
        rows.len() <= 65 * days.len(),
        "{} rows from {N} requests",
        rows.len()
    );
    for r in &rows {
        let m = r["model"].as_str().unwrap_or_default();
        assert!(
            m == "(other)"
                || (m.len() <= 128
                    && m.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-._:/@+".contains(&c))),
            "a model name was stored as is: {m:?}"
        );
    }
    let other = rows
        .iter()
        .find(|r| r["model"] == "(other)")
        .expect("(other) row");
    assert!(other["requests"].as_u64().unwrap_or(0) >= (N - 64) as u64 / 2);
    // A real, repeated model keeps its own row.
    let gpt: u64 = rows
        .iter()
        .filter(|r| r["model"] == "gpt-4o-mini")
        .filter_map(|r| r["requests"].as_u64())
        .sum();
    assert_eq!(gpt, (N / 20) as u64);
}

// ---------------------------------------------------------------- item 15

/// Paths that the origin would treat as data but a Tomcat/Jetty-style
/// (`;` parameters), double-decoding or lenient-UTF-8 upstream would read
/// as a climb out of the base path: refused with 400 `invalid_path`, and
/// the upstream never sees them; provider paths (`:` included) still pass.
#[test]
fn traversal_variants_never_reach_the_upstream() {
    let mock = Mock::start();
    let d = super::proxy::seeded();
    // The same mock is also an `/agent/…` backend: the same check guards it.
    let agent = format!(
        "\n[agents.notes]\nupstream = \"http://127.0.0.1:{}/base\"\n",
        mock.port
    );
    let s = spawn_server(
        &d,
        &ServeOpts::new().config(&super::proxy::config(mock.port, &agent)),
    );
    let owner = web_setup(&s, "owner");
    let (_, key) = create_key(&owner.browser, "agent", &["proxy:openai", "agent:notes"]);
    let auth = format!("Authorization: Bearer {key}");
    let attacks = [
        "v1/..;/admin",
        "v1/..;/..;/admin",
        "..;/admin",
        "v1/..%3B/admin",
        "v1/..%3b/..%3b/admin",
        "v1/x;jsessionid=1/../admin",
        "v1/%252e%252e/admin",
        "v1/%252e%252e%252fadmin",
        "v1/%25%32%65%25%32%65/admin",
        "v1/%C0%AE%C0%AE/admin",
        "v1/%c0%ae%c0%ae%c0%afadmin",
        "v1/%E0%80%AE%E0%80%AE/admin",
        "v1/..%00/admin",
        "v1/..%0d%0a/admin",
        "v1/..%20/admin",
        "v1/.../admin",
        "v1/%2e%2e/admin",
        "v1/%2f..%2fadmin",
        "v1/..%5cadmin",
    ];
    for a in attacks {
        for prefix in ["/proxy/openai", "/agent/notes"] {
            let r = s.request_with(
                &["--path-as-is"],
                "POST",
                &format!("{prefix}/{a}"),
                &[&auth, "Content-Type: application/json"],
                Some(b"{}"),
            );
            assert_eq!(r.status, 400, "{prefix}/{a}: {} {}", r.status, r.body);
            assert_eq!(r.error_code(), "invalid_path", "{prefix}/{a}: {}", r.body);
        }
    }
    let seen = mock.seen();
    assert!(
        seen.is_empty(),
        "the upstream received: {:?}",
        seen.iter().map(|s| &s.target).collect::<Vec<_>>()
    );
    // Legitimate provider paths still go through.
    for ok in [
        "v1/chat/completions",
        "v1beta/models/gemini-pro:generateContent",
        "v1/files/file%20abc/content",
        "v1/models/llama3%3A8b",
    ] {
        let r = post(&s, &format!("/proxy/openai/{ok}"), &auth, "{}");
        assert!(r.status != 400, "{ok}: {} {}", r.status, r.body);
    }
    let r = s.request("GET", "/agent/notes/v1/items/a:b", &[&auth], None);
    assert!(r.status != 400, "agent: {} {}", r.status, r.body);
    let targets: Vec<String> = mock.seen().into_iter().map(|s| s.target).collect();
    assert!(
        targets.iter().any(|t| t == "/base/v1/items/a:b"),
        "agent path not in {targets:?}"
    );
    for want in [
        "/v1/chat/completions",
        "/v1beta/models/gemini-pro:generateContent",
        "/v1/files/file%20abc/content",
        "/v1/models/llama3%3A8b",
    ] {
        assert!(
            targets.iter().any(|t| t == want),
            "{want} not in {targets:?}"
        );
    }
}

// ---------------------------------------------------------------- item 17

fn put_secret(d: &TestDir, name: &str, value: &str) {
    d.ok(&["vault", "put", name], value.as_bytes());
}

/// An age identity file and its public recipient.
/// `backup` with its signature envelope removed: the bare age file inside,
/// written to `out` (what an attacker who strips the signature sends).
pub(crate) fn strip_signature(
    backup: &std::path::Path,
    out: &std::path::Path,
) -> std::path::PathBuf {
    let bytes = std::fs::read(backup).expect("read");
    let age_start = bytes
        .windows(b"age-encryption.org/".len())
        .position(|w| w == b"age-encryption.org/")
        .expect("age header");
    std::fs::write(out, &bytes[age_start..]).expect("write");
    out.to_path_buf()
}

pub(crate) fn keygen(d: &TestDir, name: &str) -> (std::path::PathBuf, String) {
    let key = d.ok(&["keygen"], b"").stdout;
    let path = d.path().join(name);
    std::fs::write(&path, &key).expect("write");
    let recipient = key
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_string();
    (path, recipient)
}

/// `latchkey backup` to `recipient`; the backup key fingerprint it printed.
pub(crate) fn backup_to(d: &TestDir, out: &std::path::Path, recipient: &str) -> String {
    let o = d.ok(
        &[
            "backup",
            "--out",
            out.to_str().expect("utf8"),
            "--recipient",
            recipient,
        ],
        b"",
    );
    o.stderr
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in: {}", o.stderr))
        .to_string()
}

fn users(d: &TestDir) -> String {
    d.ok(&["user", "list", "--json"], b"").stdout
}

/// The age recipient of a backup is public, so anyone could encrypt a
/// database with an admin of their choosing to it and have it restored.
/// Backups are now signed by the installation's key: a forged one (signed
/// by another installation, or not at all) is refused, a tampered one is
/// refused, the genuine one restores — into its own installation as is,
/// into a new directory with `--trust <fingerprint>`.
#[test]
fn forged_and_tampered_backups_are_refused_genuine_ones_restore() {
    // The victim's installation and its backup identity.
    let victim = TestDir::new();
    put_secret(&victim, "openai", "sk-genuine-1");
    victim.ok(
        &["setup", "--username", "owner", "--password-stdin"],
        format!("{}\n", latchkey_e2e::PASSWORD).as_bytes(),
    );
    let (identity, recipient) = keygen(&victim, "backup-identity.txt");
    let id = identity.to_str().expect("utf8");
    let genuine = victim.path().join("genuine.backup");
    let fp = backup_to(&victim, &genuine, &recipient);
    // The same fingerprint every time: it names the installation.
    assert_eq!(
        backup_to(&victim, &victim.path().join("second.backup"), &recipient),
        fp
    );

    // The attacker: their own installation with an admin of their choosing,
    // backed up to the victim's public recipient.
    let attacker = TestDir::new();
    put_secret(&attacker, "openai", "sk-attacker");
    attacker.ok(
        &["setup", "--username", "mallory", "--password-stdin"],
        format!("{}\n", latchkey_e2e::PASSWORD).as_bytes(),
    );
    let forged = attacker.path().join("forged.backup");
    let forged_fp = backup_to(&attacker, &forged, &recipient);
    assert_ne!(forged_fp, fp);
    let f = forged.to_str().expect("utf8");

    // Into the victim's own installation (--force): refused, nothing changed.
    let before = victim.store_state();
    let err = victim.fails(&["restore", f, "--identity", id, "--force"], b"");
    assert!(err.contains("not by the expected one"), "{err}");
    assert!(err.contains(&forged_fp), "{err}");
    assert_eq!(
        victim.store_state(),
        before,
        "refused restore changed the database"
    );
    // Naming the victim's key does not help the forgery.
    let err = victim.fails(
        &["restore", f, "--identity", id, "--force", "--trust", &fp],
        b"",
    );
    assert!(err.contains("not by the expected one"), "{err}");
    // Into a new directory: refused without --trust, and with the right one.
    let fresh = TestDir::new();
    let err = fresh.fails(&["restore", f, "--identity", id], b"");
    assert!(err.contains("--trust"), "{err}");
    let err = fresh.fails(&["restore", f, "--identity", id, "--trust", &fp], b"");
    assert!(err.contains("not by the expected one"), "{err}");
    assert!(
        !fresh.data().exists(),
        "a refused restore created the data directory"
    );

    // The forgery with its signature stripped: an unsigned file.
    let stripped = strip_signature(&forged, &attacker.path().join("stripped.backup"));
    let s = stripped.to_str().expect("utf8");
    let err = victim.fails(&["restore", s, "--identity", id, "--force"], b"");
    assert!(err.contains("not signed"), "{err}");
    let err = fresh.fails(&["restore", s, "--identity", id, "--trust", &fp], b"");
    assert!(err.contains("not signed"), "{err}");
    assert_eq!(victim.store_state(), before);

    // The genuine backup, tampered anywhere after its header: refused.
    let good = std::fs::read(&genuine).expect("read");
    for pos in [30, 60, 100, good.len() / 2, good.len() - 3] {
        let mut bad = good.clone();
        bad[pos] ^= 0x10;
        let p = victim.path().join(format!("tampered-{pos}"));
        std::fs::write(&p, &bad).expect("write");
        let out = victim.run(
            &[
                "restore",
                p.to_str().expect("utf8"),
                "--identity",
                id,
                "--force",
            ],
            b"",
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "tampered at {pos} accepted: {}",
            out.stderr
        );
        assert_eq!(victim.store_state(), before);
    }
    let g = genuine.to_str().expect("utf8");

    // Genuine into its own installation: accepted without more ado.
    victim.ok(&["vault", "put", "added-later"], b"x");
    let out = victim.ok(&["restore", g, "--identity", id, "--force"], b"");
    assert!(
        out.stderr.contains("this installation's backup key"),
        "{}",
        out.stderr
    );
    assert_eq!(
        victim
            .ok(&["vault", "get", "openai", "--reveal"], b"")
            .stdout,
        "sk-genuine-1"
    );
    // Genuine into a new directory: only with --trust and its fingerprint.
    let err = fresh.fails(&["restore", g, "--identity", id], b"");
    assert!(err.contains("--trust"), "{err}");
    let out = fresh.ok(&["restore", g, "--identity", id, "--trust", &fp], b"");
    assert!(out.stderr.contains(&fp), "{}", out.stderr);
    assert_eq!(
        fresh
            .ok(&["vault", "get", "openai", "--reveal"], b"")
            .stdout,
        "sk-genuine-1"
    );
    let list = users(&fresh);
    assert!(
        list.contains("owner") && !list.contains("mallory"),
        "{list}"
    );
    // The restored installation signs with the same key: it is the same one.
    let next = fresh.path().join("after.backup");
    assert_eq!(backup_to(&fresh, &next, &recipient), fp);

    // An unsigned backup is accepted only with the loud override.
    let plain = victim.path().join("genuine-unsigned.backup");
    let gbytes = std::fs::read(&genuine).expect("read");
    let start = gbytes
        .windows(b"age-encryption.org/".len())
        .position(|w| w == b"age-encryption.org/")
        .expect("age header");
    std::fs::write(&plain, &gbytes[start..]).expect("write");
    let other = TestDir::new();
    let p = plain.to_str().expect("utf8");
    let err = other.fails(&["restore", p, "--identity", id], b"");
    assert!(err.contains("--allow-unsigned"), "{err}");
    let out = other.ok(&["restore", p, "--identity", id, "--allow-unsigned"], b"");
    assert!(out.stderr.contains("WARNING"), "{}", out.stderr);
}
