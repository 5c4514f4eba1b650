//! The feed parser's rules, the settings' key checks, and the periodic
//! check against a source served from memory (the feed's transport is
//! tested end to end in `tests/it/update.rs`).

use super::*;
use crate::audit::AuditQuery;
use base64::Engine;

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn feed_json(version: &str, target: &str) -> String {
    format!(
        r#"{{"version":"{version}","notes":"fixes","artifacts":{{"{target}":{{"url":"latchkey-{version}-{target}.tar.gz","size":1234,"sha256":"{SHA}"}}}}}}"#
    )
}

#[test]
fn a_good_feed_parses() {
    let f = feed::parse(feed_json("1.2.3", "x86_64-unknown-linux-gnu").as_bytes()).expect("feed");
    assert_eq!(f.version, semver::Version::new(1, 2, 3));
    let a = &f.artifacts["x86_64-unknown-linux-gnu"];
    assert_eq!(a.size, 1234);
    assert_eq!(f.notes.as_deref(), Some("fixes"));
    let base = url::Url::parse("https://example.test/latchkey/latest.json").expect("url");
    assert_eq!(
        feed::resolve(&base, a).expect("resolve").as_str(),
        "https://example.test/latchkey/latchkey-1.2.3-x86_64-unknown-linux-gnu.tar.gz"
    );
}

#[test]
fn bad_feeds_are_refused_with_the_field() {
    let t = "x86_64-unknown-linux-gnu";
    let good = feed_json("1.2.3", t);
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("1.2.3\",\"notes", "one.two\",\"notes"),
            "version",
        ),
        (
            good.replace("1.2.3\",\"notes", "1.2.3+b1\",\"notes"),
            "version",
        ),
        // An artifact named for another version: the signature context
        // would not match, so the feed is refused first.
        (
            good.replace("latchkey-1.2.3-", "latchkey-1.2.2-"),
            "artifacts.url",
        ),
        (good.replace("\"url\":\"", "\"url\":\"../"), "artifacts.url"),
        (
            good.replace("\"url\":\"", "\"url\":\"https://evil.test/"),
            "artifacts.url",
        ),
        (good.replace("\"url\":\"", "\"url\":\"/"), "artifacts.url"),
        (good.replace("1234", "0"), "artifacts.size"),
        (good.replace("1234", "999999999999"), "artifacts.size"),
        (good.replace(SHA, &SHA.to_uppercase()), "artifacts.sha256"),
        (good.replace(SHA, "abc"), "artifacts.sha256"),
        (good.replace(t, "X86 LINUX"), "artifacts"),
    ];
    for (text, want) in cases {
        match feed::parse(text.as_bytes()) {
            Err(FeedError::Field { field, .. }) => assert_eq!(field, want, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(matches!(feed::parse(b"{"), Err(FeedError::Json(_))));
    assert!(matches!(
        feed::parse(b"{\"version\":\"1.0.0\"}"),
        Err(FeedError::Json(_))
    ));
    let huge = vec![b' '; feed::MAX_FEED_BYTES + 1];
    assert_eq!(feed::parse(&huge), Err(FeedError::TooLarge));
}

#[test]
fn versions_compare_by_semver() {
    let v = |s: &str| semver::Version::parse(s).expect("version");
    assert!(feed::is_newer(&v("1.10.0"), "1.9.0"));
    assert!(feed::is_newer(&v("1.0.0"), "1.0.0-rc.1"));
    assert!(
        !feed::is_newer(&v("1.0.0"), "1.0.0"),
        "a replay is not newer"
    );
    assert!(
        !feed::is_newer(&v("0.9.9"), "1.0.0"),
        "a downgrade is not newer"
    );
    assert!(!feed::is_newer(&v("9.0.0"), "not-a-version"));
}

#[test]
fn keys_are_checked_and_the_release_key_is_always_there() {
    let s = UpdateSettings::default();
    assert_eq!(s.verifying_keys().expect("keys"), RELEASE_KEYS.to_vec());
    assert!(!RELEASE_KEYS.is_empty());
    assert!(RELEASE_KEYS.iter().all(|k| k != &[0u8; 32]));
    let extra = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let s = UpdateSettings {
        public_keys: vec![extra],
        ..UpdateSettings::default()
    };
    assert_eq!(s.verifying_keys().expect("keys").len(), 2);
    for bad in ["not base64!", "AAAA"] {
        let s = UpdateSettings {
            public_keys: vec![bad.into()],
            ..UpdateSettings::default()
        };
        let (key, msg) = s.validate().expect_err(bad);
        assert_eq!(key, "update.public_keys");
        assert!(msg.starts_with("key 1: "), "{msg}");
        assert!(!msg.contains(bad), "the value is not repeated: {msg}");
    }
}

#[test]
fn feed_urls_need_https_or_loopback() {
    for ok in [
        "https://releases.example.test/latchkey/latest.json",
        "http://127.0.0.1:8080/latest.json",
        "http://[::1]:1/latest.json",
        "http://localhost/latest.json",
    ] {
        settings::check_feed_url(ok).expect(ok);
    }
    for bad in [
        "http://192.168.1.2/latest.json",
        "http://example.test/latest.json",
        "ftp://127.0.0.1/latest.json",
        "https://user:pw@example.test/latest.json",
        "latest.json",
    ] {
        assert!(settings::check_feed_url(bad).is_err(), "{bad}");
    }
}

#[derive(Debug)]
struct Memory(Mutex<Result<Vec<u8>, String>>);

impl UpdateSource for Memory {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        let v = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Box::pin(async move { v })
    }
}

fn available_entries(store: &Store) -> Vec<crate::audit::AuditEvent> {
    crate::audit::query(store, &AuditQuery::default())
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "update.available")
        .collect()
}

#[tokio::test]
async fn a_newer_version_is_shown_and_audited_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path(), "test").expect("store");
    let source = Arc::new(Memory(Mutex::new(Ok(
        feed_json("999.0.0", TARGET).into_bytes()
    ))));
    let updates = Updates::new(
        Arc::clone(&store),
        &UpdateSettings::default(),
        Some(Arc::clone(&source) as Arc<dyn UpdateSource>),
    );
    updates.check().await;
    let s = updates.status();
    assert!(s.available, "{s:?}");
    assert_eq!(s.latest.as_deref(), Some("999.0.0"));
    assert_eq!(s.current, version());
    updates.check().await;
    // A second server process (a restart) finds it audited already.
    let again = Updates::new(
        Arc::clone(&store),
        &UpdateSettings::default(),
        Some(Arc::clone(&source) as Arc<dyn UpdateSource>),
    );
    again.check().await;
    let entries = available_entries(&store);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].target.as_deref(), Some("999.0.0"));

    // Another platform only, or not newer: nothing available.
    *source.0.lock().expect("lock") =
        Ok(feed_json("1000.0.0", "riscv64gc-unknown-linux-gnu").into_bytes());
    updates.check().await;
    assert!(!updates.status().available);
    *source.0.lock().expect("lock") = Ok(feed_json("0.0.1", TARGET).into_bytes());
    updates.check().await;
    assert!(!updates.status().available);
    assert_eq!(available_entries(&store).len(), 1);

    // A failing feed is reported, not fatal.
    *source.0.lock().expect("lock") = Err("connection refused".into());
    updates.check().await;
    assert_eq!(
        updates.status().error.as_deref(),
        Some("connection refused")
    );
}

#[tokio::test]
async fn an_install_report_is_audited_once_and_shown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path(), "test").expect("store");
    let report = InstallReport {
        at: 1_800_000_000,
        from: "1.0.0".into(),
        to: "1.1.0".into(),
        outcome: InstallOutcome::RolledBack,
        reason: Some("the new build did not become ready within 60 s".into()),
    };
    write_report(tmp.path(), &report).expect("write");
    let updates = Updates::new(Arc::clone(&store), &UpdateSettings::default(), None);
    updates.pick_up_report().await;
    updates.pick_up_report().await;
    assert_eq!(updates.status().last_install, Some(report));
    let installs: Vec<_> = crate::audit::query(&store, &AuditQuery::default())
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "update.install")
        .collect();
    assert_eq!(installs.len(), 1, "{installs:?}");
    assert_eq!(installs[0].outcome, Outcome::Failure);
    assert!(
        installs[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("ready")),
        "{installs:?}"
    );
}

#[test]
fn the_version_is_read_from_its_slot() {
    assert_eq!(version(), env!("LATCHKEY_VERSION"));
    assert!(semver::Version::parse(version()).is_ok());
}

#[test]
fn public_keys_come_from_the_environment_as_one_string() {
    let k1 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let k2 = base64::engine::general_purpose::STANDARD.encode([8u8; 32]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = vec![(
        "LATCHKEY_UPDATE__PUBLIC_KEYS".to_string(),
        format!("{k1},{k2}"),
    )];
    let s = crate::config::Settings::load(&tmp.path().join("none.toml"), false, env).expect("load");
    assert_eq!(s.update.public_keys, vec![k1, k2]);
    let env = vec![(
        "LATCHKEY_UPDATE__PUBLIC_KEYS".to_string(),
        "AAAA".to_string(),
    )];
    let err = crate::config::Settings::load(&tmp.path().join("none.toml"), false, env)
        .expect_err("a short key");
    assert!(err.to_string().contains("update.public_keys"), "{err}");
}
