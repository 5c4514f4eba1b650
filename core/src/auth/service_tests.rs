//! The auth service's flows, end to end in one process (the HTTP and CLI
//! layers have their own tests; TOTP codes here come from totp-rs directly,
//! the end-to-end tests use Debian's oathtool).

use super::AuthError;
use super::service::*;
use crate::auth::settings::AuthSettings;
use crate::secrecy::{ExposeSecret, SecretString};
use crate::store::Store;
use crate::vault::{MasterKeySource, Vault};
use std::sync::Arc;

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) auth: Arc<Auth>,
}

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "test").expect("store");
    let vault = Arc::new(Vault::new(store.clone()));
    vault
        .open_with(&MasterKeySource::KeyFile {
            path: dir.path().join("master.key"),
        })
        .expect("vault");
    let auth = Auth::new(store, vault, AuthSettings::default()).expect("auth");
    Fixture { _dir: dir, auth }
}

pub(super) fn pw(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

pub(super) const PASSWORD: &str = "correct horse battery staple 42";

/// The current code for an otpauth URI, shifted by `steps`.
pub(super) fn code(uri: &str, steps: i64) -> String {
    let secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .expect("secret in uri");
    let bytes = totp_rs::Secret::try_from_base32(secret).expect("base32");
    let totp = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(bytes.as_ref())
        .build()
        .expect("totp");
    let t = (now() + steps * 30).max(0) as u64;
    totp.generate(t).to_string()
}

fn owner(f: &Fixture) -> (String, Vec<SecretString>) {
    let (_, enrollment, codes) = f.auth.setup_host("owner", &pw(PASSWORD)).expect("setup");
    (enrollment.otpauth_uri.0.expose_secret().to_string(), codes)
}

fn sign_in(f: &Fixture, uri: &str, steps: i64) -> NewSession {
    let LoginStep::MfaRequired { ticket } = f
        .auth
        .login("owner", &pw(PASSWORD), None, None)
        .expect("login")
    else {
        panic!("MFA must be required");
    };
    f.auth
        .mfa(
            ticket.expose_secret(),
            Some(&code(uri, steps)),
            None,
            None,
            None,
        )
        .expect("mfa")
}

#[test]
fn setup_login_mfa_session_logout() {
    let f = fixture();
    let (uri, codes) = owner(&f);
    assert_eq!(codes.len(), 10);
    assert!(uri.starts_with("otpauth://totp/") && uri.contains("issuer=Latchkey"));
    let s = sign_in(&f, &uri, 0);
    let p = f
        .auth
        .authenticate_session(s.token.expose_secret())
        .expect("session");
    assert_eq!(p.username, "owner");
    f.auth.logout(&p).expect("logout");
    assert!(
        f.auth
            .authenticate_session(s.token.expose_secret())
            .is_err(),
        "logout is immediate"
    );
}

#[test]
fn totp_code_is_single_use() {
    let f = fixture();
    let (uri, _) = owner(&f);
    sign_in(&f, &uri, 0);
    let LoginStep::MfaRequired { ticket } = f
        .auth
        .login("owner", &pw(PASSWORD), None, None)
        .expect("login")
    else {
        panic!("mfa");
    };
    let err = f
        .auth
        .mfa(
            ticket.expose_secret(),
            Some(&code(&uri, 0)),
            None,
            None,
            None,
        )
        .expect_err("replay");
    assert!(
        matches!(err, AuthError::Unauthorized("code_replayed", _)),
        "{err}"
    );
}

#[test]
fn recovery_codes_work_once() {
    let f = fixture();
    let (_, codes) = owner(&f);
    let rc = codes[3].expose_secret().to_string();
    for attempt in 0..2 {
        let LoginStep::MfaRequired { ticket } = f
            .auth
            .login("owner", &pw(PASSWORD), None, None)
            .expect("login")
        else {
            panic!("mfa");
        };
        let r = f
            .auth
            .mfa(ticket.expose_secret(), None, Some(&rc), None, None);
        assert_eq!(r.is_ok(), attempt == 0, "recovery code attempt {attempt}");
    }
    assert_eq!(
        f.auth.list_users().expect("users")[0].recovery_codes_left,
        9
    );
}

#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    let f = fixture();
    owner(&f);
    let a = f
        .auth
        .login("nobody", &pw(PASSWORD), None, None)
        .expect_err("unknown");
    let b = f
        .auth
        .login("owner", &pw("wrong password entirely"), None, None)
        .expect_err("wrong");
    assert_eq!(a.to_string(), b.to_string());
    assert!(matches!(
        a,
        AuthError::Unauthorized("invalid_credentials", _)
    ));
    assert!(matches!(
        b,
        AuthError::Unauthorized("invalid_credentials", _)
    ));
}

#[test]
fn five_failures_lock_the_account_even_for_the_right_password() {
    let f = fixture();
    owner(&f);
    for _ in 0..5 {
        let _ = f
            .auth
            .login("owner", &pw("not the password at all"), None, None);
    }
    let err = f
        .auth
        .login("owner", &pw(PASSWORD), None, None)
        .expect_err("locked");
    assert!(matches!(err, AuthError::Locked { .. }), "{err}");
}

#[test]
fn refresh_rotates_and_reuse_revokes_the_family() {
    let f = fixture();
    let (uri, _) = owner(&f);
    let s = sign_in(&f, &uri, 0);
    let p = f
        .auth
        .authenticate_session(s.token.expose_secret())
        .expect("session");
    let pair1 = f.auth.issue_tokens(&p).expect("tokens");
    let access1 = pair1.access_token.0.expose_secret().to_string();
    f.auth
        .authenticate_bearer(&access1)
        .expect("access token works");
    let pair2 = f
        .auth
        .refresh(pair1.refresh_token.0.expose_secret(), None)
        .expect("rotate");
    let access2 = pair2.access_token.0.expose_secret().to_string();
    // The old refresh token again: theft assumed, the family dies.
    let err = f
        .auth
        .refresh(pair1.refresh_token.0.expose_secret(), None)
        .expect_err("reuse");
    assert!(
        matches!(err, AuthError::Unauthorized("token_reused", _)),
        "{err}"
    );
    // It was audited as a security event.
    let events = crate::audit::query(
        f.auth.store(),
        &crate::audit::AuditQuery {
            action: Some("token.reuse".into()),
            ..Default::default()
        },
    )
    .expect("audit");
    assert_eq!(events.len(), 1);
    assert!(
        f.auth.authenticate_bearer(&access2).is_err(),
        "family access tokens revoked"
    );
    assert!(
        f.auth
            .refresh(pair2.refresh_token.0.expose_secret(), None)
            .is_err(),
        "newest refresh revoked too"
    );
}

#[test]
fn api_keys_are_scoped_and_revocable() {
    let f = fixture();
    let (uri, _) = owner(&f);
    let s = sign_in(&f, &uri, 0);
    let p = f
        .auth
        .authenticate_session(s.token.expose_secret())
        .expect("session");
    let (view, key) = f
        .auth
        .create_key(&p, "agent", &["proxy:openai".into()], None)
        .expect("key");
    let kp = f
        .auth
        .authenticate_bearer(key.expose_secret())
        .expect("key auth");
    use super::scope::Scope;
    assert!(kp.allows(&"proxy:openai".parse::<Scope>().expect("scope")));
    assert!(!kp.allows(&"proxy:anthropic".parse::<Scope>().expect("scope")));
    assert!(!kp.allows(&Scope::Admin));
    // A typo is caught by the checksum; a forged secret by the hash.
    let mut typo = key.expose_secret().to_string();
    typo.replace_range(10..11, if &typo[10..11] == "a" { "b" } else { "a" });
    assert!(f.auth.authenticate_bearer(&typo).is_err());
    f.auth.revoke_key(&p, &view.id).expect("revoke");
    assert!(
        f.auth.authenticate_bearer(key.expose_secret()).is_err(),
        "revocation is immediate"
    );
    // Keys cannot grant what they do not have.
    let err = f
        .auth
        .create_key(&kp, "escalate", &["admin".into()], None)
        .expect_err("escalation");
    assert!(matches!(err, AuthError::Forbidden(..)), "{err}");
}

#[test]
fn invites_are_single_use_and_expire() {
    let f = fixture();
    let host = f.auth.host_principal();
    owner(&f);
    let (token, _) = f
        .auth
        .create_invite(&host, super::scope::Role::User, None)
        .expect("invite");
    f.auth
        .accept_invite(
            token.expose_secret(),
            "alice",
            &pw("alice's long passphrase"),
            None,
        )
        .expect("accept");
    let err = f
        .auth
        .accept_invite(
            token.expose_secret(),
            "mallory",
            &pw("mallory's long passphrase"),
            None,
        )
        .expect_err("reuse");
    assert!(
        matches!(err, AuthError::Forbidden("invalid_invite", _)),
        "{err}"
    );
    // A zero lifetime is refused now (issue #19 item 7); one second, then
    // waiting it out, tests expiry.
    let (short, _) = f
        .auth
        .create_invite(
            &host,
            super::scope::Role::Guest,
            Some(std::time::Duration::from_secs(1)),
        )
        .expect("invite");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(
        f.auth
            .accept_invite(
                short.expose_secret(),
                "bob",
                &pw("bob's long passphrase!"),
                None
            )
            .is_err(),
        "expired invite"
    );
}

#[test]
fn common_and_short_passwords_are_refused() {
    let f = fixture();
    for bad in ["short", "1qaz2wsx3edc", "q1w2e3r4t5y6", "OWNER"] {
        assert!(
            matches!(
                f.auth.setup_host("owner", &pw(bad)),
                Err(AuthError::Invalid {
                    field: "password",
                    ..
                })
            ),
            "{bad}"
        );
    }
}

#[test]
fn admins_without_totp_must_enroll_before_any_session() {
    let f = fixture();
    let (uri, _) = owner(&f);
    let host = f.auth.host_principal();
    f.auth.reset_mfa(&host, "owner").expect("reset");
    let LoginStep::EnrollRequired { ticket, enrollment } = f
        .auth
        .login("owner", &pw(PASSWORD), None, None)
        .expect("login")
    else {
        panic!("an admin without TOTP must be sent to enrollment, not given a session");
    };
    let new_uri = enrollment.otpauth_uri.0.expose_secret().to_string();
    assert_ne!(new_uri, uri, "a fresh secret");
    // A code from the old authenticator does not complete it.
    assert!(
        f.auth
            .mfa(
                ticket.expose_secret(),
                Some(&code(&uri, 0)),
                None,
                None,
                None
            )
            .is_err()
    );
    let s = f
        .auth
        .mfa(
            ticket.expose_secret(),
            Some(&code(&new_uri, 0)),
            None,
            None,
            None,
        )
        .expect("enrolled");
    assert_eq!(s.recovery_codes.len(), 10, "new recovery codes, shown once");
    f.auth
        .authenticate_session(s.token.expose_secret())
        .expect("session");
}

#[test]
fn a_keys_owner_is_rechecked_after_every_change_to_users() {
    // API keys resolve their owner from memory; disabling the owner or
    // changing the role must still take effect on the very next request.
    let f = fixture();
    let host = f.auth.host_principal();
    owner(&f);
    let (token, _) = f
        .auth
        .create_invite(&host, super::scope::Role::User, None)
        .expect("invite");
    let pass = pw("alice's long passphrase");
    f.auth
        .accept_invite(token.expose_secret(), "alice", &pass, None)
        .expect("accept");
    let LoginStep::Done(s) = f.auth.login("alice", &pass, None, None).expect("login") else {
        panic!("a user without TOTP signs in with the password");
    };
    let alice = f
        .auth
        .authenticate_session(s.token.expose_secret())
        .expect("session");
    let (_, key) = f
        .auth
        .create_key(&alice, "agent", &["proxy:openai".into()], None)
        .expect("key");
    let by_key = || f.auth.authenticate_bearer(key.expose_secret());
    assert_eq!(by_key().expect("key works").role, super::scope::Role::User);
    // Warm, then change the role: the next request sees it.
    assert!(by_key().is_ok());
    f.auth
        .set_role(&host, "alice", super::scope::Role::Guest)
        .expect("role");
    assert_eq!(
        by_key().expect("still valid").role,
        super::scope::Role::Guest
    );
    f.auth.set_disabled(&host, "alice", true).expect("disable");
    assert!(
        by_key().is_err(),
        "a disabled user's key is refused at once"
    );
    f.auth.set_disabled(&host, "alice", false).expect("enable");
    assert!(
        by_key().is_err(),
        "disabling revoked the keys: enabling does not bring them back"
    );
}

#[test]
fn a_setup_restarted_under_another_name_leaves_no_unconfirmed_owner_behind() {
    let f = fixture();
    let token = f
        .auth
        .issue_setup_token()
        .expect("token")
        .expect("no owner yet");
    let token = token.expose_secret();
    f.auth
        .setup_begin(token, "first-try", &pw(PASSWORD))
        .expect("begin");
    // The wizard's "Back", then another name.
    let enrollment = f
        .auth
        .setup_begin(token, "owner", &pw(PASSWORD))
        .expect("begin again");
    let (user, _codes) = f
        .auth
        .setup_confirm(
            token,
            "owner",
            &code(enrollment.otpauth_uri.0.expose_secret(), 0),
            None,
        )
        .expect("confirm");
    assert_eq!(user.username, "owner");
    let names: Vec<String> = f
        .auth
        .list_users()
        .expect("users")
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, vec!["owner".to_string()], "the first try is gone");
    // And its name is free again.
    assert!(f.auth.find_user("first-try").expect("lookup").is_none());
}
