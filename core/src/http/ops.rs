//! Operations endpoints: liveness, readiness, metrics, status.

use super::authn::Authenticated;
use super::error::ApiError;
use super::extract::ct_str_eq;
use super::{AppState, ReadyCheck};
use crate::auth::scope::Scope;
use crate::config::MetricsAccess;
use crate::net::headers::bearer;
use crate::store::META;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

/// `GET /health`: the process is up and answering.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// What `/ready` reports: every check, and whether all pass. The one
/// readiness rule: `GET /ready` answers with it, and the appliance tells
/// systemd `READY=1` only when [`Readiness::is_ready`] holds.
#[derive(Debug, Serialize)]
pub struct Readiness {
    status: &'static str,
    checks: Vec<ReadyCheck>,
}

impl Readiness {
    /// Whether every check passes (warnings count as passing).
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The checks, in `/ready`'s order.
    pub fn checks(&self) -> &[ReadyCheck] {
        &self.checks
    }

    /// One line for a person or a service manager's status: `ready`, or
    /// the failing checks with their details.
    pub fn summary(&self) -> String {
        let failing: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| match &c.detail {
                Some(d) => format!("{}: {d}", c.name),
                None => c.name.to_string(),
            })
            .collect();
        if failing.is_empty() {
            "ready".to_string()
        } else {
            format!("not ready ({})", failing.join("; "))
        }
    }
}

/// Runs the readiness checks: the database answers a read, the vault is
/// unsealed, the clock is plausible (a warning only), and the host's own
/// checks (certificates). Cheap: one read transaction, no I/O beyond it.
pub fn readiness(state: &AppState) -> Readiness {
    let mut checks = vec![database_check(state), vault_check(state), clock_check_now()];
    checks.extend(state.host.readiness_checks());
    let status = if checks.iter().all(|c| c.ok) {
        "ready"
    } else {
        "not_ready"
    };
    Readiness { status, checks }
}

/// `GET /ready`: 200 when every check passes, 503 otherwise.
pub async fn ready(State(state): State<AppState>) -> Response {
    let body = readiness(&state);
    let status = if body.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

fn database_check(state: &AppState) -> ReadyCheck {
    // A read transaction on the meta table proves the file is open and
    // readable; it takes no lock writers wait on.
    let res = state
        .vault
        .store()
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

/// When this binary was built (unix seconds; see `build.rs`).
pub const BUILD_UNIX: i64 = match i64::from_str_radix(env!("LATCHKEY_BUILD_UNIX"), 10) {
    Ok(t) => t,
    Err(_) => 0,
};

/// How far past the build time a clock may be before it looks wrong: no
/// release stays in service for 20 years.
const MAX_AGE_SECS: i64 = 20 * 365 * 86400;

/// What is visibly wrong with the clock reading `now`, if anything: before
/// this binary was built, or absurdly far after. TOTP codes and every
/// expiry depend on it.
pub fn clock_problem(now: i64, built: i64) -> Option<String> {
    if now < built {
        Some(format!(
            "the system clock reads {now} (unix time), before this build ({built}); TOTP codes \
             and expiries will be wrong — fix the time (NTP)"
        ))
    } else if now - built > MAX_AGE_SECS {
        Some(format!(
            "the system clock reads {now} (unix time), decades after this build ({built}); TOTP \
             codes and expiries will be wrong — fix the time (NTP)"
        ))
    } else {
        None
    }
}

/// The `clock` readiness check: a warning only (still ok), since the
/// server works, if badly.
fn clock_check_now() -> ReadyCheck {
    match clock_problem(crate::auth::service::now(), BUILD_UNIX) {
        None => ReadyCheck::pass("clock"),
        Some(detail) => ReadyCheck::warn("clock", detail),
    }
}

/// `GET /metrics`: Prometheus text, if `metrics.access` allows this caller.
pub async fn metrics(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let m = &state.settings.metrics;
    match m.access {
        // As if the endpoint did not exist.
        MetricsAccess::Off => return Err(ApiError::RouteNotFound),
        MetricsAccess::Loopback => {
            // A loopback peer that relays for someone else does not count.
            if !super::authn::from_host(&state, req.headers(), req.extensions()) {
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

/// `GET /api/status` (admin).
pub async fn status(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    who.require(&Scope::Admin)?;
    let vault = state.vault.clone();
    let (initialized, stored_source) =
        tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            Ok((vault.is_initialized()?, vault.stored_source()?))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let configured = state.source().kind_name();
    Ok(Json(json!({
        "version": crate::update::version(),
        "sealed": state.vault.is_sealed(),
        "initialized": initialized,
        "master_key_source": stored_source.unwrap_or_else(|| configured.to_string()),
        "tls": state.host.tls_info(),
        "update": state.updates.status(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_checks() {
        const { assert!(BUILD_UNIX > 1_600_000_000, "build time is recorded") };
        assert!(clock_problem(BUILD_UNIX + 10, BUILD_UNIX).is_none());
        assert!(clock_problem(BUILD_UNIX - 10, BUILD_UNIX).is_some());
        assert!(clock_problem(BUILD_UNIX + 30 * 365 * 86400, BUILD_UNIX).is_some());
    }
}
