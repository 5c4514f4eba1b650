//! What the fuzz targets in `core/fuzz/` need that is not public API: thin
//! wrappers around crate-private parsers, compiled only with the
//! off-by-default `fuzzing` feature. Nothing else may depend on this
//! module; it changes whenever the targets need it to.

use crate::connections::{CallbackParams, ConnectionError};
use crate::vault::keys::KeyError;
use crate::vault::{DataKey, EnvelopeError, Kind, RecordId};
use age::secrecy::SecretString;
use axum::http::HeaderMap;

/// [`crate::proxy::json_scan::members`]: every member of one JSON object.
pub fn json_members<'a>(json: &'a [u8], each: impl FnMut(&'a [u8], &'a [u8])) -> bool {
    crate::proxy::json_scan::members(json, each)
}

/// [`crate::proxy::json_scan::count`]: a plain non-negative JSON integer.
pub fn json_count(value: &[u8]) -> Option<u64> {
    crate::proxy::json_scan::count(value)
}

/// [`crate::proxy::json_scan::string`]: a JSON string, decoded.
pub fn json_string(value: &[u8]) -> Option<String> {
    crate::proxy::json_scan::string(value)
}

/// [`crate::net::path::check_path`] without its shortcut for plain paths.
pub fn check_path_thoroughly(raw: &str) -> Result<(), crate::net::path::PathError> {
    crate::net::path::check_path_thoroughly(raw)
}

/// The token of `Authorization: Bearer …`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    crate::net::headers::bearer(headers)
}

/// The OAuth binding cookie's value (`__Host-latchkey-oauth`).
pub fn binding_cookie(headers: &HeaderMap) -> Option<&str> {
    crate::http::connections::binding_cookie(headers)
}

/// The OAuth callback's query parameters (each at most once).
pub fn callback_params(query: Option<&str>) -> Result<CallbackParams, ConnectionError> {
    crate::http::connections::callback_params(query)
}

/// Seals a record's envelope.
pub fn envelope_seal(
    key: &DataKey,
    id: RecordId,
    kind: Kind,
    secret: &str,
) -> Result<Vec<u8>, KeyError> {
    crate::vault::envelope_seal(key, id, kind, secret)
}

/// Opens a record's envelope.
pub fn envelope_open(
    key: &DataKey,
    id: RecordId,
    kind: Kind,
    ciphertext: &[u8],
) -> Result<SecretString, EnvelopeError> {
    crate::vault::envelope_open(key, id, kind, ciphertext)
}

/// Seals a non-record value bound to `context`.
pub fn envelope_seal_context(
    key: &DataKey,
    context: &str,
    secret: &str,
) -> Result<Vec<u8>, KeyError> {
    crate::vault::envelope_seal_context(key, context, secret)
}

/// Opens a non-record value bound to `context`.
pub fn envelope_open_context(
    key: &DataKey,
    context: &str,
    ciphertext: &[u8],
) -> Result<SecretString, EnvelopeError> {
    crate::vault::envelope_open_context(key, context, ciphertext)
}

/// [`crate::http::origin::plain_authority`]: a `Host` or
/// `X-Forwarded-Host` value as the origin check uses it.
pub fn origin_authority(value: &str) -> Option<String> {
    crate::http::origin::plain_authority(value)
}

/// [`crate::http::origin::forwarded`]: the value of a forwarding header
/// the proxy next to us set.
pub fn forwarded_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    crate::http::origin::forwarded(headers, name)
}
