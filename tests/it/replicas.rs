//! Three `latchkey serve` replicas on one PostgreSQL database behind a
//! real nginx (round-robin) on loopback — the deployment of
//! `docs/SCALE.md` — and the rules that must hold across them, each shown
//! against the real processes (`latchkey_e2e::cluster`):
//!
//! - a session made on one replica works on every other one, and ends on
//!   all of them at once; the MFA ticket of a password step made on one
//!   replica is taken by the second step on another, once;
//! - a refresh token replayed on another replica revokes its family there
//!   and everywhere;
//! - five failed sign-ins spread over the replicas lock the account on
//!   all of them (a per-process count would have seen two at most);
//! - a TOTP code used on one replica is refused on the others;
//! - a key made on one replica reaches the others, and a key revoked on
//!   one is refused by every replica's own port within the stated bound
//!   (`docs/SCALE.md`: notification plus one cache reload); the measured
//!   times are printed;
//! - one replica killed with SIGKILL in the middle of many key creations
//!   through nginx loses no acknowledged write, and the others keep
//!   serving.
//! - two browsers through first-run setup at the same moment, one on each
//!   replica: exactly one owner, no second account left behind, and the
//!   other browser told why;
//! - requests that present no credential (`/api/auth/me`, the signed-out
//!   page's `GET /api/setup`) write nothing to the shared store, while
//!   the credential requests share one per-address limit across the
//!   replicas (the status page stays limited by each replica's own).
//!
//! Requests pinned to one replica go to its own port (`Cluster::client`);
//! requests through nginx land on the replicas in turn.

use latchkey_e2e::caddy::Client;
use latchkey_e2e::cluster::{Cluster, session_cookie};
use latchkey_e2e::postgres::PgServer;
use latchkey_e2e::{Authenticator, PASSWORD, Resp, setup_token, totp_code_at};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const OWNER: &str = "owner";
/// What a page of Latchkey's own origin sends with a POST (the CSRF rule
/// accepts it; these tests are about replicas, not origins).
const SAME: &str = "Sec-Fetch-Site: same-origin";
/// How long a change on one replica may take to reach every other one's
/// caches (`docs/SCALE.md`, "What replicas share").
const CACHE_BOUND: Duration = Duration::from_secs(2);

fn cookie(token: &str) -> String {
    format!("Cookie: __Host-latchkey_session={token}")
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

fn err(r: &Resp) -> (u16, String) {
    let code = serde_json::from_str::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default();
    (r.status, code)
}

/// Web setup on the last replica started (its banner's token is the
/// deployment's current one); the owner's authenticator.
fn setup_owner(c: &Cluster) -> Authenticator {
    let last = c.len() - 1;
    let token = setup_token(c.replica(last));
    let cl = c.client(last);
    let r = cl.post(
        "/api/setup/begin",
        &json!({"token": token, "username": OWNER, "password": PASSWORD}),
        &[SAME],
    );
    assert_eq!(r.status, 200, "setup/begin: {}", r.body);
    let uri = r.json()["otpauth_uri"]
        .as_str()
        .expect("otpauth_uri")
        .to_string();
    let totp = Authenticator::new(&uri);
    let r = cl.post(
        "/api/setup/confirm",
        &json!({"token": token, "username": OWNER, "code": totp.code()}),
        &[SAME],
    );
    assert_eq!(r.status, 200, "setup/confirm: {}", r.body);
    totp
}

/// The password step on `first`, the TOTP step on `second`: the ticket
/// and the session cookie.
fn sign_in(first: &Client, second: &Client, totp: &Authenticator) -> (String, String) {
    let r = first.post(
        "/api/auth/login",
        &json!({"username": OWNER, "password": PASSWORD}),
        &[SAME],
    );
    assert_eq!(r.status, 200, "login: {}", r.body);
    let ticket = r.json()["ticket"].as_str().expect("ticket").to_string();
    let r = second.post(
        "/api/auth/mfa",
        &json!({"ticket": ticket, "code": totp.code()}),
        &[SAME],
    );
    assert_eq!(r.status, 200, "mfa: {}", r.body);
    let session = session_cookie(&r).unwrap_or_else(|| panic!("no session cookie: {r:?}"));
    (ticket, session)
}

fn me(c: &Client, auth_header: &str) -> u16 {
    c.get("/api/auth/me", &[auth_header]).status
}

/// Polls `f` until it is true; how long that took, or `None` after `limit`.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_session_made_on_one_replica_works_on_every_other() {
    let c = Cluster::start(3, "");
    let totp = setup_owner(&c);
    // The password step on replica 0, the code on replica 1.
    let (ticket, s1) = sign_in(&c.client(0), &c.client(1), &totp);
    for i in 0..3 {
        assert_eq!(me(&c.client(i), &cookie(&s1)), 200, "replica {i}");
    }
    // The ticket was taken: on no replica does it give a second session
    // (refused for the ticket, before any code is looked at).
    for i in 0..3 {
        let r = c.client(i).post(
            "/api/auth/mfa",
            &json!({"ticket": ticket, "code": "123456"}),
            &[SAME],
        );
        assert_eq!(err(&r), (401, "invalid_ticket".into()), "replica {i}");
    }
    // Both steps through nginx: they land on different replicas.
    let (_, s2) = sign_in(&c.balanced(), &c.balanced(), &totp);
    for _ in 0..6 {
        assert_eq!(me(&c.balanced(), &cookie(&s2)), 200);
    }
    // Signing out on replica 2 ends the session on every replica at once.
    let r = c
        .client(2)
        .request("POST", "/api/auth/logout", &[&cookie(&s1), SAME], None);
    assert!(r.status == 200 || r.status == 204, "logout: {}", r.body);
    for i in 0..3 {
        assert_eq!(me(&c.client(i), &cookie(&s1)), 401, "replica {i}");
        assert_eq!(me(&c.client(i), &cookie(&s2)), 200, "replica {i}");
    }
}

#[test]
fn a_refresh_token_replayed_on_another_replica_revokes_the_family() {
    let c = Cluster::start(3, "");
    let totp = setup_owner(&c);
    let (_, s) = sign_in(&c.client(0), &c.client(0), &totp);
    let pair = |r: Resp| {
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        (
            v["access_token"].as_str().expect("a").to_string(),
            v["refresh_token"].as_str().expect("r").to_string(),
        )
    };
    let refresh = |i: usize, rt: &str| {
        c.client(i)
            .post("/api/auth/refresh", &json!({"refresh_token": rt}), &[])
    };
    let (a1, r1) = pair(
        c.client(0)
            .request("POST", "/api/auth/token", &[&cookie(&s), SAME], None),
    );
    let (a2, r2) = pair(refresh(1, &r1));
    for i in 0..3 {
        assert_eq!(me(&c.client(i), &bearer(&a2)), 200, "replica {i}");
    }
    // A thief replays the first refresh token on the third replica.
    assert_eq!(err(&refresh(2, &r1)), (401, "token_reused".into()));
    for i in 0..3 {
        for a in [&a1, &a2] {
            assert_eq!(me(&c.client(i), &bearer(a)), 401, "replica {i}");
        }
    }
    // The rotated token died with its family, wherever it is presented.
    for i in 0..3 {
        assert_eq!(refresh(i, &r2).status, 401, "replica {i}");
    }
    // The session the family came from is another sign-in: it stays.
    assert_eq!(me(&c.client(1), &cookie(&s)), 200);
}

#[test]
fn five_failed_sign_ins_spread_over_the_replicas_lock_the_account_on_all() {
    let c = Cluster::start(3, "lockout_threshold = 5\n");
    let _totp = setup_owner(&c);
    let attempt = |cl: &Client, password: &str| {
        cl.post(
            "/api/auth/login",
            &json!({"username": OWNER, "password": password}),
            &[SAME],
        )
    };
    // Five failures from one address, never more than two on one replica:
    // each is refused as a wrong password, none is locked out yet.
    for n in 0..5 {
        let r = attempt(&c.client(n % 3), "not the password");
        assert_eq!(err(&r), (401, "invalid_credentials".into()), "attempt {n}");
    }
    // Now the right password is refused on every replica, and through
    // nginx, without being checked.
    for i in 0..3 {
        let r = attempt(&c.client(i), PASSWORD);
        assert_eq!(err(&r), (429, "account_locked".into()), "replica {i}");
        assert!(r.header("retry-after").is_some(), "replica {i}: {r:?}");
    }
    for _ in 0..3 {
        let r = attempt(&c.balanced(), PASSWORD);
        assert_eq!(err(&r), (429, "account_locked".into()));
    }
}

#[test]
fn a_key_revoked_on_one_replica_is_refused_by_all_within_the_bound() {
    let c = Cluster::start(3, "");
    let totp = setup_owner(&c);
    let (_, s) = sign_in(&c.client(0), &c.client(0), &totp);
    let r = c.client(0).post(
        "/api/keys",
        &json!({"name": "agent", "scopes": ["proxy:openai"]}),
        &[&cookie(&s), SAME],
    );
    assert_eq!(r.status, 201, "create key: {}", r.body);
    let (id, key) = {
        let v = r.json();
        (
            v["id"].as_str().expect("id").to_string(),
            v["key"].as_str().expect("key").to_string(),
        )
    };
    assert_eq!(me(&c.client(0), &bearer(&key)), 200);
    // The new key reaches the other replicas' caches.
    for i in 1..3 {
        let took =
            within(CACHE_BOUND, || me(&c.client(i), &bearer(&key)) == 200).unwrap_or_else(|| {
                panic!(
                    "replica {i} did not accept the new key within {CACHE_BOUND:?}\n{}",
                    c.logs()
                )
            });
        println!("new key accepted by replica {i} after {took:?}");
    }
    // Revoked on replica 1: refused there at once, and by the others
    // within the bound.
    let r = c.client(1).request(
        "DELETE",
        &format!("/api/keys/{id}"),
        &[&cookie(&s), SAME],
        None,
    );
    assert!(r.status == 200 || r.status == 204, "revoke: {}", r.body);
    let revoked_at = Instant::now();
    assert_eq!(me(&c.client(1), &bearer(&key)), 401);
    for i in [0, 2] {
        within(CACHE_BOUND, || me(&c.client(i), &bearer(&key)) == 401).unwrap_or_else(|| {
            panic!(
                "replica {i} still accepts the revoked key after {CACHE_BOUND:?}\n{}",
                c.logs()
            )
        });
        println!(
            "revoked key refused by replica {i} {:?} after the revocation",
            revoked_at.elapsed()
        );
    }
    // And it stays refused, on every replica and through nginx.
    for i in 0..3 {
        assert_eq!(me(&c.client(i), &bearer(&key)), 401, "replica {i}");
    }
    assert_eq!(me(&c.balanced(), &bearer(&key)), 401);
}

#[test]
fn a_replica_killed_mid_load_loses_no_acknowledged_write_and_the_others_keep_serving() {
    let mut c = Cluster::start(3, "");
    let totp = setup_owner(&c);
    let (_, s) = sign_in(&c.client(0), &c.client(0), &totp);
    const THREADS: usize = 6;
    const PER_THREAD: usize = 25;
    let acked = std::sync::Mutex::new(BTreeSet::new());
    let failed = std::sync::Mutex::new(Vec::new());
    let started = std::sync::atomic::AtomicUsize::new(0);
    let clients: Vec<Client> = (0..THREADS).map(|_| c.balanced()).collect();
    std::thread::scope(|scope| {
        for (t, cl) in clients.iter().enumerate() {
            let (acked, failed, started, s) = (&acked, &failed, &started, &s);
            scope.spawn(move || {
                for n in 0..PER_THREAD {
                    started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let r = cl.post(
                        "/api/keys",
                        &json!({"name": format!("load-{t}-{n}"), "scopes": ["proxy:openai"]}),
                        &[&cookie(s), SAME],
                    );
                    if r.status == 201 {
                        let id = r.json()["id"].as_str().expect("id").to_string();
                        acked.lock().expect("acked").insert(id);
                    } else {
                        failed.lock().expect("failed").push((r.status, r.body));
                    }
                }
            });
        }
        // Mid-load: a third of the requests sent, writes in flight.
        let deadline = Instant::now() + Duration::from_secs(120);
        while started.load(std::sync::atomic::Ordering::Relaxed) < THREADS * PER_THREAD / 3 {
            assert!(Instant::now() < deadline, "the load never got going");
            std::thread::sleep(Duration::from_millis(5));
        }
        c.kill(1);
    });
    let acked = acked.into_inner().expect("acked");
    let failed = failed.into_inner().expect("failed");
    println!(
        "{} keys acknowledged, {} requests cut off by the kill",
        acked.len(),
        failed.len()
    );
    // Only the requests the dying replica had in hand may fail, as a
    // gateway error (nginx does not retry a POST it already sent).
    assert!(
        failed.iter().all(|(status, _)| *status == 502),
        "failures other than the killed replica's in-flight requests: {failed:?}"
    );
    assert!(
        failed.len() <= THREADS,
        "more failures than requests in flight: {failed:?}"
    );
    assert_eq!(acked.len() + failed.len(), THREADS * PER_THREAD);
    // Every acknowledged key is there, read from each surviving replica.
    for i in [0, 2] {
        let missing = missing_keys(&c.client(i), &s, &acked);
        assert!(
            missing.is_empty(),
            "replica {i} lacks acknowledged keys {missing:?}"
        );
    }
    // The others keep serving, through nginx and on their own ports.
    for n in 0..6 {
        let r = c.balanced().post(
            "/api/keys",
            &json!({"name": format!("after-{n}"), "scopes": ["proxy:openai"]}),
            &[&cookie(&s), SAME],
        );
        assert_eq!(r.status, 201, "after the kill, request {n}: {}", r.body);
    }
    for i in [0, 2] {
        assert_eq!(me(&c.client(i), &cookie(&s)), 200, "replica {i}");
    }
    // The killed replica comes back on the same database and sees it all.
    c.restart(1);
    let missing = missing_keys(&c.client(1), &s, &acked);
    assert!(missing.is_empty(), "restarted replica lacks {missing:?}");
}

/// The ids of `acked` that `cl`'s replica does not list.
fn missing_keys(cl: &Client, session: &str, acked: &BTreeSet<String>) -> Vec<String> {
    let r = cl.get("/api/keys", &[&cookie(session)]);
    assert_eq!(r.status, 200, "list keys: {}", r.body);
    let listed: BTreeSet<String> = r
        .json()
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["id"].as_str().map(str::to_string))
        .collect();
    acked.difference(&listed).cloned().collect()
}

#[test]
fn a_totp_code_used_on_one_replica_is_refused_on_the_others() {
    let c = Cluster::start(3, "");
    let totp = setup_owner(&c);
    let (_, _) = sign_in(&c.client(0), &c.client(0), &totp);
    let used = totp.last_step().expect("a code was handed out");
    let replay = totp_code_at(&totp.uri, used * 30);
    // A thief who saw that code signs in with the password elsewhere.
    for i in 1..3 {
        let r = c.client(i).post(
            "/api/auth/login",
            &json!({"username": OWNER, "password": PASSWORD}),
            &[SAME],
        );
        assert_eq!(r.status, 200, "login on replica {i}: {}", r.body);
        let ticket = r.json()["ticket"].as_str().expect("ticket").to_string();
        let r = c.client(i).post(
            "/api/auth/mfa",
            &json!({"ticket": ticket, "code": replay}),
            &[SAME],
        );
        assert_eq!(
            err(&r),
            (401, "code_replayed".into()),
            "replayed code on replica {i}"
        );
        assert!(session_cookie(&r).is_none(), "replica {i} set a session");
    }
}

/// The rows of `table` in the cluster's database, one `key:value:xmin`
/// line each: a write to a row changes its line even if it wrote the same
/// value (a new row version has a new `xmin`).
fn rows(c: &Cluster, table: &str) -> String {
    PgServer::shared().psql(
        &c.db.name,
        &format!(
            "SELECT encode(k, 'hex') || ':' || encode(v, 'hex') || ':' || xmin \
             FROM latchkey_kv WHERE tbl = '{table}' ORDER BY k"
        ),
    )
}

#[test]
fn requests_without_a_credential_write_nothing_to_the_shared_store() {
    let c = Cluster::start(2, "");
    let totp = setup_owner(&c);
    let (_, session) = sign_in(&c.client(0), &c.client(1), &totp);
    // `auth_state` holds the per-address buckets (`r` + the address).
    let bucket_key = format!("{}:", hex::encode(b"r127.0.0.1"));
    let bucket = |rows: &str| {
        rows.lines()
            .find(|l| l.starts_with(&bucket_key))
            .map(str::to_string)
    };
    let before = (rows(&c, "auth_state"), rows(&c, "sessions"));
    assert!(bucket(&before.0).is_some(), "the sign-in wrote its bucket");
    for i in 0..40 {
        let cl = c.client(i % 2);
        assert_eq!(me(&cl, &cookie(&session)), 200);
        let r = cl.get("/api/setup", &[]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(
        (rows(&c, "auth_state"), rows(&c, "sessions")),
        before,
        "80 requests without a credential wrote to the shared store"
    );
    // A request with a credential does take from the shared bucket.
    let r = c.client(1).post(
        "/api/auth/login",
        &json!({"username": "nobody", "password": "not the password at all"}),
        &[SAME],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_ne!(bucket(&rows(&c, "auth_state")), bucket(&before.0));
}

#[test]
fn credential_requests_share_one_address_limit_and_the_status_page_each_replicas_own() {
    // Six requests per address, refilled at one a minute (not within the
    // test's seconds).
    let c = Cluster::start(3, "rate_limit_burst = 6\nrate_limit_per_minute = 1\n");
    // An address of its own, so nothing else here counts against it.
    let client = |i: usize| c.client(i).from_ip("127.0.0.9");
    let codes: Vec<(u16, String)> = (0..9)
        .map(|i| {
            err(&client(i % 3).post(
                "/api/auth/login",
                &json!({"username": format!("nobody{i}"), "password": "not the password at all"}),
                &[SAME],
            ))
        })
        .collect();
    // Six for the deployment, not six per replica (which would be 18).
    assert!(codes[..6].iter().all(|(s, _)| *s == 401), "{codes:?}");
    assert!(
        codes[6..]
            .iter()
            .all(|c| *c == (429, "rate_limited".into())),
        "{codes:?}"
    );
    // Each replica's own bucket took three of its six: the status page,
    // which presents no credential, takes only from that one — three more
    // on each replica, and then that replica refuses it too.
    for i in 0..3 {
        for n in 0..3 {
            let r = client(i).get("/api/setup", &[]);
            assert_eq!(r.status, 200, "replica {i}, status page {n}: {}", r.body);
        }
        assert_eq!(
            err(&client(i).get("/api/setup", &[])),
            (429, "rate_limited".into()),
            "replica {i}"
        );
    }
}

#[test]
fn two_wizards_on_two_replicas_at_once_make_exactly_one_owner() {
    let c = Cluster::start(2, "");
    let token = setup_token(c.replica(1));
    let gate = std::sync::Barrier::new(2);
    let results: Vec<(u16, String)> = std::thread::scope(|sc| {
        let wizards: Vec<_> = [(0, "alice"), (1, "bob")]
            .into_iter()
            .map(|(i, name)| {
                let (c, token, gate) = (&c, &token, &gate);
                sc.spawn(move || {
                    let cl = c.client(i);
                    gate.wait();
                    let r = cl.post(
                        "/api/setup/begin",
                        &json!({"token": token, "username": name, "password": PASSWORD}),
                        &[SAME],
                    );
                    // Both have begun (or been refused) before either confirms.
                    gate.wait();
                    if r.status != 200 {
                        return err(&r);
                    }
                    let uri = r.json()["otpauth_uri"]
                        .as_str()
                        .expect("otpauth_uri")
                        .to_string();
                    let r = cl.post(
                        "/api/setup/confirm",
                        &json!({"token": token, "username": name, "code": Authenticator::new(&uri).code()}),
                        &[SAME],
                    );
                    if r.status == 200 {
                        (200, name.to_string())
                    } else {
                        err(&r)
                    }
                })
            })
            .collect();
        wizards
            .into_iter()
            .map(|w| w.join().expect("wizard"))
            .collect()
    });
    let won: Vec<&String> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, n)| n)
        .collect();
    assert_eq!(won.len(), 1, "exactly one wizard wins: {results:?}");
    let lost = results.iter().find(|(s, _)| *s != 200).expect("a loser");
    assert!(
        [(409, "setup_replaced"), (403, "invalid_setup_token")]
            .iter()
            .any(|(s, code)| lost.0 == *s && lost.1 == *code),
        "{results:?}"
    );
    // One account in the shared database, and both replicas say so.
    let users = PgServer::shared().psql(
        &c.db.name,
        "SELECT count(*) FROM latchkey_kv WHERE tbl = 'users'",
    );
    assert_eq!(users.trim(), "1", "{results:?}");
    for i in 0..2 {
        let r = c.client(i).get("/api/setup", &[]);
        assert_eq!(r.json()["needed"], false, "replica {i}: {}", r.body);
    }
}
