//! `GET /api/audit` (admin: `ReadAudit`, for keys the `admin` scope):
//! newest first, filtered, paged with `before`.

use super::AppState;
use super::authn::Authenticated;
use super::error::ApiError;
use super::extract::ApiQuery;
use crate::audit::{self, AuditEvent, AuditQuery};
use crate::auth::scope::Permission;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Serialize)]
pub struct Page {
    pub events: Vec<AuditEvent>,
    /// Pass as `before` for the next (older) page; `null` at the end.
    pub next_before: Option<u64>,
}

/// `GET /api/audit?actor=&action=&outcome=&before=&after=&limit=`.
pub async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Page>, ApiError> {
    who.require_permission(Permission::ReadAudit)?;
    let store = Arc::clone(state.auth.store());
    let tailing = q.after.is_some();
    let limit = q.limit.unwrap_or(100).clamp(1, audit::MAX_PAGE);
    let events = tokio::task::spawn_blocking(move || audit::query(&store, &q))
        .await
        .map_err(|e| ApiError::Internal(format!("audit task failed: {e}")))??;
    let next_before = if tailing || events.len() < limit {
        None
    } else {
        events.last().map(|e| e.seq)
    };
    Ok(Json(Page {
        events,
        next_before,
    }))
}
