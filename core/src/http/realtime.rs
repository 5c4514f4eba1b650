//! `/api/realtime/sessions`: the realtime (WebSocket) sessions open
//! through the proxy (`crate::proxy::realtime`).
//!
//! - `GET`: administrators (and keys with `admin`) see everyone's; anyone
//!   else who may manage their own keys sees their own (like
//!   `GET /api/usage`).
//! - `DELETE /api/realtime/sessions/{id}`: an administrator ends one; the
//!   client gets close 4002 "ended by an administrator", the upstream
//!   1001. Audited `realtime.end`.

use super::AppState;
use super::authn::Authenticated;
use super::error::ApiError;
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::AuthError;
use crate::auth::scope::{Permission, Scope};
use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

/// `GET /api/realtime/sessions`.
pub async fn list(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<Value>, ApiError> {
    let everyone = who.require_permission(Permission::ReadAudit).is_ok();
    if !everyone {
        who.require_permission(Permission::ManageOwnKeys)?;
    }
    let user = (!everyone).then_some(who.0.user_id);
    Ok(Json(json!({ "sessions": state.proxy.realtime.list(user) })))
}

/// `DELETE /api/realtime/sessions/{id}`.
pub async fn end(
    State(state): State<AppState>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    who.require(&Scope::Admin)?;
    let Some(view) = state.proxy.realtime.end(&id) else {
        return Err(ApiError::Auth(AuthError::NotFound("realtime session")));
    };
    let event = AuditEvent::new(who.0.actor(), "realtime.end", Outcome::Success)
        .target(view.id.clone())
        .detail(format!(
            "{} of {} (key {})",
            view.provider, view.user, view.key_id
        ));
    let store = std::sync::Arc::clone(state.vault.store());
    let written = tokio::task::spawn_blocking(move || audit::append(&store, event)).await;
    if !matches!(written, Ok(Ok(_))) {
        tracing::warn!("could not audit the end of a realtime session");
    }
    Ok(Json(json!({ "ended": view.id })))
}
