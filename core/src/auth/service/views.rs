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

/// What first-run setup and TOTP (re-)enrollment hand back.
#[derive(Debug, Serialize)]
pub struct EnrollmentView {
    pub otpauth_uri: SecretView,
    pub qr_png_base64: String,
    pub qr_svg: String,
}
