//! The shapes the auth service hands to the API and the CLI, shared by
//! several concerns: a user, an enrollment, a secret shown once.
//!
//! Invariant: the secrets in these shapes are [`SecretView`]s, serialized
//! exactly once, into a response body, and redacted in `Debug`. An
//! enrollment's QR images encode its secret too and are shown once, with
//! it.

use crate::auth::scope::Role;
use crate::auth::store::{User, UserId};
use crate::secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// A user as the API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub role: Role,
    pub mfa_enabled: bool,
    pub recovery_codes_left: usize,
    pub disabled: bool,
    pub created_at: i64,
}

impl UserView {
    pub fn of(id: UserId, u: &User) -> Self {
        UserView {
            id: id.to_string(),
            username: u.username.clone(),
            role: u.role,
            mfa_enabled: u.totp.is_some(),
            recovery_codes_left: u.recovery_hashes.len(),
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

/// A secret serialized exactly once, into a response body.
#[derive(Debug)]
pub struct SecretView(pub SecretString);

impl Serialize for SecretView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose_secret())
    }
}

/// What first-run setup and TOTP (re-)enrollment hand back. The QR
/// images encode the secret, so `Debug` shows none of the three.
#[derive(Serialize)]
pub struct EnrollmentView {
    pub otpauth_uri: SecretView,
    pub qr_png_base64: String,
    pub qr_svg: String,
}

impl std::fmt::Debug for EnrollmentView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentView")
            .field("otpauth_uri", &"[redacted]")
            .field("qr_png_base64", &"[redacted]")
            .field("qr_svg", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_debug_shows_neither_the_secret_nor_its_qr_codes() {
        let canary = "CANARYSECRET234567";
        let view = EnrollmentView {
            otpauth_uri: SecretView(SecretString::from(format!(
                "otpauth://totp/x?secret={canary}"
            ))),
            qr_png_base64: format!("png-{canary}"),
            qr_svg: format!("<svg>{canary}</svg>"),
        };
        let shown = format!("{view:?}");
        assert!(!shown.contains(canary), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
