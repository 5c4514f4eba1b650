//! What the proxy and the connections broker must agree on across three
//! `latchkey serve` replicas sharing one PostgreSQL database
//! (`latchkey_e2e::cluster`), each shown against the real processes:
//!
//! - a per-key rate limit holds across the replicas within the bound of
//!   `docs/SCALE.md` (`rpm + (N − 1) × a`), where counting per replica
//!   alone would let N × rpm through; and the usage of the admitted
//!   requests is stored exactly once;
//! - 50 concurrent token requests for one expired connection, spread over
//!   the replicas, make exactly one refresh call to the OAuth server
//!   (oidc-provider, which rotates refresh tokens: a second refresh with
//!   the old one would be refused and revoke the grant).
//!
//! The browser steps (web setup, keys, the vault entry, the OAuth connect
//! flow) run on a fourth replica of the same deployment serving HTTPS, as
//! the test helpers speak it; it is stopped before the measured part, which
//! goes to each replica's own port.

use super::proxy::Mock;
use latchkey_e2e::caddy::Client;
use latchkey_e2e::cluster::Cluster;
use latchkey_e2e::oidc::{
    Idp, OAuthBrowser, PROVIDER, SECRET_ENTRY, callback_urls, connection_config, free_port,
};
use latchkey_e2e::{
    Resp, ServeOpts, Server, TestDir, auth_config, create_key, spawn_server, web_setup,
};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A replica of `c`'s deployment (same database, same master key) with
/// TLS, on `port`, configured with `extra` too.
fn admin_replica(c: &Cluster, d: &TestDir, extra: &str, port: u16) -> Server {
    let config = format!(
        "[vault]\nkey_file = \"{}\"\n\n[store]\nbackend = \"postgres\"\nurl = \"{}\"\n\n{}\n{extra}",
        c.work.path().join("master.key").display(),
        c.db.url(),
        auth_config("")
    );
    let opts = ServeOpts {
        listen: format!("127.0.0.1:{port}"),
        ..ServeOpts::new().config(&config)
    };
    spawn_server(d, &opts)
}

fn bearer(key: &str) -> String {
    format!("Authorization: Bearer {key}")
}

/// Waits until every replica knows `key` (another replica made it).
fn known_everywhere(c: &Cluster, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..c.len() {
        loop {
            let r = c.client(i).get("/api/auth/me", &[&bearer(key)]);
            if r.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} never learnt of the key: {} {}\n{}",
                r.status,
                r.body,
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Seconds into the current UTC minute.
fn into_minute() -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    now % 60.0
}

/// The most of `times` inside any window of `len`.
fn most_within(times: &[Instant], len: Duration) -> usize {
    times
        .iter()
        .map(|t| times.iter().filter(|u| **u >= *t && **u - *t < len).count())
        .max()
        .unwrap_or(0)
}

const RPM: usize = 20;

#[test]
fn a_per_key_rate_limit_holds_across_replicas_within_the_bound() {
    let mock = Mock::start();
    let extra = format!(
        "[proxy]\nusage_flush_secs = 1\n\n[providers.local]\nupstream = \"http://127.0.0.1:{}\"\n",
        mock.port
    );
    let c = Cluster::start_with(3, "", &extra);
    let d = TestDir::new();
    let admin = admin_replica(&c, &d, &extra, free_port());
    let owner = web_setup(&admin, "owner");
    let r = owner.browser.post(
        "/api/keys",
        &json!({"name": "agent", "scopes": ["proxy:local"], "limits": {"requests_per_minute": RPM}}),
    );
    assert_eq!(r.status, 201, "create key: {}", r.body);
    let v = r.json();
    let (id, key) = (
        v["id"].as_str().expect("id").to_string(),
        v["key"].as_str().expect("key").to_string(),
    );
    let session = owner.browser.cookie().expect("session cookie");
    drop(admin);
    known_everywhere(&c, &key);
    // The limit row is committed right after the key's: one more reload.
    std::thread::sleep(Duration::from_secs(1));
    // All of it inside one UTC minute (the window every replica counts).
    let s = into_minute();
    if s > 35.0 {
        std::thread::sleep(Duration::from_secs_f64(60.5 - s));
    }

    // 60 requests, round-robin over the replicas' own ports, one every
    // ~60 ms: three times the limit.
    let auth = bearer(&key);
    let body = br#"{"model":"gpt-4o-mini","messages":[]}"#;
    let clients: Vec<Client> = (0..c.len()).map(|i| c.client(i)).collect();
    let mut admitted: Vec<Vec<Instant>> = vec![Vec::new(); c.len()];
    let mut refused = 0;
    let started = Instant::now();
    for n in 0..3 * RPM {
        let i = n % c.len();
        let r = clients[i].request(
            "POST",
            "/proxy/local/v1/chat/completions",
            &[&auth, "Content-Type: application/json"],
            Some(body),
        );
        match r.status {
            200 => admitted[i].push(Instant::now()),
            429 => {
                assert!(r.header("retry-after").is_some(), "429 without Retry-After");
                refused += 1;
            }
            other => panic!("replica {i}: {other} {}\n{}", r.body, c.logs()),
        }
        let next = started + Duration::from_millis(60 * (n as u64 + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let total: usize = admitted.iter().map(Vec::len).sum();
    // `a`: the most one replica admitted within two sync intervals (with
    // slack for the sync's own time).
    let a = admitted
        .iter()
        .map(|t| most_within(t, Duration::from_millis(600)))
        .max()
        .unwrap_or(0);
    let bound = RPM + (c.len() - 1) * a;
    println!(
        "rate limit across {} replicas: {total} admitted, {refused} refused (limit {RPM}/min, \
         a = {a}, bound {bound}; per replica alone: {})",
        c.len(),
        c.len() * RPM
    );
    assert!(total >= RPM, "under-admitted: {total} of {RPM}");
    assert!(
        total <= bound,
        "{total} admitted, bound {bound}: {:?}\n{}",
        admitted.iter().map(Vec::len).collect::<Vec<_>>(),
        c.logs()
    );
    assert!(
        bound < c.len() * RPM,
        "the pacing makes the bound meaningful"
    );
    assert_eq!(
        mock.seen().len(),
        total,
        "the upstream saw the admitted ones"
    );

    // Their usage is stored once: the replicas' flushes add up exactly.
    let cookie = format!("Cookie: __Host-latchkey_session={session}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r: Resp = clients[0].get(&format!("/api/usage?key={id}"), &[&cookie]);
        assert_eq!(r.status, 200, "usage: {}", r.body);
        let rows = r.json()["usage"].as_array().cloned().unwrap_or_default();
        let n: u64 = rows.iter().filter_map(|r| r["requests"].as_u64()).sum();
        if n == total as u64 {
            break;
        }
        assert!(n < total as u64, "counted twice: {n} of {total}: {rows:?}");
        assert!(
            Instant::now() < deadline,
            "usage stuck at {n} of {total}: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Access-token lifetime at the provider (seconds) and Latchkey's refresh
/// margin: a token is due 4 s before it expires. 20 s, as in
/// `connections.rs`: a token just handed out is left alone by the
/// background refresher for ~6 s, so the checks after the burst see only
/// the burst's refresh.
const TTL: u64 = 20;
const MARGIN: u64 = 4;

fn token_of(r: &Resp) -> String {
    assert_eq!(r.status, 200, "broker: {}", r.body);
    r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

#[test]
fn fifty_token_requests_over_three_replicas_refresh_once_at_the_provider() {
    let d = TestDir::new();
    let port = free_port();
    let idp = Idp::start(&callback_urls(port, PROVIDER), TTL, d.path());
    let extra = connection_config(&idp, &format!("refresh_margin_secs = {MARGIN}"));
    let c = Cluster::start_with(3, "", &extra);
    let admin = admin_replica(&c, &d, &extra, port);
    let owner = web_setup(&admin, "owner");
    let b = &owner.browser;
    let r = b.post(
        "/api/vault",
        &json!({"name": SECRET_ENTRY, "kind": "generic", "secret": idp.client_secret}),
    );
    assert_eq!(r.status, 201, "client secret: {}", r.body);
    let mut ob = OAuthBrowser::new(b, "alice");
    let r = ob.connect(&admin, &idp, PROVIDER);
    assert_eq!(r.status, 303, "callback: {} {:?}", r.body, r.headers);
    let connected = Instant::now();
    let (_, key) = create_key(b, "agent", &[&format!("connections:{PROVIDER}")]);
    drop(admin);
    known_everywhere(&c, &key);
    assert_eq!(idp.refreshes(), 0, "refreshed before any use");

    // Past the refresh point, nothing served yet (so no replica refreshes
    // it in the background first): 50 callers at once, spread over the
    // replicas' own ports.
    let due = Duration::from_millis((TTL - MARGIN) * 1000 + 1200);
    std::thread::sleep(due.saturating_sub(connected.elapsed()));
    let go = std::sync::Barrier::new(50);
    let auth = bearer(&key);
    let path = format!("/api/connections/{PROVIDER}/token");
    let clients: Vec<Client> = (0..c.len()).map(|i| c.client(i)).collect();
    let started = Instant::now();
    let answers: Vec<Resp> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..50)
            .map(|n| {
                let (go, client, auth, path) = (&go, &clients[n % 3], &auth, &path);
                sc.spawn(move || {
                    go.wait();
                    client.get(path, &[auth])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("broker thread"))
            .collect()
    });
    let took = started.elapsed();
    let mut distinct: Vec<String> = answers.iter().map(token_of).collect();
    distinct.sort_unstable();
    distinct.dedup();
    println!(
        "50 token requests over {} replicas at expiry: {} refresh(es) at the provider, {} \
         distinct token(s), {took:?}",
        c.len(),
        idp.refreshes(),
        distinct.len()
    );
    assert_eq!(
        idp.refreshes(),
        1,
        "exactly one refresh across the replicas: {}\n{}",
        idp.stats(),
        c.logs()
    );
    assert_eq!(idp.count("refresh_errors"), 0, "{}", idp.stats());
    assert_eq!(distinct.len(), 1, "every caller got the new token");
    let (_, access) = idp.issued();
    assert_eq!(access.last(), Some(&distinct[0]), "the refreshed token");
    assert_eq!(idp.introspect(&distinct[0])["active"], true);
    // And it is the one every replica serves now, from memory.
    for client in &clients {
        assert_eq!(token_of(&client.get(&path, &[&auth])), distinct[0]);
    }
}
