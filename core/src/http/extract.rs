//! Extractors whose rejections are [`ApiError`]s, so a bad request gets our
//! error shape rather than axum's plain-text defaults; and the host's
//! admin-token verifier (see [`super::authn`] for who may use it).

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, OptionalFromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A JSON request body. Wrong content type → 415, too large → 413, not
/// JSON → 400 `malformed_json`, wrong shape → 400 `invalid_request` naming
/// the field. Error texts never quote the submitted values (they may be
/// secrets typed into the wrong field).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = req
            .extensions()
            .get::<super::middleware::BodyLimit>()
            .map_or(0, |l| l.0);
        // `Bytes` honours the router's `DefaultBodyLimit`.
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| body_error(&rejection, limit))?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// `Option<ApiJson<T>>`: an empty body is `None` (for endpoints whose body
/// is optional); anything else must be valid JSON of `T`.
impl<T, S> OptionalFromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let json = is_json(req.headers());
        let limit = req
            .extensions()
            .get::<super::middleware::BodyLimit>()
            .map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| body_error(&rejection, limit))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json(&bytes).map(|v| Some(ApiJson(v)))
    }
}

fn body_error(rejection: &BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::bad_request("malformed_body", "the request body could not be read")
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence[..essence.len() - 5].starts_with("application/")
            && essence.to_ascii_lowercase().ends_with("+json"))
}

/// Parses `bytes` as `T` with errors that name the path of the bad field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(&path, &e.into_inner())
    })?;
    // Trailing bytes after the value are a syntax error too.
    de.end().map_err(|e| json_error("", &e))?;
    Ok(value)
}

fn json_error(path: &str, inner: &serde_json::Error) -> ApiError {
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            ApiError::bad_request(
                "malformed_json",
                format!(
                    "the request body is not valid JSON (line {}, column {})",
                    inner.line(),
                    inner.column()
                ),
            )
        }
        serde_json::error::Category::Data | serde_json::error::Category::Io => {
            let what = describe_data_error(&inner.to_string());
            let message = if path == "." || path.is_empty() {
                format!("the request body has the wrong shape: {what}")
            } else {
                format!("`{path}`: {what}")
            };
            ApiError::bad_request("invalid_request", message)
        }
    }
}

/// serde's messages quote the offending value for type errors (`invalid
/// type: string "…"`); keep only what was expected.
fn describe_data_error(msg: &str) -> String {
    // Drop serde_json's " at line L column C" suffix.
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
        match msg.split_once(", expected ") {
            Some((_, expected)) => format!("wrong type or value, expected {expected}"),
            None => "wrong type or value".to_string(),
        }
    } else if msg.starts_with("invalid length") {
        "wrong number of elements".to_string()
    } else {
        // missing field / unknown field / unknown variant: these quote field
        // and variant names from our own schema, never submitted values…
        // except `unknown variant`, which quotes the submitted string.
        match msg.strip_prefix("unknown variant ") {
            Some(rest) => match rest.split_once(", expected ") {
                Some((_, expected)) => format!("unknown value, expected {expected}"),
                None => "unknown value".to_string(),
            },
            None => msg.to_string(),
        }
    }
}

/// A query string parsed into `T`; an absent query is `T::default()`.
/// Bad queries get our error shape (400 `invalid_request`) without
/// echoing values. Query strings never carry secrets: nothing secret is
/// ever accepted here.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let Some(q) = parts.uri.query().filter(|q| !q.is_empty()) else {
            return Ok(ApiQuery(T::default()));
        };
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(q));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let what = describe_data_error(&e.into_inner().to_string());
                ApiError::bad_request("invalid_request", format!("query `{path}`: {what}"))
            })
    }
}

fn form_urlencoded_parse(q: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(q.as_bytes())
}

/// Checks a presented bearer token. The auth issue replaces the one
/// implementation here with sessions and API keys.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify(&self, presented: &str) -> bool;
}

/// One fixed token (the appliance's `DATA_DIR/admin.token`).
///
/// Only the SHA-256 of the token is kept; comparing digests in constant
/// time also hides the token's length.
pub struct StaticToken {
    digest: [u8; 32],
}

impl StaticToken {
    pub fn new(token: &str) -> Self {
        StaticToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

impl TokenVerifier for StaticToken {
    fn verify(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(d.ct_eq(&self.digest))
    }
}

/// Constant-time equality of two strings of possibly different lengths.
pub(crate) fn ct_str_eq(a: &str, b: &str) -> bool {
    let da: [u8; 32] = Sha256::digest(a.as_bytes()).into();
    let db: [u8; 32] = Sha256::digest(b.as_bytes()).into();
    bool::from(da.ct_eq(&db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        replace: Option<bool>,
    }

    #[test]
    fn type_errors_do_not_echo_values() {
        let err = parse_json::<Body>(br#"{"name":"x","replace":"hunter2-secret"}"#)
            .expect_err("wrong type");
        let msg = err.to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("replace"), "{msg}");
    }

    #[test]
    fn syntax_and_shape() {
        let err = parse_json::<Body>(b"{not json").expect_err("syntax");
        assert_eq!(err.status_and_code().1, "malformed_json");
        let err = parse_json::<Body>(br#"{"nme":"x"}"#).expect_err("unknown");
        assert_eq!(err.status_and_code().1, "invalid_request");
        let err = parse_json::<Body>(br#"{"name":"x"} trailing"#).expect_err("trailing");
        assert_eq!(err.status_and_code().1, "malformed_json");
    }

    #[test]
    fn tokens() {
        let t = StaticToken::new("abc123");
        assert!(t.verify("abc123"));
        assert!(!t.verify("abc124"));
        assert!(!t.verify(""));
        assert!(!format!("{t:?}").contains("abc"));
    }
}
