//! The second factor's building blocks, shared by setup, sign-in,
//! re-authentication and the account: TOTP enrollment (the secret sealed
//! in the vault), TOTP checks, and consuming a TOTP step or a recovery
//! code.
//!
//! Invariants:
//!
//! - every single-use thing here (a TOTP step, a recovery code) is checked
//!   and consumed in one write transaction that re-reads its row;
//!   slow verification may run first, never the consumption: of concurrent
//!   requests with one code, exactly one passes;
//! - a TOTP secret is stored only sealed by the vault, bound to its user
//!   (context `totp:<user id>`).

use super::{Auth, EnrollmentView, SecretView, now};
use crate::auth::AuthError;
use crate::auth::recovery;
use crate::auth::store::{User, UserId};
use crate::auth::totp::{self, TotpSecret};
use crate::secrecy::ExposeSecret;

impl Auth {
    fn totp_context(id: UserId) -> String {
        format!("totp:{id}")
    }

    pub(super) fn enrollment(
        &self,
        id: UserId,
        username: &str,
    ) -> Result<(Vec<u8>, EnrollmentView), AuthError> {
        let secret = TotpSecret::generate();
        let e =
            totp::enrollment(username, &secret).map_err(|e| AuthError::Internal(e.to_string()))?;
        let sealed = self
            .vault
            .seal_value(&Self::totp_context(id), &secret.to_base32())?;
        Ok((
            sealed,
            EnrollmentView {
                otpauth_uri: SecretView(e.otpauth_uri),
                qr_png_base64: e.qr_png_base64,
                qr_svg: e.qr_svg,
            },
        ))
    }

    pub(super) fn check_totp(
        &self,
        id: UserId,
        user: &User,
        sealed: &[u8],
        code: &str,
    ) -> Result<u64, AuthError> {
        let secret = self.vault.open_value(&Self::totp_context(id), sealed)?;
        let secret = TotpSecret::from_base32(secret.expose_secret())
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        totp::verify(&secret, code, now().max(0) as u64, user.totp_last_step).map_err(|e| match e {
            totp::TotpError::Replayed => AuthError::Unauthorized(
                "code_replayed",
                "this code was already used; wait for the next one".into(),
            ),
            other => AuthError::Unauthorized("invalid_code", other.to_string()),
        })
    }

    fn code_replayed() -> AuthError {
        AuthError::Unauthorized(
            "code_replayed",
            "this code was already used; wait for the next one".into(),
        )
    }

    /// Records TOTP `step` of the confirmed secret `sealed` as used, in the
    /// same write transaction that reads the stored last step: of
    /// concurrent requests with one code, exactly one passes.
    pub(super) fn consume_totp_step(
        &self,
        id: UserId,
        sealed: &[u8],
        step: u64,
    ) -> Result<User, AuthError> {
        self.update_user(id, |u| {
            if u.totp.as_deref() != Some(sealed) {
                return Err(AuthError::Unauthorized(
                    "invalid_code",
                    "the second factor changed; try again".into(),
                ));
            }
            if u.totp_last_step.is_some_and(|last| step <= last) {
                return Err(Self::code_replayed());
            }
            u.totp_last_step = Some(step);
            Ok(())
        })
    }

    /// Removes recovery code `code` from the stored set, reading the set
    /// inside the write transaction: two different codes at once both
    /// leave, one code twice is accepted once.
    pub(super) fn consume_recovery_code(&self, id: UserId, code: &str) -> Result<User, AuthError> {
        self.update_user(id, |u| {
            if recovery::find_and_consume(code, &mut u.recovery_hashes) {
                Ok(())
            } else {
                Err(Self::invalid_recovery_code())
            }
        })
    }

    pub(super) fn invalid_recovery_code() -> AuthError {
        AuthError::Unauthorized(
            "invalid_code",
            "that recovery code is not valid (each works once)".into(),
        )
    }
}
