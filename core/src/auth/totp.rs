//! Time-based one-time passwords (RFC 6238), as Google Authenticator, Authy
//! and Microsoft Authenticator expect them: HMAC-SHA1, 6 digits, 30-second
//! steps, issuer "Latchkey", account name = username.
//!
//! - [`TotpSecret`]: 160 random bits (RFC 4226 §4's recommendation), zeroed
//!   on drop, never printed; exported as base32 only for sealed storage in
//!   the vault.
//! - [`enrollment`]: the `otpauth://` URI plus the same URI as a QR code in
//!   PNG (base64) and SVG.
//! - [`verify`]: accepts exactly 6 digits within ±1 step of the server's
//!   clock, compared in constant time, and refuses any step at or before the
//!   last one accepted for this user (RFC 6238 §5.2: a code works once). The
//!   caller passes the current time in and stores the returned step.
//!
//! The TOTP arithmetic is totp-rs's; the QR matrix is qrcodegen's (the same
//! crates totp-rs's `qr` feature uses).

use std::fmt;

use qrcodegen::{QrCode, QrCodeEcc};
use rand::RngCore as _;
use rand::rngs::OsRng;
use secrecy::SecretString;
use subtle::{Choice, ConditionallySelectable as _, ConstantTimeEq as _, ConstantTimeGreater as _};
use thiserror::Error;
use totp_rs::{Algorithm, Builder, Secret, Totp};
use zeroize::Zeroizing;

/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "Latchkey";
/// Digits per code.
pub const DIGITS: usize = 6;
/// Seconds per time step.
pub const STEP_SECONDS: u64 = 30;
/// Steps of clock difference tolerated either way (RFC 6238 §5.2 suggests
/// one).
pub const SKEW_STEPS: u64 = 1;
/// Bytes of a freshly generated secret (160 bits).
pub const SECRET_BYTES: usize = 20;
/// Fewest bytes a stored secret may have (RFC 4226: at least 128 bits).
const MIN_SECRET_BYTES: usize = 16;
/// Quiet zone around the SVG QR code, in modules (the QR spec asks for 4).
const QUIET_ZONE: i32 = 4;

/// Why a code was refused or enrollment material could not be produced.
///
/// For lockout purposes, [`TotpError::Malformed`], [`TotpError::Invalid`]
/// and [`TotpError::Replayed`] are all failed attempts.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TotpError {
    /// Not exactly six digits (after removing spaces).
    #[error("the code must be exactly 6 digits")]
    Malformed,
    /// Six digits, but not the code for the previous, current or next
    /// 30-second step. The server's time is included so that a user whose
    /// phone clock is off can see it.
    #[error(
        "the code is not valid; this server's clock reads {server_time_utc} — if the clock of \
         the device showing your codes differs by more than 30 seconds, correct it and try again"
    )]
    Invalid {
        /// The server's time, RFC 3339 in UTC.
        server_time_utc: String,
    },
    /// A correct code for a step that was already used (or an earlier one).
    #[error(
        "this code has already been used; wait for the next one (codes change every 30 seconds)"
    )]
    Replayed,
    /// A stored secret is not base32 or shorter than 128 bits.
    #[error("the stored TOTP secret is invalid")]
    InvalidSecret,
    /// The username cannot be put in an `otpauth://` label.
    #[error("the username cannot be used as an authenticator account name (empty or contains ':')")]
    InvalidAccountName,
    /// The QR code could not be drawn.
    #[error("the enrollment QR code could not be drawn")]
    Qr,
}

/// A user's TOTP shared secret. Zeroed on drop; `Debug` is redacted; no
/// `Clone`, no `Serialize`.
pub struct TotpSecret {
    bytes: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret([redacted])")
    }
}

impl TotpSecret {
    /// 160 fresh bits from the operating system's CSPRNG.
    ///
    /// # Panics
    /// If the operating system's random number generator fails (then
    /// nothing secure can be generated at all).
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_BYTES]);
        OsRng.fill_bytes(&mut bytes);
        Self { bytes }
    }

    /// Reads a secret exported with [`Self::to_base32`] (RFC 4648
    /// base32, unpadded or padded).
    ///
    /// # Errors
    /// [`TotpError::InvalidSecret`] if it is not base32 or is shorter than
    /// 128 bits.
    pub fn from_base32(encoded: &str) -> Result<Self, TotpError> {
        let secret =
            Secret::try_from_base32(encoded.trim()).map_err(|_| TotpError::InvalidSecret)?;
        Self::from_bytes(secret.as_ref())
    }

    /// Wraps raw secret bytes (at least 16).
    ///
    /// # Errors
    /// [`TotpError::InvalidSecret`] if shorter than 128 bits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TotpError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(TotpError::InvalidSecret);
        }
        Ok(Self {
            bytes: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// The secret as unpadded base32, for sealing into the vault. Never log
    /// or return it except inside the enrollment URI.
    #[must_use]
    pub fn to_base32(&self) -> SecretString {
        SecretString::from(Secret::from(self.bytes.as_slice()).to_base32())
    }
}

/// What the user needs to add Latchkey to an authenticator app. Every field
/// contains the secret (the QR codes encode the URI): show it once over
/// HTTPS and drop it. `Debug` is redacted.
pub struct Enrollment {
    /// `otpauth://totp/Latchkey:<username>?secret=…&issuer=Latchkey&algorithm=SHA1&digits=6&period=30`
    pub otpauth_uri: SecretString,
    /// The URI as a QR code: a PNG image, standard base64 (no `data:` prefix).
    pub qr_png_base64: String,
    /// The URI as a QR code: a standalone SVG document.
    pub qr_svg: String,
}

impl fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrollment")
            .field("otpauth_uri", &"[redacted]")
            .field("qr_png_base64", &"[redacted]")
            .field("qr_svg", &"[redacted]")
            .finish()
    }
}

/// Builds the totp-rs generator for `secret`. `digits` is 6 in production;
/// tests use 8 for the RFC 6238 vectors.
fn generator(secret: &[u8], digits: usize, account: &str) -> Result<Totp, TotpError> {
    let digits = u8::try_from(digits).map_err(|_| TotpError::Malformed)?;
    let mut builder = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(digits)
        .with_step_duration(STEP_SECONDS)
        .with_secret(secret);
    if !account.is_empty() {
        builder = builder.with_account_name(account).with_issuer(Some(ISSUER));
    }
    builder.build().map_err(|e| match e {
        totp_rs::TotpError::InvalidAccountName { .. } | totp_rs::TotpError::AccountNameNotSet => {
            TotpError::InvalidAccountName
        }
        _ => TotpError::InvalidSecret,
    })
}

/// The `otpauth://` URI, the PNG and the SVG QR code for `username`.
///
/// totp-rs leaves out parameters equal to the defaults; we state
/// `algorithm=SHA1&digits=6&period=30` explicitly so that no app has to
/// guess.
///
/// # Errors
/// [`TotpError::InvalidAccountName`] if `username` is empty or contains
/// `:`; [`TotpError::Qr`] if drawing fails.
pub fn enrollment(username: &str, secret: &TotpSecret) -> Result<Enrollment, TotpError> {
    if username.is_empty() {
        return Err(TotpError::InvalidAccountName);
    }
    let totp = generator(&secret.bytes, DIGITS, username)?;
    let mut uri = Zeroizing::new(totp.to_url().map_err(|e| match e {
        totp_rs::TotpError::InvalidAccountName { .. } | totp_rs::TotpError::AccountNameNotSet => {
            TotpError::InvalidAccountName
        }
        _ => TotpError::InvalidSecret,
    })?);
    uri.push_str("&algorithm=SHA1&digits=6&period=30");

    // Same renderer and error-correction level as totp-rs's `qr` feature.
    let qr_png_base64 = qrcodegen_image::draw_base64(&uri).map_err(|_| TotpError::Qr)?;
    let qr = QrCode::encode_text(&uri, QrCodeEcc::Medium).map_err(|_| TotpError::Qr)?;
    let qr_svg = qr_to_svg(&qr);

    Ok(Enrollment {
        otpauth_uri: SecretString::from(uri.as_str().to_owned()),
        qr_png_base64,
        qr_svg,
    })
}

/// A standalone SVG of `qr`: one unit per module, a white background with a
/// 4-module quiet zone, and every dark module as a square in a single path.
fn qr_to_svg(qr: &QrCode) -> String {
    let size = qr.size();
    let full = size + 2 * QUIET_ZONE;
    let mut path = String::new();
    for y in 0..size {
        for x in 0..size {
            if qr.get_module(x, y) {
                if !path.is_empty() {
                    path.push(' ');
                }
                path.push_str(&format!("M{},{}h1v1h-1z", x + QUIET_ZONE, y + QUIET_ZONE));
            }
        }
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" viewBox=\"0 0 {full} {full}\" \
         width=\"{px}\" height=\"{px}\" shape-rendering=\"crispEdges\" role=\"img\" \
         aria-label=\"QR code for your authenticator app\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#FFFFFF\"/>\n\
         <path d=\"{path}\" fill=\"#000000\"/>\n\
         </svg>\n",
        px = full * 8,
    )
}

/// RFC 3339 UTC rendering of `now_unix` for error messages.
fn rfc3339(now_unix: u64) -> String {
    i64::try_from(now_unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{now_unix} (seconds since 1970-01-01T00:00:00Z)"))
}

/// Removes spaces (apps show "123 456"; people type it that way) and
/// surrounding whitespace; `None` unless exactly `digits` ASCII digits
/// remain.
fn normalize_code(code: &str, digits: usize) -> Option<Zeroizing<String>> {
    let cleaned: Zeroizing<String> =
        Zeroizing::new(code.trim().chars().filter(|c| *c != ' ').collect());
    (cleaned.len() == digits && cleaned.bytes().all(|b| b.is_ascii_digit())).then_some(cleaned)
}

/// Checks `code` at time `now_unix` (seconds since the Unix epoch, from the
/// caller's clock) against `secret`, given the last step this user had
/// accepted. Returns the accepted step, which the caller must store as the
/// new `last_used_step` before reporting success.
///
/// Each of the three candidate steps is computed and compared in constant
/// time, without stopping at a match.
///
/// # Errors
/// [`TotpError::Malformed`], [`TotpError::Invalid`] (with the server time)
/// or [`TotpError::Replayed`].
pub fn verify(
    secret: &TotpSecret,
    code: &str,
    now_unix: u64,
    last_used_step: Option<u64>,
) -> Result<u64, TotpError> {
    verify_with_digits(secret, code, DIGITS, now_unix, last_used_step)
}

fn verify_with_digits(
    secret: &TotpSecret,
    code: &str,
    digits: usize,
    now_unix: u64,
    last_used_step: Option<u64>,
) -> Result<u64, TotpError> {
    let code = normalize_code(code, digits).ok_or(TotpError::Malformed)?;
    let totp = generator(&secret.bytes, digits, "")?;

    let current = now_unix / STEP_SECONDS;
    let first = current.saturating_sub(SKEW_STEPS);
    // Only steps whose start time is representable: past it, the time
    // below would saturate to the current step's and a step whose code
    // differs would be reported as accepted (found by fuzzing).
    let last = current
        .saturating_add(SKEW_STEPS)
        .min(u64::MAX / STEP_SECONDS);

    let mut accepted_step = 0u64;
    let mut accepted = Choice::from(0);
    let mut replayed = Choice::from(0);
    for step in first..=last {
        let expected = Zeroizing::new(totp.generate(step.saturating_mul(STEP_SECONDS)).to_string());
        let matches = expected.as_bytes().ct_eq(code.as_bytes());
        let fresh = match last_used_step {
            Some(used) => step.ct_gt(&used),
            None => Choice::from(1),
        };
        let ok = matches & fresh;
        // Ascending order: a later fresh match wins.
        accepted_step.conditional_assign(&step, ok);
        accepted |= ok;
        replayed |= matches & !fresh;
    }

    if bool::from(accepted) {
        Ok(accepted_step)
    } else if bool::from(replayed) {
        Err(TotpError::Replayed)
    } else {
        Err(TotpError::Invalid {
            server_time_utc: rfc3339(now_unix),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use secrecy::ExposeSecret as _;

    const RFC_SEED: &[u8] = b"12345678901234567890";

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(RFC_SEED).unwrap()
    }

    /// The 6-digit code for `time`, via totp-rs directly.
    fn code_at(secret: &TotpSecret, time: u64) -> String {
        generator(&secret.bytes, DIGITS, "")
            .unwrap()
            .generate(time)
            .to_string()
    }

    #[test]
    fn rfc6238_appendix_b_sha1_vectors() {
        let secret = rfc_secret();
        let totp = generator(&secret.bytes, 8, "").unwrap();
        let vectors: [(u64, &str); 6] = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        for (time, expected) in vectors {
            assert_eq!(totp.generate(time).to_string(), expected, "T={time}");
            // And through our own verification path, with 8 digits.
            assert_eq!(
                verify_with_digits(&secret, expected, 8, time, None),
                Ok(time / 30),
                "T={time}"
            );
        }
    }

    #[test]
    fn six_digit_codes_are_the_last_six_of_the_rfc_vectors() {
        // Dynamic truncation mod 10^6 is the low 6 digits of mod 10^8.
        let secret = rfc_secret();
        assert_eq!(code_at(&secret, 59), "287082");
        assert_eq!(verify(&secret, "287082", 59, None), Ok(1));
        assert_eq!(code_at(&secret, 1_111_111_109), "081804");
    }

    #[test]
    fn accepts_current_code_and_returns_its_step() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_015;
        let code = code_at(&secret, now);
        assert_eq!(verify(&secret, &code, now, None), Ok(now / 30));
    }

    #[test]
    fn skew_of_one_step_is_accepted_either_way() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_010; // step 56_666_667
        let step = now / 30;
        // The phone is 30 s behind: its code is for the previous step.
        let behind = code_at(&secret, now - 30);
        assert_eq!(verify(&secret, &behind, now, None), Ok(step - 1));
        // The phone is 30 s ahead.
        let ahead = code_at(&secret, now + 30);
        assert_eq!(verify(&secret, &ahead, now, None), Ok(step + 1));
    }

    #[test]
    fn skew_of_two_steps_is_refused_with_server_time() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_010;
        for other in [now - 60, now + 60] {
            let code = code_at(&secret, other);
            // Guard against the 1-in-a-million coincidence with a nearby step.
            if (now - 30..=now + 30)
                .step_by(30)
                .any(|t| code_at(&secret, t) == code)
            {
                continue;
            }
            let err = verify(&secret, &code, now, None).unwrap_err();
            assert_eq!(
                err,
                TotpError::Invalid {
                    server_time_utc: "2023-11-14T22:13:30Z".to_owned()
                }
            );
            let message = err.to_string();
            assert!(message.contains("2023-11-14T22:13:30Z"), "{message}");
            assert!(message.contains("clock"), "{message}");
        }
    }

    #[test]
    fn wrong_code_is_refused() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_010;
        let window: Vec<String> = [now - 30, now, now + 30]
            .iter()
            .map(|&t| code_at(&secret, t))
            .collect();
        // The nearest six-digit numbers above the current code that are not
        // valid anywhere in the window.
        let good: u32 = window[1].parse().unwrap();
        let wrong = (1..)
            .map(|d| format!("{:06}", (good + d) % 1_000_000))
            .find(|c| !window.contains(c))
            .unwrap();
        assert!(matches!(
            verify(&secret, &wrong, now, None),
            Err(TotpError::Invalid { .. })
        ));
        // The right code for another secret.
        let other = TotpSecret::generate();
        let foreign = code_at(&other, now);
        if !window.contains(&foreign) {
            assert!(matches!(
                verify(&secret, &foreign, now, None),
                Err(TotpError::Invalid { .. })
            ));
        }
        // All zeros, a classic guess.
        if !window.iter().any(|c| c == "000000") {
            assert!(verify(&secret, "000000", now, None).is_err());
        }
    }

    #[test]
    fn replay_of_an_accepted_code_is_refused() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_010;
        let code = code_at(&secret, now);
        let step = verify(&secret, &code, now, None).unwrap();
        // Same code again, same moment or a few seconds later.
        assert_eq!(
            verify(&secret, &code, now, Some(step)),
            Err(TotpError::Replayed)
        );
        assert_eq!(
            verify(&secret, &code, now + 25, Some(step)),
            Err(TotpError::Replayed)
        );
        // An older still-in-window code after a newer one was used.
        let previous = code_at(&secret, now - 30);
        if previous != code {
            assert_eq!(
                verify(&secret, &previous, now, Some(step)),
                Err(TotpError::Replayed)
            );
        }
        // The next step's code is fine.
        let next = code_at(&secret, now + 30);
        assert_eq!(verify(&secret, &next, now + 30, Some(step)), Ok(step + 1));
    }

    #[test]
    fn replayed_ahead_code_then_current_code_is_refused() {
        // A phone 30 s fast used step s+1; the real-time code for step s is
        // now older than the last used step and must not work.
        let secret = TotpSecret::generate();
        let now = 1_700_000_010;
        let step = now / 30;
        let ahead = code_at(&secret, now + 30);
        assert_eq!(verify(&secret, &ahead, now, None), Ok(step + 1));
        let current = code_at(&secret, now);
        if current != ahead {
            assert_eq!(
                verify(&secret, &current, now, Some(step + 1)),
                Err(TotpError::Replayed)
            );
        }
    }

    #[test]
    fn format_is_strict_but_spaces_are_forgiven() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_010;
        let code = code_at(&secret, now);
        let spaced = format!("  {} {}\n", &code[..3], &code[3..]);
        assert_eq!(verify(&secret, &spaced, now, None), Ok(now / 30));
        for bad in [
            "",
            "12345",
            "1234567",
            "12345a",
            "+12345",
            "-12345",
            "１２３４５６", // full-width digits
            "12-345",
            "123456789012345678901234567890",
        ] {
            assert_eq!(
                verify(&secret, bad, now, None),
                Err(TotpError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            TotpError::Malformed.to_string(),
            "the code must be exactly 6 digits"
        );
    }

    #[test]
    fn the_accepted_step_is_the_codes_own_at_the_end_of_time() {
        // Fuzzing (core/fuzz `second_factor`) found: at now = u64::MAX the
        // window's next step saturated to the current step's time, so the
        // current code came back as "accepted for the next step".
        let secret = rfc_secret();
        let now = u64::MAX;
        let current = now / STEP_SECONDS;
        let code = code_at(&secret, current * STEP_SECONDS);
        assert_eq!(verify(&secret, &code, now, None), Ok(current));
        assert_eq!(
            verify(&secret, &code, now, Some(current)),
            Err(TotpError::Replayed)
        );
    }

    #[test]
    fn works_at_the_start_of_time() {
        let secret = rfc_secret();
        let code = code_at(&secret, 0);
        assert_eq!(verify(&secret, &code, 0, None), Ok(0));
        assert_eq!(verify(&secret, &code, 0, Some(0)), Err(TotpError::Replayed));
        // A far-future time does not overflow.
        let code = code_at(&secret, u64::MAX - 100);
        assert!(verify(&secret, &code, u64::MAX - 100, None).is_ok());
        assert!(rfc3339(u64::MAX).contains("seconds since"));
    }

    #[test]
    fn secret_is_160_random_bits_and_round_trips_through_base32() {
        let a = TotpSecret::generate();
        let b = TotpSecret::generate();
        assert_eq!(a.bytes.len(), 20);
        assert_ne!(*a.bytes, *b.bytes);
        let exported = a.to_base32();
        assert_eq!(exported.expose_secret().len(), 32); // 160 bits / 5
        let back = TotpSecret::from_base32(exported.expose_secret()).unwrap();
        assert_eq!(*back.bytes, *a.bytes);
        assert_eq!(
            TotpSecret::from_base32("not base32!").unwrap_err(),
            TotpError::InvalidSecret
        );
        // 80 bits is below RFC 4226's minimum.
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQ").unwrap_err(),
            TotpError::InvalidSecret
        );
    }

    #[test]
    fn debug_is_redacted() {
        let secret = TotpSecret::generate();
        let b32 = secret.to_base32().expose_secret().to_owned();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "TotpSecret([redacted])");
        let e = enrollment("alice", &secret).unwrap();
        let debug = format!("{e:?}");
        assert!(!debug.contains(&b32), "{debug}");
        assert!(!debug.contains("otpauth://"), "{debug}");
    }

    #[test]
    fn otpauth_uri_has_what_authenticator_apps_expect() {
        let secret = TotpSecret::generate();
        let b32 = secret.to_base32().expose_secret().to_owned();
        let e = enrollment("alice@example.org", &secret).unwrap();
        let uri = e.otpauth_uri.expose_secret();
        assert!(
            uri.starts_with("otpauth://totp/Latchkey:alice%40example.org?"),
            "{uri}"
        );
        let query = uri.split_once('?').unwrap().1;
        let params: Vec<&str> = query.split('&').collect();
        for expected in [
            format!("secret={b32}"),
            "issuer=Latchkey".to_owned(),
            "algorithm=SHA1".to_owned(),
            "digits=6".to_owned(),
            "period=30".to_owned(),
        ] {
            assert!(params.contains(&expected.as_str()), "{expected} in {uri}");
        }
        // An independent parser (totp-rs's) reads it back to the same
        // generator.
        let parsed = Totp::from_url(uri).unwrap();
        assert_eq!(parsed.issuer(), Some("Latchkey"));
        assert_eq!(parsed.account_name(), "alice@example.org");
        assert_eq!(parsed.digits(), 6);
        assert_eq!(parsed.step(), 30);
        assert_eq!(parsed.algorithm(), Algorithm::SHA1);
        assert_eq!(parsed.secret().as_ref(), secret.bytes.as_slice());
    }

    #[test]
    fn usernames_that_cannot_be_labels_are_refused() {
        let secret = TotpSecret::generate();
        assert_eq!(
            enrollment("", &secret).unwrap_err(),
            TotpError::InvalidAccountName
        );
        assert_eq!(
            enrollment("a:b", &secret).unwrap_err(),
            TotpError::InvalidAccountName
        );
    }

    /// Decodes the PNG and checks that it shows exactly the QR matrix of the
    /// URI (the same matrix the SVG is drawn from). Reading the QR symbol
    /// back into text needs a QR decoder, which this workspace does not
    /// have; the end-to-end tests do that with `zbarimg`.
    #[test]
    fn png_and_svg_show_the_qr_code_of_the_uri() {
        use base64::Engine as _;

        let secret = TotpSecret::generate();
        let e = enrollment("alice", &secret).unwrap();
        let png_bytes = base64::engine::general_purpose::STANDARD
            .decode(&e.qr_png_base64)
            .unwrap();
        assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");

        let qr = QrCode::encode_text(e.otpauth_uri.expose_secret(), QrCodeEcc::Medium).unwrap();
        let size = qr.size();

        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0u8; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        // 8 pixels per module and a 4-module quiet zone on each side.
        let side = u32::try_from(size * 8 + 64).unwrap();
        assert_eq!((info.width, info.height), (side, side));
        let px = |x: i32, y: i32| {
            pixels[usize::try_from(y).unwrap() * info.line_size + usize::try_from(x).unwrap()]
        };
        for y in 0..size {
            for x in 0..size {
                let centre = px(32 + x * 8 + 4, 32 + y * 8 + 4);
                assert_eq!(centre == 0, qr.get_module(x, y), "module {x},{y}");
            }
        }
        // The quiet zone is white.
        assert!((0..side).all(|i| px(i32::try_from(i).unwrap(), 0) == 255));

        // The SVG draws the same dark modules, offset by the quiet zone.
        let svg = &e.qr_svg;
        let full = size + 8;
        assert!(
            svg.contains(&format!("viewBox=\"0 0 {full} {full}\"")),
            "{svg}"
        );
        assert!(svg.contains("shape-rendering=\"crispEdges\""));
        assert!(svg.contains("<rect width=\"100%\" height=\"100%\" fill=\"#FFFFFF\"/>"));
        let d = svg
            .split("<path d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let mut drawn = std::collections::HashSet::new();
        for square in d.split(' ') {
            let coords = square
                .strip_prefix('M')
                .unwrap()
                .strip_suffix("h1v1h-1z")
                .unwrap();
            let (x, y) = coords.split_once(',').unwrap();
            drawn.insert((x.parse::<i32>().unwrap() - 4, y.parse::<i32>().unwrap() - 4));
        }
        let dark: std::collections::HashSet<_> = (0..size)
            .flat_map(|y| (0..size).map(move |x| (x, y)))
            .filter(|&(x, y)| qr.get_module(x, y))
            .collect();
        assert_eq!(drawn, dark);
    }
}
