//! Session cookies, access tokens and refresh tokens as the auth service
//! (`auth::Auth`) receives them: opaque `lks_`/`lka_`/`lkr_`-style values
//! that are hashed and looked up, never parsed further.
//!
//! The target signs a real owner in once (a store in a temporary
//! directory, first-run setup, password, TOTP), keeping the session and
//! a token pair. Then, for every input:
//! - the input as a session cookie, a bearer token and a refresh token
//!   never authenticates (nor refreshes), unless it is the real value
//!   (whitespace around a bearer or refresh token aside);
//! - the real values with one byte changed (where the input says) never
//!   authenticate;
//! - nothing the input did ends the real session or token: they still
//!   authenticate afterwards (the access token while it lives, 15 min).
#![no_main]

use hmac::{Hmac, Mac};
use latchkey_core::auth::Auth;
use latchkey_core::auth::service::LoginStep;
use latchkey_core::config::AuthSettings;
use latchkey_core::secrecy::{ExposeSecret, SecretString};
use latchkey_core::store::Store;
use latchkey_core::vault::{MasterKeySource, Vault};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

struct Fixture {
    _dir: tempfile::TempDir,
    auth: Arc<Auth>,
    session: String,
    access: String,
    refresh: String,
    /// The access token's end (unix seconds), less a margin.
    access_until: i64,
}

fn base32(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => continue,
        };
        acc = acc << 5 | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn code(secret: &[u8], t: u64) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("key");
    mac.update(&(t / 30).to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = usize::from(h[19] & 0x0f);
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    format!("{:06}", bin % 1_000_000)
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "fuzz").expect("store");
        let vault = Arc::new(Vault::new(store.clone()));
        vault
            .open_with(&MasterKeySource::KeyFile {
                path: dir.path().join("master.key"),
            })
            .expect("vault");
        let auth = Auth::new(store, vault, AuthSettings::default()).expect("auth");
        let pw = SecretString::from("correct horse battery staple 42".to_string());
        let (_, enrollment, _) = auth.setup_host("owner", &pw).expect("setup");
        let uri = enrollment.otpauth_uri.0.expose_secret().to_string();
        let secret = uri
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("secret="))
            .map(base32)
            .expect("secret in the URI");
        let LoginStep::MfaRequired { ticket } =
            auth.login("owner", &pw, None, None).expect("login")
        else {
            panic!("MFA must be required");
        };
        let now = latchkey_core::auth::service::now() as u64;
        let s = auth
            .mfa(
                ticket.expose_secret(),
                Some(&code(&secret, now)),
                None,
                None,
                None,
            )
            .expect("mfa");
        let session = s.token.expose_secret().to_string();
        let p = auth.authenticate_session(&session).expect("session");
        let pair = auth.issue_tokens(&p).expect("tokens");
        Fixture {
            _dir: dir,
            auth,
            session,
            access: pair.access_token.0.expose_secret().to_string(),
            refresh: pair.refresh_token.0.expose_secret().to_string(),
            access_until: latchkey_core::auth::service::now() + pair.expires_in - 5,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let a = &f.auth;
    if let Ok(t) = std::str::from_utf8(data) {
        if a.authenticate_session(t).is_ok() {
            assert_eq!(t, f.session, "a forged session cookie authenticated");
        }
        if a.authenticate_bearer(t).is_ok() {
            assert_eq!(t.trim(), f.access, "a forged bearer token authenticated");
        }
        if t.trim() != f.refresh {
            assert!(
                a.refresh(t, None).is_err(),
                "a forged refresh token refreshed"
            );
        }
    }
    // The real values, edited where the input says.
    if let [at, to, ..] = data {
        for (real, which) in [(&f.session, 0), (&f.access, 1), (&f.refresh, 2)] {
            let mut b = real.clone().into_bytes();
            let i = usize::from(*at) % b.len();
            if b[i] == *to || !to.is_ascii_graphic() {
                continue;
            }
            b[i] = *to;
            let edited = String::from_utf8(b).expect("ascii");
            let ok = match which {
                0 => a.authenticate_session(&edited).is_ok(),
                1 => a.authenticate_bearer(&edited).is_ok(),
                _ => a.refresh(&edited, None).is_ok(),
            };
            assert!(!ok, "an edited token worked: {which}");
        }
    }
    // Still signed in.
    assert!(
        a.authenticate_session(&f.session).is_ok(),
        "the real session ended"
    );
    if latchkey_core::auth::service::now() < f.access_until {
        assert!(
            a.authenticate_bearer(&f.access).is_ok(),
            "the real access token ended"
        );
    }
});
