//! LiveKit room tokens through the real binary: a token minted by
//! `POST /api/livekit/<name>/token` is verified by the official
//! `livekit-api` package's `TokenVerifier` with the configured secret
//! (tests/sdk/livekit_verify.py), carries only the allowed room and
//! grants, and expires as stated; rooms, identities, grants and TTLs
//! outside the section and keys without `livekit:<name>` are refused; the
//! secret (a canary) shows up in no response and no log; every token is
//! audited with the key's id and never the token.

use latchkey_e2e::{ServeOpts, Server, TestDir, auth_config, create_key, run_cmd_for, web_setup};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "lk-CANARY-e2e-secret-4f1c9a7b2d6e8f0a1b3c5d7e9f";
const API_KEY: &str = "APIe2eHome";

fn config() -> String {
    format!(
        "{}\n[livekit.home]\napi_key = \"{API_KEY}\"\nsecret = \"livekit-home\"\n\
         url = \"ws://127.0.0.1:7880\"\nrooms = [\"standup\", \"agent-*\"]\n\
         grants = [\"roomJoin\", \"canSubscribe\", \"canPublish\", \"hidden\"]\n\
         max_ttl = \"20m\"\n\n\
         [livekit.office]\napi_key = \"APIoffice\"\nsecret = \"livekit-home\"\n\
         url = \"wss://office.example.com\"\nrooms = [\"*\"]\n",
        auth_config("")
    )
}

/// What `livekit_verify.py` makes of `token` with `secret` and `leeway`.
fn verify(token: &str, secret: &str, leeway: u64) -> Value {
    latchkey_e2e::require_python("livekit.api, jwt");
    let mut c = Command::new("python3");
    c.arg(latchkey_e2e::sdk_path("livekit_verify.py"));
    let input = json!({"api_key": API_KEY, "secret": secret, "token": token, "leeway": leeway});
    let out = run_cmd_for(c, input.to_string().as_bytes(), Duration::from_secs(30));
    assert!(
        out.status.success(),
        "livekit_verify.py failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

fn mint(s: &Server, key: &str, section: &str, body: &Value) -> latchkey_e2e::Resp {
    let r = s.bearer(
        key,
        "POST",
        &format!("/api/livekit/{section}/token"),
        Some(&body.to_string()),
    );
    assert!(!r.body.contains(SECRET), "a response leaked the secret");
    r
}

fn now() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit")
}

#[test]
fn livekit_tokens_verify_with_the_official_package_and_stay_within_the_section() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "livekit-home"], SECRET.as_bytes());
    let mut s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config()));
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let (key_id, key) = create_key(b, "voice-agent", &["livekit:home"]);
    let (_, proxy_key) = create_key(b, "proxy-only", &["proxy:*"]);
    let (_, office_key) = create_key(b, "office-only", &["livekit:office"]);

    // A token for an allowed room and identity, with the participant grants
    // the section allows (canPublishData is not among them).
    let before = now();
    let r = mint(
        &s,
        &key,
        "home",
        &json!({"room": "agent-kitchen", "identity": "owner-bot", "name": "Kitchen", "ttl": 600}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["url"], "ws://127.0.0.1:7880");
    let token = v["token"].as_str().expect("token").to_string();
    let expires_at = v["expires_at"].as_i64().expect("expires_at");
    assert!(
        (before + 600..=now() + 600).contains(&expires_at),
        "{expires_at}"
    );

    let c = verify(&token, SECRET, 0);
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["wrong_secret"], "InvalidSignatureError", "{c}");
    assert_eq!(c["wrong_api_key"], "InvalidIssuerError", "{c}");
    assert_eq!(c["identity"], "owner-bot");
    assert_eq!(c["name"], "Kitchen");
    assert_eq!(c["exp"], expires_at, "expires as the answer states");
    assert!(
        (before..=now()).contains(&c["nbf"].as_i64().expect("nbf")),
        "{c}"
    );
    let video = &c["video"];
    assert_eq!(video["room"], "agent-kitchen", "{c}");
    assert_eq!(video["room_join"], true, "{c}");
    assert_eq!(video["can_publish"], true, "{c}");
    assert_eq!(video["can_subscribe"], true, "{c}");
    // Withheld: stated false, where the package (like LiveKit) would read
    // a missing one as allowed.
    assert_eq!(video["can_publish_data"], false, "{c}");
    for admin in [
        "room_admin",
        "room_create",
        "room_list",
        "room_record",
        "hidden",
        "agent",
    ] {
        assert!(video[admin] != true, "{admin}: {c}");
    }

    // Exactly the grants asked for, within the section.
    let r = mint(
        &s,
        &key,
        "home",
        &json!({"room": "standup", "identity": "owner",
                "grants": {"roomJoin": true, "canSubscribe": true, "hidden": true}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let c = verify(r.json()["token"].as_str().expect("token"), SECRET, 0);
    assert_eq!(c["video"]["hidden"], true, "{c}");
    assert_eq!(c["video"]["can_publish"], false, "{c}");

    // A short token really expires: the verifier, without leeway, refuses
    // it once its stated time has passed.
    let r = mint(
        &s,
        &key,
        "home",
        &json!({"room": "standup", "identity": "owner", "ttl": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let short = r.json()["token"].as_str().expect("token").to_string();
    let until = r.json()["expires_at"].as_i64().expect("expires_at");
    while now() <= until {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1100));
    let c = verify(&short, SECRET, 0);
    assert_eq!(c["ok"], false, "{c}");
    assert_eq!(c["error"], "ExpiredSignatureError", "{c}");

    // Outside the section: precise refusals.
    for (body, status, code) in [
        (
            json!({"room": "kitchen", "identity": "owner"}),
            403,
            "room_not_allowed",
        ),
        (
            json!({"room": "agent", "identity": "owner"}),
            403,
            "room_not_allowed",
        ),
        (
            json!({"room": "standup", "identity": "alice"}),
            403,
            "identity_not_allowed",
        ),
        (
            json!({"room": "standup", "identity": "owner-bot", "grants": {"roomAdmin": true}}),
            403,
            "grant_not_allowed",
        ),
        (
            json!({"room": "standup", "identity": "owner-bot", "grants": {"canPublishData": true}}),
            403,
            "grant_not_allowed",
        ),
        (
            json!({"room": "standup", "identity": "owner-bot", "ttl": "21m"}),
            400,
            "ttl_too_long",
        ),
        (
            json!({"room": "standup", "identity": "owner-bot", "grants": {"canFly": true}}),
            400,
            "invalid_field",
        ),
        (
            json!({"room": "standup\n", "identity": "owner-bot"}),
            400,
            "invalid_field",
        ),
    ] {
        let r = mint(&s, &key, "home", &body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.error_code(), code, "{body}: {}", r.body);
    }

    // Wrong scope: refused before the section is even looked up.
    let ok = json!({"room": "standup", "identity": "owner"});
    for (k, section) in [
        (&proxy_key, "home"),
        (&office_key, "home"),
        (&key, "office"),
    ] {
        let r = mint(&s, k, section, &ok);
        assert_eq!(r.status, 403, "{section}: {}", r.body);
        assert_eq!(r.error_code(), "forbidden");
    }
    let r = mint(&s, &key, "nowhere", &ok);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = mint(&s, "lk_not-a-real-key", "home", &ok);
    assert_eq!(r.status, 401, "{}", r.body);

    // Audited: every token and refusal, with the key's id, never a token.
    let r = b.get("/api/audit?action=livekit.token&limit=100");
    assert_eq!(r.status, 200, "{}", r.body);
    let events: Vec<Value> = r.json()["events"].as_array().expect("events").clone();
    let minted: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"] == "success")
        .collect();
    let refused = events.iter().filter(|e| e["outcome"] == "failure").count();
    assert_eq!(minted.len(), 3, "{events:?}");
    assert_eq!(refused, 8, "{events:?}");
    for e in &minted {
        assert!(
            e["actor"].as_str().is_some_and(|a| a.contains(&key_id)),
            "{e}"
        );
        assert_eq!(e["target"], "home", "{e}");
    }
    assert!(
        minted.iter().any(|e| e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("room=agent-kitchen identity=owner-bot")
                && d.contains("grants=roomJoin,canPublish,canSubscribe"))),
        "{minted:?}"
    );
    assert!(!r.body.contains(&token) && !r.body.contains(&short));
    assert!(!r.body.contains(SECRET));

    s.stop();
    let logs = format!("{}{}", s.stdout(), s.stderr());
    assert!(
        !logs.contains(SECRET),
        "the server log leaked the LiveKit secret"
    );
    assert!(
        !logs.contains(&token),
        "the server log shows a minted token"
    );
}

/// A section whose secret is not in the vault yet: `409`, and the server
/// starts anyway (the secret may be stored later, without a restart).
#[test]
fn a_livekit_section_without_its_secret_answers_409_until_it_is_stored() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "other"], b"unrelated");
    let mut s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config()));
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let (_, key) = create_key(b, "voice-agent", &["livekit:home"]);
    let body = json!({"room": "standup", "identity": "owner"});
    let r = mint(&s, &key, "home", &body);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.error_code(), "livekit_secret_missing");
    let r = b.post(
        "/api/vault",
        &json!({"name": "livekit-home", "kind": "generic", "secret": SECRET}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = mint(&s, &key, "home", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let c = verify(r.json()["token"].as_str().expect("token"), SECRET, 0);
    assert_eq!(c["ok"], true, "{c}");
    s.stop();
    assert!(!format!("{}{}", s.stdout(), s.stderr()).contains(SECRET));
}

/// A bad `[livekit.<name>]` section stops the server from starting, with
/// the key named.
#[test]
fn a_bad_livekit_section_is_refused_at_startup_naming_the_key() {
    let d = TestDir::new();
    d.write_config(&format!(
        "{}\n[livekit.home]\napi_key = \"APIx\"\nsecret = \"s\"\nurl = \"wss://lk.example.com\"\n\
         rooms = [\"a b\"]\n",
        auth_config("")
    ));
    let err = d.fails(&["config", "check"], b"");
    assert!(err.contains("livekit.home.rooms"), "{err}");
}
