//! The agent proxy's limits and bookkeeping through the real binary:
//! per-key requests per minute and tokens per day, usage persisted across a
//! restart, `/api/usage` filters and isolation, per-provider metrics, SSE
//! keep-alive comments, a client key in `?key=`, and an extra CA for a
//! self-hosted HTTPS upstream. The mock upstream is `proxy.rs`'s.

use super::proxy::{Mock, config, no_secrets, post, seeded, tokens};
use latchkey_e2e::{Browser, ServeOpts, Server, create_key, curl_cmd, invited, web_setup};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PLAIN: &str = r#"{"model":"gpt-4o-mini","messages":[]}"#;

fn bearer(key: &str) -> String {
    format!("Authorization: Bearer {key}")
}

/// Usage rows of `GET path` (a browser session or the host's admin token).
fn usage_rows(r: &latchkey_e2e::Resp) -> Vec<Value> {
    assert_eq!(r.status, 200, "usage: {}", r.body);
    r.json()["usage"].as_array().cloned().unwrap_or_default()
}

/// Sums (requests, input, output) over rows with `model`.
fn sum_model(rows: &[Value], model: &str) -> (u64, u64, u64) {
    rows.iter()
        .filter(|r| r["model"] == model)
        .fold((0, 0, 0), |(n, i, o), r| {
            let (ri, ro) = tokens(r);
            (n + r["requests"].as_u64().unwrap_or(0), i + ri, o + ro)
        })
}

/// Waits (at most 5 s) until `b`'s usage has `want` requests for `model`:
/// a request is counted when its response body has ended.
fn wait_usage(b: &Browser<'_>, model: &str, want: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = usage_rows(&b.get("/api/usage"));
        if sum_model(&rows, model).0 >= want {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "usage never reached {want} for {model}: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most 5 s) until key `id` has `want` requests counted.
fn wait_key(b: &Browser<'_>, id: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = usage_rows(&b.get(&format!("/api/usage?key={id}")));
        let n: u64 = rows.iter().filter_map(|r| r["requests"].as_u64()).sum();
        if n >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "key {id}: {n} of {want} requests counted: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn key_with_limits(
    b: &Browser<'_>,
    name: &str,
    scopes: &[&str],
    limits: Value,
) -> (String, String) {
    let r = b.post(
        "/api/keys",
        &json!({"name": name, "scopes": scopes, "limits": limits}),
    );
    assert_eq!(r.status, 201, "create key with limits {limits}: {}", r.body);
    let v = r.json();
    for (field, want) in limits.as_object().expect("limits object") {
        assert_eq!(&v["limits"][field], want, "{v}");
    }
    (
        v["id"].as_str().expect("id").to_string(),
        v["key"].as_str().expect("key").to_string(),
    )
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in metrics:\n{text}"))
}

#[test]
fn proxy_key_limits_budgets_and_usage_survive_a_restart() {
    let mock = Mock::start();
    let d = seeded();
    // Only the shutdown flush writes usage: what the restarted server shows
    // came through it.
    let opts = ServeOpts::new().config(&config(mock.port, "\n[proxy]\nusage_flush_secs = 3600\n"));
    let mut s = latchkey_e2e::spawn_server(&d, &opts);
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let keys_before = b.get("/api/keys").json().as_array().map_or(0, Vec::len);

    // Invalid limits: 400 naming the field, and no key is created.
    for (limits, field) in [
        (json!({"requests_per_minute": 0}), "requests_per_minute"),
        (
            json!({"requests_per_minute": 2_000_000}),
            "requests_per_minute",
        ),
        (json!({"tokens_per_day": 0}), "tokens_per_day"),
        (json!({"tokens_per_day": -5}), "tokens_per_day"),
        (json!({"tokens_per_day": "lots"}), "tokens_per_day"),
        (json!({"rpm": 5}), "rpm"),
    ] {
        let r = b.post(
            "/api/keys",
            &json!({"name": "bad", "scopes": ["proxy:openai"], "limits": limits}),
        );
        assert_eq!(r.status, 400, "{limits}: {}", r.body);
        assert!(
            r.body.contains(field),
            "{limits}: the error must name {field}: {}",
            r.body
        );
    }
    let keys_after = b.get("/api/keys").json().as_array().map_or(0, Vec::len);
    assert_eq!(keys_before, keys_after, "a refused key was created anyway");

    // requests_per_minute from the key's own limit (no proxy.key_rpm set).
    let (rpm_id, rpm_key) = key_with_limits(
        b,
        "rpm",
        &["proxy:openai"],
        json!({"requests_per_minute": 2}),
    );
    let listed = b.get("/api/keys").json();
    let row = listed
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["id"] == rpm_id.as_str()))
        .cloned()
        .expect("listed");
    assert_eq!(row["limits"]["requests_per_minute"], 2, "{row}");
    let mut ok = 0;
    let limited = loop {
        let r = post(
            &s,
            "/proxy/openai/v1/chat/completions",
            &bearer(&rpm_key),
            PLAIN,
        );
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        ok += 1;
        assert!(ok <= 4, "no 429 after {ok} requests");
    };
    assert!(ok >= 1, "limited before any request");
    assert_eq!(limited.error_code(), "key_rate_limited");
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!((1..=60).contains(&retry), "{retry}");

    // tokens_per_day, plain: 15 tokens each; 20 allows two, not three.
    let (plain_id, plain_key) = key_with_limits(
        b,
        "budget",
        &["proxy:openai"],
        json!({"tokens_per_day": 20}),
    );
    for n in 1..=2 {
        let r = post(
            &s,
            "/proxy/openai/v1/chat/completions",
            &bearer(&plain_key),
            PLAIN,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        wait_key(b, &plain_id, n);
    }
    let r = post(
        &s,
        "/proxy/openai/v1/chat/completions",
        &bearer(&plain_key),
        PLAIN,
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error_code(), "token_budget_exhausted");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!((1..=86_400).contains(&retry), "{retry}");

    // tokens_per_day, streamed: 41 tokens counted when the stream ends.
    let (stream_id, stream_key) = key_with_limits(
        b,
        "stream-budget",
        &["proxy:anthropic"],
        json!({"tokens_per_day": 40}),
    );
    let stream_body = r#"{"model":"claude-stream","max_tokens":10,"stream":true,"messages":[]}"#;
    let r = post(
        &s,
        "/proxy/anthropic/v1/messages",
        &bearer(&stream_key),
        stream_body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("message_stop"), "{}", r.body);
    // The count lands when the body ends, a moment after curl has it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = post(
            &s,
            "/proxy/anthropic/v1/messages",
            &bearer(&stream_key),
            stream_body,
        );
        if r.status == 429 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error_code(), "token_budget_exhausted");

    // Changing limits: a user cannot touch the owner's key; the owner can,
    // and the change applies at once.
    let user = invited(&s, b, "someone", "user");
    let r = user.call(
        "PUT",
        &format!("/api/keys/{plain_id}/limits"),
        Some(r#"{"tokens_per_day": 1000000}"#),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = b.call(
        "PUT",
        &format!("/api/keys/{plain_id}/limits"),
        Some(r#"{"tokens_per_day": 0}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("tokens_per_day"), "{}", r.body);
    let r = b.call(
        "PUT",
        &format!("/api/keys/{plain_id}/limits"),
        Some(r#"{"tokens_per_day": 1000}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &s,
        "/proxy/openai/v1/chat/completions",
        &bearer(&plain_key),
        PLAIN,
    );
    assert_eq!(r.status, 200, "a raised budget applies at once: {}", r.body);
    wait_key(b, &plain_id, 3);

    // Usage: a user sees only their own keys' totals; filters narrow.
    let (user_key_id, user_key) = create_key(&user, "mine", &["proxy:openai"]);
    let r = post(
        &s,
        "/proxy/openai/v1/chat/completions",
        &bearer(&user_key),
        PLAIN,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rows = wait_usage(&user, "gpt-4o-mini", 1);
    assert!(!rows.is_empty());
    for row in &rows {
        assert_eq!(
            row["key_id"],
            user_key_id.as_str(),
            "a user saw another's usage: {row}"
        );
    }
    let r = user.get(&format!("/api/usage?key={plain_id}"));
    assert!(usage_rows(&r).is_empty(), "{}", r.body);
    let all = wait_usage(b, "claude-stream", 1);
    assert!(
        all.iter().any(|r| r["key_id"] == user_key_id.as_str()),
        "{all:?}"
    );
    // 3 budget requests, 1 after the raise; the rpm key's and the user's.
    let (n, i, o) = sum_model(
        &usage_rows(&b.get(&format!(
            "/api/usage?key={plain_id}&provider=openai&model=gpt-4o-mini"
        ))),
        "gpt-4o-mini",
    );
    assert_eq!((n, i, o), (3, 36, 9));
    assert!(usage_rows(&b.get("/api/usage?provider=nosuch")).is_empty());
    let r = b.get("/api/usage?from=yesterday");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("from"), "{}", r.body);
    let r = b.get("/api/usage?from=2020-01-01&to=2026-01-01");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("366"), "{}", r.body);
    let stream_before = sum_model(
        &usage_rows(&b.get(&format!("/api/usage?key={stream_id}"))),
        "claude-stream",
    );
    assert_eq!(stream_before, (1, 30, 11));
    let everything = usage_rows(&b.get("/api/usage"));

    // Metrics: per provider, by status class, with tokens and refusals.
    let m = s.get("/metrics");
    assert_eq!(m.status, 200, "{}", m.body);
    assert!(
        metric(
            &m.body,
            "latchkey_proxy_requests_total{provider=\"openai\",class=\"2xx\"}"
        ) >= 5,
        "{}",
        m.body
    );
    assert!(
        metric(
            &m.body,
            "latchkey_proxy_refusals_total{provider=\"openai\",reason=\"rpm\"}"
        ) >= 1
    );
    assert!(
        metric(
            &m.body,
            "latchkey_proxy_refusals_total{provider=\"openai\",reason=\"token_budget\"}"
        ) >= 1
    );
    assert!(
        metric(
            &m.body,
            "latchkey_proxy_refusals_total{provider=\"anthropic\",reason=\"token_budget\"}"
        ) >= 1
    );
    assert!(
        metric(
            &m.body,
            "latchkey_proxy_tokens_total{provider=\"anthropic\",direction=\"input\"}"
        ) >= 30
    );
    assert!(
        metric(
            &m.body,
            "latchkey_proxy_upstream_latency_seconds_count{provider=\"openai\"}"
        ) >= 5
    );
    no_secrets("the metrics", &m.body);
    assert!(!m.body.contains("lk_"), "metrics name a key");

    // A graceful stop writes the totals; the next start reads them back,
    // and the exhausted budget is still exhausted.
    s.stop();
    drop(s);
    let s = latchkey_e2e::spawn_server(&d, &opts);
    let after = usage_rows(&s.api("GET", "/api/usage", None));
    assert!(!everything.is_empty());
    assert_eq!(after, everything, "usage changed across a restart");
    let r = post(
        &s,
        "/proxy/anthropic/v1/messages",
        &bearer(&stream_key),
        stream_body,
    );
    assert_eq!(
        r.status, 429,
        "the budget was forgotten on restart: {}",
        r.body
    );
    assert_eq!(r.error_code(), "token_budget_exhausted");
    // Limits are stored with the key, too.
    let listed = s.api("GET", "/api/keys?all=true", None);
    assert!(
        listed.body.contains("\"tokens_per_day\":40"),
        "{}",
        listed.body
    );
    let _ = rpm_id;
    no_secrets("the server log", &format!("{}{}", s.stdout(), s.stderr()));
}

#[test]
fn proxy_sse_keepalive_and_key_in_query() {
    let mock = Mock::start();
    let d = seeded();
    let extra = format!(
        "\n[providers.gq]\nupstream = \"http://127.0.0.1:{}\"\nsecret = \"openai-main\"\nauth_query = \"key\"\n\n[proxy]\nsse_keepalive_secs = 1\n",
        mock.port
    );
    let s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config(mock.port, &extra)));
    let owner = web_setup(&s, "owner");
    let (_, key) = create_key(&owner.browser, "agent", &["proxy:openai", "proxy:gq"]);

    // A silent upstream: keep-alive comments arrive, only between events.
    let mut c = curl_cmd();
    c.args(["-sS", "-N", "--max-time", "30", "--cacert"])
        .arg(s.ca_pem())
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", s.port))
        .args(["-H", &bearer(&key)])
        .arg(format!("{}/proxy/openai/v1/silent", s.url()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("curl");
    let mut out = child.stdout.take().expect("stdout");
    let mut all = Vec::new();
    out.read_to_end(&mut all).expect("read stream");
    let _ = child.wait();
    let text = String::from_utf8_lossy(&all).into_owned();
    assert!(text.contains(": keep-alive\n\n"), "no keep-alive: {text:?}");
    assert!(
        text.contains("data: {\"n\":2}\n\n"),
        "a keep-alive split an event: {text:?}"
    );
    let mut data = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        for line in event.lines() {
            if line.starts_with(':') {
                continue;
            }
            let payload = line
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad line {line:?} in {text:?}"));
            if payload != "[DONE]" {
                let v: Value = serde_json::from_str(payload).expect("event JSON");
                data.push(v["n"].as_u64().expect("n"));
            }
        }
    }
    assert_eq!(data, [1, 2], "{text:?}");

    // `?key=lk_…` authenticates and never reaches the upstream.
    let r = s.request(
        "GET",
        &format!("/proxy/openai/v1/models?key={key}&x=1"),
        &[],
        None,
    );
    assert_eq!(r.status, 404, "the mock answers 404 here: {}", r.body);
    let seen = mock.seen();
    let req = seen.last().expect("seen");
    assert_eq!(req.target, "/v1/models?x=1");
    assert_eq!(
        req.headers["authorization"],
        format!("Bearer {}", super::proxy::OPENAI_SECRET)
    );
    // A query-injection provider: the client's key is replaced by the real one.
    let r = s.request("GET", &format!("/proxy/gq/v1/models?key={key}"), &[], None);
    assert_eq!(r.status, 404, "{}", r.body);
    let seen = mock.seen();
    let req = seen.last().expect("seen");
    assert_eq!(
        req.target,
        format!("/v1/models?key={}", super::proxy::OPENAI_SECRET)
    );
    for req in &seen {
        assert!(
            !format!("{req:?}").contains(&key),
            "the upstream saw the lk_ key: {req:?}"
        );
    }
    // A wrong key in the query is refused like any other.
    let r = s.request("GET", "/proxy/openai/v1/models?key=lk_nope", &[], None);
    assert_eq!(r.status, 401, "{}", r.body);
    let log = format!("{}{}", s.stdout(), s.stderr());
    assert!(!log.contains(&key), "the server log holds the key");
    no_secrets("the server log", &log);
}

/// An HTTPS upstream whose certificate a test CA signed: answers every
/// request with an OpenAI chat completion. Returns (port, CA PEM).
fn tls_upstream() -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "proxy test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("server certificate");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("certificate");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let body = r#"{"id":"c","object":"chat.completion","model":"self-hosted","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#;
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (port, ca_cert.pem())
}

#[test]
fn proxy_trusts_a_providers_extra_ca() {
    let (port, ca_pem) = tls_upstream();
    let d = seeded();
    let ca_path = d.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, ca_pem).expect("write CA");
    let section = |name: &str, ca: Option<&std::path::Path>| {
        format!(
            "\n[providers.{name}]\nupstream = \"https://127.0.0.1:{port}\"\nsecret = \"openai-main\"\nauth_header = \"authorization\"\nauth_format = \"Bearer {{secret}}\"\n{}",
            ca.map(|p| format!("ca_file = \"{}\"\n", p.display()))
                .unwrap_or_default()
        )
    };
    let extra = format!(
        "{}{}",
        section("selfhosted", Some(&ca_path)),
        section("untrusted", None)
    );

    // A ca_file that is not a certificate is refused, naming the key.
    let junk = d.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").expect("write");
    d.write_config(&config(1, &section("broken", Some(&junk))));
    let err = d.fails(&["config", "check"], b"");
    assert!(err.contains("providers.broken.ca_file"), "{err}");
    d.write_config(&config(
        1,
        &section("missing", Some(&d.path().join("nope.pem"))),
    ));
    let err = d.fails(&["config", "check"], b"");
    assert!(err.contains("providers.missing.ca_file"), "{err}");

    let s: Server = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config(1, &extra)));
    let owner = web_setup(&s, "owner");
    let (_, key) = create_key(&owner.browser, "agent", &["proxy:*"]);
    let r = post(
        &s,
        "/proxy/selfhosted/v1/chat/completions",
        &bearer(&key),
        PLAIN,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], "self-hosted");

    // Without the CA: 502 saying TLS failed, naming nothing secret.
    let r = post(
        &s,
        "/proxy/untrusted/v1/chat/completions",
        &bearer(&key),
        PLAIN,
    );
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.error_code(), "upstream_tls", "{}", s.stderr());
    assert!(r.body.contains("TLS"), "{}", r.body);
    no_secrets("a TLS failure", &r.body);
    assert!(
        !r.body.contains(&key) && !r.body.contains("BEGIN"),
        "{}",
        r.body
    );
    no_secrets("the server log", &format!("{}{}", s.stdout(), s.stderr()));
}

/// An upstream that fails while an HTTP/2 client is still uploading: the
/// client gets the 502 answer, not a reset stream.
#[test]
fn proxy_upstream_failure_answers_an_uploading_h2_client() {
    let mock = Mock::start();
    let d = seeded();
    let s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config(mock.port, "")));
    let owner = web_setup(&s, "owner");
    let (_, key) = create_key(&owner.browser, "agent", &["proxy:down"]);
    // Larger than HTTP/2's initial 64 KiB window: curl is still sending
    // when the proxy learns the upstream is down.
    let body = vec![b'x'; 4 * 1024 * 1024];
    for _ in 0..3 {
        let r = s.request_with(
            &["--http2"],
            "POST",
            "/proxy/down/v1/chat/completions",
            &[&bearer(&key), "Content-Type: application/json"],
            Some(&body),
        );
        assert_eq!(r.status, 502, "{}", r.body);
        assert_eq!(r.error_code(), "upstream_unreachable");
    }
}
