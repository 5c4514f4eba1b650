//! `GET /api/usage`: proxy usage totals by day, key, provider and model,
//! from `usage_daily` plus what is counted but not yet written.
//!
//! Administrators (and keys with `admin`) see everyone's; anyone else who
//! may manage their own keys (people, keys with `keys:manage`) sees the
//! totals of their own keys only (a filter on someone else's key is simply
//! empty, so it reveals nothing).
//!
//! Query: `from`, `to` (`YYYY-MM-DD`, UTC, inclusive; default the last 31
//! days up to today; at most [`MAX_DAYS`] days), `key`, `provider`,
//! `model` (exact matches).

use super::AppState;
use super::authn::{Authenticated, blocking};
use super::error::ApiError;
use super::extract::ApiQuery;
use crate::auth::scope::Permission;
use crate::proxy::usage::{UsageQuery, day_of};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use time::Date;
use time::macros::format_description;

/// Longest range one request may ask for, in days.
pub const MAX_DAYS: i64 = 366;
/// Days shown when `from` is not given (today and the 30 before).
const DEFAULT_DAYS: i64 = 31;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    from: Option<String>,
    to: Option<String>,
    key: Option<String>,
    provider: Option<String>,
    model: Option<String>,
}

fn parse_day(field: &'static str, v: &str) -> Result<Date, ApiError> {
    Date::parse(v, format_description!("[year]-[month]-[day]")).map_err(|_| {
        ApiError::bad_request(
            "invalid_field",
            format!("`{field}`: a UTC day as YYYY-MM-DD, e.g. 2026-01-31"),
        )
    })
}

/// The checked day range, as `YYYY-MM-DD` strings.
fn range(f: &Filters, today: &str) -> Result<(String, String), ApiError> {
    let to = parse_day("to", f.to.as_deref().unwrap_or(today))?;
    let from = match &f.from {
        Some(v) => parse_day("from", v)?,
        None => to
            .checked_sub(time::Duration::days(DEFAULT_DAYS - 1))
            .unwrap_or(Date::MIN),
    };
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_field",
            "`from`: must not be after `to`",
        ));
    }
    if (to - from).whole_days() >= MAX_DAYS {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("`from`: at most {MAX_DAYS} days from `from` to `to`"),
        ));
    }
    Ok((from.to_string(), to.to_string()))
}

pub async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(f): ApiQuery<Filters>,
) -> Result<Json<Value>, ApiError> {
    let admin = who.require_permission(Permission::ReadAudit).is_ok();
    if !admin {
        who.require_permission(Permission::ManageOwnKeys)?;
    }
    let (from, to) = range(&f, &day_of(crate::auth::service::now()))?;
    // Which keys are the caller's: from the keys table, so a user never
    // sees another's totals, whoever made them.
    let keys = if admin {
        None
    } else {
        let p = who.0;
        let own = blocking(&state.auth, move |a| a.list_keys(&p, false)).await?;
        Some(own.into_iter().map(|k| k.id).collect::<HashSet<_>>())
    };
    let q = UsageQuery {
        from: from.clone(),
        to: to.clone(),
        keys,
        key: f.key,
        provider: f.provider,
        model: f.model,
    };
    let proxy = Arc::clone(&state.proxy);
    let rows = tokio::task::spawn_blocking(move || proxy.usage.query(&proxy.store, &q))
        .await
        .map_err(|e| ApiError::Internal(format!("usage task failed: {e}")))??;
    Ok(Json(json!({ "from": from, "to": to, "usage": rows })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(from: Option<&str>, to: Option<&str>) -> Filters {
        Filters {
            from: from.map(Into::into),
            to: to.map(Into::into),
            ..Filters::default()
        }
    }

    #[test]
    fn ranges() {
        let today = "2026-11-22";
        assert_eq!(
            range(&f(None, None), today).expect("default"),
            ("2026-10-23".into(), "2026-11-22".into())
        );
        assert_eq!(
            range(&f(Some("2026-01-01"), Some("2026-12-31")), today).expect("a year"),
            ("2026-01-01".into(), "2026-12-31".into())
        );
        for (from, to, field) in [
            (Some("2026-11-23"), None, "`from`"),
            (Some("2025-01-01"), Some("2026-11-01"), "`from`"),
            (Some("22.11.2026"), None, "`from`"),
            (None, Some("2026-02-30"), "`to`"),
        ] {
            let err = range(&f(from, to), today).expect_err("invalid");
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
