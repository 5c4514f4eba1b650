//! Minting against a real vault and audit log: the token verifies with
//! the secret and carries only what the section allows; every refusal is
//! precise and audited; the secret and the token never reach the log.

use super::*;
use crate::audit::AuditQuery;
use crate::store::Store;
use crate::vault::{Kind, MasterKeySource, NewRecord};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::SecretString;
use serde_json::{Value, json};

const SECRET: &str = "lk-CANARY-secret-0123456789abcdef0123456789";
const NOW: i64 = 1_900_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    vault: Arc<Vault>,
    lk: LiveKit,
}

fn fixture(extra: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "test").expect("store");
    let vault = Arc::new(Vault::new(store));
    vault
        .open_with(&MasterKeySource::KeyFile {
            path: dir.path().join("master.key"),
        })
        .expect("init");
    let record = NewRecord {
        name: "lk-secret".into(),
        kind: Kind::Generic,
        provider: None,
        labels: BTreeMap::new(),
    };
    vault
        .put(&record, &SecretString::from(SECRET.to_string()), false)
        .expect("put");
    let toml = format!(
        "[home]\napi_key = \"APIhome\"\nsecret = \"lk-secret\"\nurl = \"wss://lk.example.com\"\n\
         rooms = [\"standup\", \"agent-*\", \"{{user}}-room\"]\n{extra}"
    );
    let settings: BTreeMap<String, LiveKitSettings> = toml::from_str(&toml).expect("settings");
    let lk = LiveKit::new(&settings, Arc::clone(&vault)).expect("livekit");
    Fixture {
        _dir: dir,
        vault,
        lk,
    }
}

fn alice() -> Caller {
    Caller {
        username: "alice".into(),
        actor: "alice (key 0123456789abcdef)".into(),
        ip: Some(IpAddr::from([127, 0, 0, 1])),
    }
}

fn ask(room: &str, identity: &str) -> MintRequest {
    MintRequest {
        room: room.into(),
        identity: identity.into(),
        name: None,
        grants: None,
        ttl: None,
    }
}

fn with_grants(mut r: MintRequest, grants: Value) -> MintRequest {
    r.grants = Some(grants.as_object().expect("object").clone());
    r
}

/// The claims, verified with the secret and the API key as issuer (what
/// LiveKit's `TokenVerifier` checks).
fn verify(token: &str) -> Value {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&["APIhome"]);
    // NOW is a fixed instant: the times are compared by the tests (the
    // end-to-end test checks them against the clock).
    v.validate_nbf = false;
    v.validate_exp = false;
    v.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(SECRET.as_bytes()), &v)
        .expect("verifies")
        .claims
}

fn audit(f: &Fixture) -> Vec<crate::audit::AuditEvent> {
    crate::audit::query(
        f.vault.store(),
        &AuditQuery {
            action: Some("livekit.token".into()),
            ..AuditQuery::default()
        },
    )
    .expect("audit")
}

#[test]
fn a_token_carries_the_room_identity_and_participant_grants() {
    let f = fixture("");
    let mut req = ask("agent-kitchen", "alice-bot");
    req.name = Some("Kitchen bot".into());
    let m = f.lk.mint("home", &req, &alice(), NOW).expect("mint");
    assert_eq!(m.url, "wss://lk.example.com");
    assert_eq!(m.expires_at, NOW + 600);
    let c = verify(&m.token);
    assert_eq!(c["iss"], "APIhome");
    assert_eq!(c["sub"], "alice-bot");
    assert_eq!(c["name"], "Kitchen bot");
    assert_eq!(c["nbf"], NOW);
    assert_eq!(c["exp"], NOW + 600);
    assert_eq!(
        c["video"],
        json!({
            "room": "agent-kitchen",
            "roomJoin": true,
            "canPublish": true,
            "canSubscribe": true,
            "canPublishData": true,
        })
    );
    // Signed with the secret and nothing else.
    let wrong = jsonwebtoken::decode::<Value>(
        &m.token,
        &DecodingKey::from_secret(b"another-secret"),
        &Validation::new(Algorithm::HS256),
    );
    assert!(wrong.is_err());

    let log = audit(&f);
    assert_eq!(log.len(), 1);
    let e = &log[0];
    assert_eq!(e.outcome, Outcome::Success);
    assert_eq!(e.actor, "alice (key 0123456789abcdef)");
    assert_eq!(e.target.as_deref(), Some("home"));
    let detail = e.detail.as_deref().unwrap_or_default();
    assert!(detail.contains("room=agent-kitchen"), "{detail}");
    assert!(detail.contains("identity=alice-bot"), "{detail}");
    assert!(
        detail.contains("grants=roomJoin,canPublish,canSubscribe,canPublishData"),
        "{detail}"
    );
    assert!(detail.contains("ttl=600s"), "{detail}");
    assert!(detail.contains(&format!("jti={}", c["jti"].as_str().expect("jti"))));
    let everything = format!("{log:?}");
    assert!(!everything.contains(SECRET));
    assert!(!everything.contains(&m.token));
    assert!(!format!("{m:?}").contains(&m.token));
}

#[test]
fn withheld_grants_are_stated_false_and_asked_ones_checked() {
    let f = fixture("grants = [\"roomJoin\", \"canSubscribe\", \"hidden\"]\n");
    // Without `grants`: the participant grants the section allows; the
    // withheld canPublish and canPublishData are written `false`, since
    // LiveKit would read their absence as allowed.
    let m =
        f.lk.mint("home", &ask("standup", "alice"), &alice(), NOW)
            .expect("mint");
    assert_eq!(
        verify(&m.token)["video"],
        json!({
            "room": "standup",
            "roomJoin": true,
            "canPublish": false,
            "canSubscribe": true,
            "canPublishData": false,
        })
    );
    // Asked for explicitly: exactly those.
    let req = with_grants(
        ask("standup", "alice"),
        json!({"roomJoin": true, "hidden": true, "canSubscribe": false}),
    );
    let m = f.lk.mint("home", &req, &alice(), NOW).expect("mint");
    let video = &verify(&m.token)["video"];
    assert_eq!(video["hidden"], true);
    assert_eq!(video["canSubscribe"], false);
    // Beyond the section: refused, naming the grant.
    for grants in [
        json!({"roomJoin": true, "canPublish": true}),
        json!({"roomAdmin": true}),
        json!({"roomList": true}),
    ] {
        let err =
            f.lk.mint(
                "home",
                &with_grants(ask("standup", "alice"), grants.clone()),
                &alice(),
                NOW,
            )
            .expect_err("refused");
        assert!(
            matches!(err, LiveKitError::GrantNotAllowed(_)),
            "{grants}: {err}"
        );
    }
    let err =
        f.lk.mint(
            "home",
            &with_grants(ask("standup", "alice"), json!({"canFly": true})),
            &alice(),
            NOW,
        )
        .expect_err("unknown");
    assert!(
        matches!(
            err,
            LiveKitError::Invalid {
                field: "grants",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn publish_sources_are_capped_by_the_section() {
    let f = fixture("publish_sources = [\"microphone\"]\n");
    let m =
        f.lk.mint("home", &ask("standup", "alice"), &alice(), NOW)
            .expect("mint");
    assert_eq!(
        verify(&m.token)["video"]["canPublishSources"],
        json!(["microphone"])
    );
    let req = with_grants(
        ask("standup", "alice"),
        json!({"roomJoin": true, "canPublish": true, "canPublishSources": ["camera"]}),
    );
    assert!(matches!(
        f.lk.mint("home", &req, &alice(), NOW),
        Err(LiveKitError::GrantNotAllowed(_))
    ));
}

#[test]
fn rooms_and_identities_outside_the_patterns_are_refused_and_audited() {
    let f = fixture("");
    for (room, identity, want) in [
        ("standup2", "alice", "room_not_allowed"),
        ("agent", "alice", "room_not_allowed"),
        ("bob-room", "alice", "room_not_allowed"),
        ("standup", "bob", "identity_not_allowed"),
        ("standup", "bob-alice", "identity_not_allowed"),
        ("standup", "alicex", "identity_not_allowed"),
        ("stand up", "alice", "invalid_field"),
        ("standup", "alice/x", "invalid_field"),
        ("", "alice", "invalid_field"),
    ] {
        let err =
            f.lk.mint("home", &ask(room, identity), &alice(), NOW)
                .expect_err("refused");
        assert_eq!(err.reason(), want, "{room} {identity}: {err}");
    }
    // `{user}` is the caller's own name.
    assert!(
        f.lk.mint("home", &ask("alice-room", "alice-phone"), &alice(), NOW)
            .is_ok()
    );
    let log = audit(&f);
    let failures = log.iter().filter(|e| e.outcome == Outcome::Failure).count();
    assert_eq!(failures, 9, "{log:?}");
    assert!(log.iter().any(|e| {
        e.detail
            .as_deref()
            .is_some_and(|d| d.starts_with("identity_not_allowed: room=standup identity=bob"))
    }));
}

#[test]
fn ttl_is_capped() {
    let f = fixture("default_ttl = \"5m\"\nmax_ttl = \"30m\"\n");
    let mut req = ask("standup", "alice");
    req.ttl = Some(Duration::from_secs(1800));
    let m = f.lk.mint("home", &req, &alice(), NOW).expect("at the cap");
    assert_eq!(m.expires_at, NOW + 1800);
    assert_eq!(verify(&m.token)["exp"], NOW + 1800);
    req.ttl = Some(Duration::from_secs(1801));
    assert!(matches!(
        f.lk.mint("home", &req, &alice(), NOW),
        Err(LiveKitError::TtlTooLong {
            asked: 1801,
            max: 1800
        })
    ));
    req.ttl = Some(Duration::ZERO);
    assert!(matches!(
        f.lk.mint("home", &req, &alice(), NOW),
        Err(LiveKitError::Invalid { field: "ttl", .. })
    ));
    req.ttl = None;
    let m = f.lk.mint("home", &req, &alice(), NOW).expect("default");
    assert_eq!(m.expires_at, NOW + 300);
}

#[test]
fn display_names_are_plain_text() {
    let f = fixture("");
    for bad in ["", "a\u{7}b", "line\nbreak"] {
        let mut req = ask("standup", "alice");
        req.name = Some(bad.into());
        assert!(matches!(
            f.lk.mint("home", &req, &alice(), NOW),
            Err(LiveKitError::Invalid { field: "name", .. })
        ));
    }
    let mut req = ask("standup", "alice");
    req.name = Some("x".repeat(MAX_DISPLAY_NAME + 1));
    assert!(f.lk.mint("home", &req, &alice(), NOW).is_err());
}

#[test]
fn a_missing_secret_a_sealed_vault_or_an_unknown_section_mint_nothing() {
    let f = fixture("");
    assert!(matches!(
        f.lk.mint("office", &ask("standup", "alice"), &alice(), NOW),
        Err(LiveKitError::Unknown(_))
    ));
    f.vault.remove("lk-secret").expect("remove");
    assert!(matches!(
        f.lk.mint("home", &ask("standup", "alice"), &alice(), NOW),
        Err(LiveKitError::SecretMissing { .. })
    ));
    f.vault.seal();
    assert!(matches!(
        f.lk.mint("home", &ask("standup", "alice"), &alice(), NOW),
        Err(LiveKitError::Vault(VaultError::Sealed))
    ));
    assert!(
        !audit(&f).iter().any(|e| e.outcome == Outcome::Success),
        "nothing was minted"
    );
}
