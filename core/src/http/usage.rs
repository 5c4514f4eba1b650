//! `GET /api/usage`: proxy usage totals by day, key, provider and model.
//!
//! Administrators (and keys with `admin`) see everyone's; anyone else who
//! may manage their own keys (people, keys with `keys:manage`) sees the
//! totals of their own keys.

use super::AppState;
use super::authn::Authenticated;
use super::error::ApiError;
use crate::auth::scope::Permission;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

pub async fn list(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<Value>, ApiError> {
    let rows = if who.require_permission(Permission::ReadAudit).is_ok() {
        state.proxy.usage.rows(None)
    } else {
        who.require_permission(Permission::ManageOwnKeys)?;
        state.proxy.usage.rows(Some(who.0.user_id))
    };
    Ok(Json(json!({ "usage": rows })))
}
