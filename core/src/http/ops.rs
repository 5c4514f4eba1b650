//! Operations endpoints: liveness, readiness, metrics, status.

use super::error::ApiError;
use super::extract::{bearer, ct_str_eq};
use super::{AppState, ReadyCheck};
use crate::config::MetricsAccess;
use crate::store::META;
use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use redb::ReadableDatabase;
use serde::Serialize;
use serde_json::json;
use std::net::SocketAddr;

/// `GET /health`: the process is up and answering.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

#[derive(Debug, Serialize)]
struct Readiness {
    status: &'static str,
    checks: Vec<ReadyCheck>,
}

/// `GET /ready`: 200 when every check passes, 503 otherwise.
pub async fn ready(State(state): State<AppState>) -> Response {
    let mut checks = vec![database_check(&state), vault_check(&state)];
    checks.extend(state.host.readiness_checks());
    let all_ok = checks.iter().all(|c| c.ok);
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if all_ok { "ready" } else { "not_ready" },
        checks,
    };
    (status, Json(body)).into_response()
}

fn database_check(state: &AppState) -> ReadyCheck {
    // A read transaction on the meta table proves the file is open and
    // readable; it takes no lock writers wait on.
    let res = state
        .vault
        .store()
        .db()
        .begin_read()
        .map_err(|e| e.to_string())
        .and_then(|txn| txn.open_table(META).map(drop).map_err(|e| e.to_string()));
    match res {
        Ok(()) => ReadyCheck::pass("database"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            ReadyCheck::fail("database", "the database cannot be read")
        }
    }
}

fn vault_check(state: &AppState) -> ReadyCheck {
    if state.vault.is_sealed() {
        ReadyCheck::fail(
            "vault",
            "the vault is sealed; unseal it with `latchkey unseal`",
        )
    } else {
        ReadyCheck::pass("vault")
    }
}

/// `GET /metrics`: Prometheus text, if `metrics.access` allows this caller.
pub async fn metrics(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let m = &state.settings.metrics;
    match m.access {
        // As if the endpoint did not exist.
        MetricsAccess::Off => return Err(ApiError::RouteNotFound),
        MetricsAccess::Loopback => {
            let loopback = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|ConnectInfo(peer)| is_loopback(peer));
            if !loopback {
                return Err(ApiError::Forbidden);
            }
        }
        MetricsAccess::Token => {
            let ok = match (bearer(req.headers()), m.token.as_deref()) {
                (Some(given), Some(want)) => ct_str_eq(given, want),
                _ => false,
            };
            if !ok {
                return Err(ApiError::Unauthorized);
            }
        }
    }
    let text = state.metrics.render(state.vault.is_sealed());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn is_loopback(peer: &SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        // `::ffff:127.0.0.1` from a dual-stack socket is loopback too.
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// `GET /api/status`.
pub async fn status(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let vault = state.vault.clone();
    let (initialized, stored_source) =
        tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            Ok((vault.is_initialized()?, vault.stored_source()?))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let configured = state.source().kind_name();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "sealed": state.vault.is_sealed(),
        "initialized": initialized,
        "master_key_source": stored_source.unwrap_or_else(|| configured.to_string()),
        "tls": state.host.tls_info(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_peers() {
        for p in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            assert!(is_loopback(&p.parse().expect("addr")), "{p}");
        }
        for p in ["10.0.0.1:1", "[fe80::1]:1", "[::ffff:10.0.0.1]:1"] {
            assert!(!is_loopback(&p.parse().expect("addr")), "{p}");
        }
    }
}
