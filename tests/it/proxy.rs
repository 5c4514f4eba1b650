//! The agent proxy through the real binary, against a mock upstream on
//! loopback that speaks OpenAI's and Anthropic's wire formats (plain JSON
//! and Server-Sent Events) and records every request it sees. The mock and
//! helpers are shared with `proxy_limits.rs`.

use latchkey_e2e::{
    ServeOpts, Server, TestDir, auth_config, create_key, curl_cmd, run_cmd_for, web_setup,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const OPENAI_SECRET: &str = "sk-REAL-openai-0123456789";
pub(crate) const ANTHROPIC_SECRET: &str = "sk-ant-REAL-9876543210";

/// One request as the mock upstream saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) target: String,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: String,
}

#[derive(Default)]
pub(crate) struct MockState {
    seen: Mutex<Vec<Seen>>,
    /// Set when writing to a proxy connection failed: the proxy hung up.
    cancelled: AtomicBool,
}

/// The mock upstream: one thread per connection, `Connection: close`.
pub(crate) struct Mock {
    pub(crate) port: u16,
    state: Arc<MockState>,
}

impl Mock {
    pub(crate) fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(MockState::default());
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = Arc::clone(&st);
                std::thread::spawn(move || serve_one(conn, &st));
            }
        });
        Mock { port, state }
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }
}

fn read_request(conn: &TcpStream) -> Option<Seen> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = Vec::new();
    if let Some(n) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Some(Seen {
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn serve_one(mut conn: TcpStream, st: &MockState) {
    let Some(req) = read_request(&conn) else {
        return;
    };
    st.seen.lock().expect("seen").push(req.clone());
    // However the client spaced its JSON (the SDKs' encoders differ).
    let stream = serde_json::from_str::<serde_json::Value>(&req.body)
        .is_ok_and(|v| v["stream"] == serde_json::Value::Bool(true));
    let path = req.target.split('?').next().unwrap_or_default().to_string();
    let json = |conn: &mut TcpStream, body: &str| {
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nSet-Cookie: upstream=1\r\n\r\n{body}",
            body.len()
        );
    };
    let sse_head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    match (path.as_str(), stream) {
        ("/v1/chat/completions", false) => json(
            &mut conn,
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
        ),
        ("/v1/chat/completions", true) => {
            let chunk = |content: &str| {
                format!(
                    "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-stream\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
                )
            };
            let _ = conn.write_all(sse_head.as_bytes());
            let _ = conn.write_all(chunk("first").as_bytes());
            let _ = conn.flush();
            std::thread::sleep(Duration::from_millis(1500));
            let _ = conn.write_all(chunk("second").as_bytes());
            std::thread::sleep(Duration::from_millis(1500));
            let _ = conn.write_all(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-stream\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\ndata: [DONE]\n\n");
        }
        ("/v1/messages", false) => json(
            &mut conn,
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-test","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":21,"output_tokens":5}}"#,
        ),
        ("/v1/messages", true) => {
            // Anthropic's full event sequence, as its SDK's stream helper
            // expects it.
            let _ = conn.write_all(sse_head.as_bytes());
            let _ = conn.write_all(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-stream\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n");
            let _ = conn.write_all(b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
            let _ = conn.flush();
            std::thread::sleep(Duration::from_millis(300));
            let _ = conn.write_all(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n");
            let _ = conn.write_all(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n");
            let _ = conn.write_all(b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
            let _ = conn.write_all(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":11}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        }
        ("/v1/silent", _) => {
            // One event, a long silence at an event boundary, then one
            // more event split across a silence (a keep-alive must not
            // land inside it), then the end.
            let _ = conn.write_all(sse_head.as_bytes());
            let _ = conn.write_all(b"data: {\"n\":1}\n\n");
            let _ = conn.flush();
            std::thread::sleep(Duration::from_millis(2500));
            let _ = conn.write_all(b"data: {\"n\":");
            let _ = conn.flush();
            std::thread::sleep(Duration::from_millis(2500));
            let _ = conn.write_all(b"2}\n\ndata: [DONE]\n\n");
        }
        ("/v1/forever", _) => {
            // Writes until the proxy hangs up (at most 20 s).
            let _ = conn.write_all(sse_head.as_bytes());
            for _ in 0..100 {
                if conn.write_all(b"data: {\"tick\":1}\n\n").is_err() || conn.flush().is_err() {
                    st.cancelled.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        ("/v1/hang", _) => {
            std::thread::sleep(Duration::from_secs(3));
            json(&mut conn, "{}");
        }
        _ => {
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
}

pub(crate) fn config(mock: u16, extra: &str) -> String {
    format!(
        "{}\n[providers.openai]\nupstream = \"http://127.0.0.1:{mock}\"\nsecret = \"openai-main\"\n\n\
         [providers.anthropic]\nupstream = \"http://127.0.0.1:{mock}\"\nsecret = \"anthropic-main\"\n\n\
         [providers.down]\nupstream = \"http://127.0.0.1:1\"\nsecret = \"openai-main\"\nauth_header = \"authorization\"\nauth_format = \"Bearer {{secret}}\"\n\n\
         [providers.slow]\nupstream = \"http://127.0.0.1:{mock}\"\nsecret = \"openai-main\"\nauth_header = \"x-token\"\nfirst_byte_timeout = \"1s\"\n\n\
         [providers.idle]\nupstream = \"http://127.0.0.1:{mock}\"\nsecret = \"openai-main\"\nauth_header = \"x-token\"\nidle_timeout = \"1s\"\nsse_keepalive_secs = 0\n{extra}",
        auth_config("")
    )
}

pub(crate) fn seeded() -> TestDir {
    let d = TestDir::new();
    d.ok(&["vault", "put", "openai-main"], OPENAI_SECRET.as_bytes());
    d.ok(
        &["vault", "put", "anthropic-main"],
        ANTHROPIC_SECRET.as_bytes(),
    );
    d
}

/// A POST through the proxy. Error answers (401/403/502/…) can come before
/// the body is read; curl 7.88 over HTTP/2 then reports error 92, and
/// `early_request` retries that one case over HTTP/1.1.
pub(crate) fn post(s: &Server, path: &str, auth: &str, body: &str) -> latchkey_e2e::Resp {
    s.early_request(
        &[],
        "POST",
        path,
        &[auth, "Content-Type: application/json"],
        Some(body.as_bytes()),
    )
}

pub(crate) fn no_secrets(what: &str, text: &str) {
    for secret in [OPENAI_SECRET, ANTHROPIC_SECRET] {
        assert!(
            !text.contains(secret),
            "{what} leaked a provider credential: {text}"
        );
    }
}

/// (input, output) tokens of a usage row.
pub(crate) fn tokens(row: &serde_json::Value) -> (u64, u64) {
    (
        row["input_tokens"].as_u64().unwrap_or(u64::MAX),
        row["output_tokens"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Waits (at most 5 s) until `GET /api/usage` has a row for `model`; its
/// usage summed over days (a test may run across midnight
/// UTC, which splits its requests into two daily rows).
fn usage_row(b: &latchkey_e2e::Browser<'_>, model: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = b.get("/api/usage");
        assert_eq!(r.status, 200, "usage: {}", r.body);
        let rows: Vec<serde_json::Value> = r.json()["usage"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|row| row["model"] == model)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Some(first) = rows.first() {
            let sum = |field: &str| {
                rows.iter()
                    .filter_map(|row| row[field].as_u64())
                    .sum::<u64>()
            };
            let mut total = first.clone();
            total["input_tokens"] = sum("input_tokens").into();
            total["output_tokens"] = sum("output_tokens").into();
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "no usage for {model}: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn proxy_swaps_credentials_streams_and_counts_usage() {
    let mock = Mock::start();
    let d = seeded();
    let s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config(mock.port, "")));
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let (key_id, key) = create_key(
        b,
        "agent",
        &[
            "proxy:openai",
            "proxy:anthropic",
            "proxy:down",
            "proxy:slow",
            "proxy:idle",
        ],
    );
    let bearer = format!("Authorization: Bearer {key}");

    // OpenAI, plain: the upstream sees the real key, never ours; spoofed
    // headers do not get through.
    // HTTP/1.1: h2 has no `Connection` header to test.
    let r = s.request_with(
        &["--http1.1"],
        "POST",
        "/proxy/openai/v1/chat/completions?trace=1",
        &[
            &bearer,
            "Content-Type: application/json",
            "Cookie: __Host-latchkey_session=abc",
            "X-Forwarded-For: 203.0.113.9",
            "X-Forwarded-Host: evil.example",
            "X-Latchkey-User: admin",
            "Connection: X-Hop",
            "X-Hop: 1",
            "OpenAI-Organization: org-1",
        ],
        Some(br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Hello!");
    assert!(
        r.header("set-cookie").is_none(),
        "upstream cookies must not reach the client"
    );
    no_secrets("a proxied response", &format!("{:?}{}", r.headers, r.body));
    let seen = mock.seen();
    let req = seen.last().expect("upstream saw the request");
    assert_eq!(req.target, "/v1/chat/completions?trace=1");
    assert_eq!(
        req.headers["authorization"],
        format!("Bearer {OPENAI_SECRET}")
    );
    assert_eq!(req.headers["host"], format!("127.0.0.1:{}", mock.port));
    assert_eq!(req.headers["openai-organization"], "org-1");
    for h in [
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-latchkey-user",
        "x-hop",
        "x-api-key",
    ] {
        assert!(
            !req.headers.contains_key(h),
            "{h} must not reach the upstream"
        );
    }
    assert!(
        !format!("{:?}", req.headers).contains(&key),
        "the upstream saw the lk_ key"
    );

    // Anthropic, plain, with the key in x-api-key as its SDK sends it.
    let r = s.request(
        "POST",
        "/proxy/anthropic/v1/messages",
        &[&format!("x-api-key: {key}"), "anthropic-version: 2023-06-01", "Content-Type: application/json"],
        Some(br#"{"model":"claude-test","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    no_secrets("a proxied response", &format!("{:?}{}", r.headers, r.body));
    let seen = mock.seen();
    let req = seen.last().expect("upstream saw the request");
    assert_eq!(req.headers["x-api-key"], ANTHROPIC_SECRET);
    assert_eq!(req.headers["anthropic-version"], "2023-06-01");
    assert!(!req.headers.contains_key("authorization"));

    // Anthropic, streamed.
    let r = post(
        &s,
        "/proxy/anthropic/v1/messages",
        &bearer,
        r#"{"model":"claude-stream","max_tokens":10,"stream":true,"messages":[]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("message_stop"), "{}", r.body);

    // OpenAI, streamed: the first chunk arrives long before the end.
    let mut c = curl_cmd();
    c.args(["-sS", "-N", "--max-time", "30", "--cacert"])
        .arg(s.ca_pem())
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", s.port))
        .args(["-H", &bearer, "-H", "Content-Type: application/json", "--data-binary"])
        .arg(r#"{"model":"gpt-4o-stream","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#)
        .arg(format!("{}/proxy/openai/v1/chat/completions", s.url()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let started = Instant::now();
    let mut child = c.spawn().expect("curl");
    let mut out = child.stdout.take().expect("stdout");
    let mut first = None;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = out.read(&mut buf).expect("read stream");
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| started.elapsed());
        all.extend_from_slice(&buf[..n]);
    }
    let total = started.elapsed();
    let _ = child.wait();
    let first = first.expect("some streamed bytes");
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("\"first\"") && text.contains("[DONE]"),
        "{text}"
    );
    assert!(
        first + Duration::from_millis(2000) < total,
        "first chunk at {first:?}, stream ended at {total:?}: the proxy buffered"
    );
    no_secrets("a streamed response", &text);

    // Usage for all four, by key, provider, model.
    let row = usage_row(b, "gpt-4o-mini");
    assert_eq!(tokens(&row), (12, 3), "{row}");
    assert_eq!(row["key_id"], key_id.as_str());
    assert_eq!(row["provider"], "openai");
    let row = usage_row(b, "gpt-4o-stream");
    assert_eq!(tokens(&row), (7, 2), "{row}");
    let row = usage_row(b, "claude-test");
    assert_eq!(tokens(&row), (21, 5), "{row}");
    let row = usage_row(b, "claude-stream");
    assert_eq!(tokens(&row), (30, 11), "{row}");

    // A changed vault entry is used at once (the cache is dropped on change).
    let r = b.post(
        "/api/vault",
        &serde_json::json!({"name": "openai-main", "kind": "generic", "secret": "sk-ROTATED-1", "replace": true}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post(
        &s,
        "/proxy/openai/v1/chat/completions",
        &bearer,
        r#"{"model":"gpt-4o-mini"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.seen();
    let req = seen.last().expect("seen");
    assert_eq!(req.headers["authorization"], "Bearer sk-ROTATED-1");

    // Upstream down → 502; too slow → 504; neither echoes a credential.
    let r = post(&s, "/proxy/down/v1/chat/completions", &bearer, "{}");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.error_code(), "upstream_unreachable");
    no_secrets("a 502", &r.body);
    let r = post(&s, "/proxy/slow/v1/hang", &bearer, "{}");
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.error_code(), "upstream_timeout");
    no_secrets("a 504", &r.body);

    // An upstream that goes quiet mid-answer for longer than the
    // provider's idle timeout (1 s): what came is passed on, then the
    // stream is cut, rather than waiting 2.5 s for the next event.
    let started = Instant::now();
    let r = s.request_with(
        &["--http1.1", "--max-time", "10"],
        "GET",
        "/proxy/idle/v1/silent",
        &[&bearer],
        None,
    );
    let took = started.elapsed();
    assert!(
        r.body.contains("{\"n\":1}"),
        "the first event arrives: {}",
        r.body
    );
    assert!(!r.body.contains("[DONE]"), "the stream was cut: {}", r.body);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2400),
        "cut after the idle timeout, not at the upstream's next write: {took:?}"
    );

    // A client that goes away cancels the upstream request.
    // (curl gives up after 1 s; its exit status is of no interest.)
    let _ = s.request_with(
        &["--max-time", "1"],
        "GET",
        "/proxy/openai/v1/forever",
        &[&bearer],
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while !mock.state.cancelled.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream kept streaming after the client left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    no_secrets("the server log", &format!("{}{}", s.stdout(), s.stderr()));
}

#[test]
fn proxy_refuses_what_it_must() {
    let mock = Mock::start();
    let d = seeded();
    let s = latchkey_e2e::spawn_server(
        &d,
        &ServeOpts::new().config(&config(mock.port, "\n[proxy]\nkey_rpm = 3\n")),
    );
    let owner = web_setup(&s, "owner");
    let (_, openai_only) = create_key(&owner.browser, "openai-only", &["proxy:openai"]);
    let (_, anthropic_only) = create_key(&owner.browser, "anthropic-only", &["proxy:anthropic"]);
    let bearer = format!("Authorization: Bearer {openai_only}");

    // No key, a wrong key, a key without the scope.
    let r = s.early_request(
        &[],
        "POST",
        "/proxy/openai/v1/chat/completions",
        &[],
        Some(b"{}"),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = post(
        &s,
        "/proxy/openai/v1/chat/completions",
        "Authorization: Bearer lk_nope",
        "{}",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = post(
        &s,
        "/proxy/openai/v1/chat/completions",
        &format!("Authorization: Bearer {anthropic_only}"),
        "{}",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error_code(), "forbidden");

    // Unknown provider: 404 for a key that could use it, 403 (no probing)
    // for one that could not.
    let (_, any) = create_key(&owner.browser, "any", &["proxy:*"]);
    let r = post(
        &s,
        "/proxy/nosuch/v1/chat/completions",
        &format!("Authorization: Bearer {any}"),
        "{}",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.error_code(), "unknown_provider");
    let r = post(&s, "/proxy/nosuch/v1/chat/completions", &bearer, "{}");
    assert_eq!(r.status, 403, "{}", r.body);

    // SSRF through the path: refused before anything is sent.
    let before = mock.seen().len();
    for path in [
        "/proxy/openai/../api/keys",
        "/proxy/openai/v1/../../x",
        "/proxy/openai/%2e%2e/x",
        "/proxy/openai/v1//evil.example/x",
        "/proxy/openai/http://evil.example/x",
        "/proxy/openai/@evil.example/x",
        "/proxy/openai/v1%2f..%2fx",
        "/proxy/openai/v1\\..\\x",
    ] {
        let r = s.request_with(&["--path-as-is"], "GET", path, &[&bearer], None);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert_eq!(r.error_code(), "invalid_path", "{path}");
    }
    // Host and forwarding spoofs change nothing about where it goes.
    let r = s.request(
        "GET",
        "/proxy/openai/v1/models",
        &[
            &bearer,
            "Host: evil.example",
            "X-Forwarded-Host: evil.example",
        ],
        None,
    );
    assert_eq!(
        r.status, 404,
        "the mock answers 404 to /v1/models: {}",
        r.body
    );
    let seen = mock.seen();
    assert_eq!(
        seen.len(),
        before + 1,
        "only the last request reached the upstream"
    );
    let req = seen.last().expect("seen");
    assert_eq!(req.target, "/v1/models");
    assert_eq!(req.headers["host"], format!("127.0.0.1:{}", mock.port));
    assert!(!req.headers.contains_key("x-forwarded-host"));

    // key_rpm = 3 (refused paths never count): the fourth request of a
    // minute is refused; allow for the minute turning over once.
    let mut ok = 0;
    let limited = loop {
        let r = post(&s, "/proxy/openai/v1/chat/completions", &bearer, "{}");
        if r.status == 429 {
            break r;
        }
        ok += 1;
        assert!(ok <= 6, "no 429 after {ok} requests: {}", r.body);
    };
    assert!(ok >= 2, "limited too early, after {ok}");
    assert_eq!(limited.error_code(), "key_rate_limited");
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
}

/// The official `openai` and `anthropic` Python SDKs, unchanged but for
/// their base URL and key, complete a plain and a streamed request each
/// through the proxy (tests/sdk/check_sdks.py), and the usage is recorded.
#[test]
fn proxy_works_with_official_python_sdks() {
    let mock = Mock::start();
    let d = seeded();
    let mut s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config(mock.port, "")));
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let (key_id, key) = create_key(b, "sdk-agent", &["proxy:*"]);

    let c = latchkey_e2e::sdk_script(
        "check_sdks.py",
        "openai, anthropic",
        &s.url(),
        &key,
        s.ca_pem(),
    );
    let out = run_cmd_for(c, b"", Duration::from_secs(60));
    let text = format!("{}\n{}", out.stdout, out.stderr);
    println!("{text}");
    assert!(out.status.success(), "check_sdks.py failed:\n{text}");
    for check in [
        "ok   openai plain",
        "ok   openai stream",
        "ok   anthropic plain",
        "ok   anthropic stream",
    ] {
        assert!(text.contains(check), "missing `{check}`:\n{text}");
    }
    no_secrets("what the SDKs saw", &text);

    // The upstream saw the real credentials, never the lk_ key.
    let seen = mock.seen();
    assert!(seen.len() >= 5, "{seen:?}");
    for req in &seen {
        assert!(
            !format!("{:?}", req.headers).contains(&key),
            "the upstream saw the lk_ key"
        );
        if req.target.starts_with("/v1/chat/completions") {
            assert_eq!(
                req.headers["authorization"],
                format!("Bearer {OPENAI_SECRET}")
            );
        } else {
            assert_eq!(req.target, "/v1/messages");
            assert_eq!(req.headers["x-api-key"], ANTHROPIC_SECRET);
            assert!(req.headers.contains_key("anthropic-version"));
        }
    }

    // Usage for both providers, plain and streamed.
    for (model, provider) in [
        ("gpt-4o-mini", "openai"),
        ("gpt-4o-stream", "openai"),
        ("claude-test", "anthropic"),
        ("claude-stream", "anthropic"),
    ] {
        let row = usage_row(b, model);
        assert_eq!(row["provider"], provider, "{row}");
        assert_eq!(row["key_id"], key_id.as_str(), "{row}");
    }
    let row = usage_row(b, "gpt-4o-mini");
    assert_eq!(tokens(&row), (12, 3), "{row}");
    let row = usage_row(b, "gpt-4o-stream");
    assert_eq!(tokens(&row), (7, 2), "{row}");
    let row = usage_row(b, "claude-test");
    assert_eq!(tokens(&row), (21, 5), "{row}");
    // Two streamed Anthropic requests (the stream helper and the raw events).
    let row = usage_row(b, "claude-stream");
    assert_eq!(tokens(&row), (60, 22), "{row}");

    no_secrets("the server log", &format!("{}{}", s.stdout(), s.stderr()));
    s.stop();
}
