//! The vault over HTTP: `/api/vault/…` and `/api/backup`.
//!
//! Who may do what (docs/PERMISSIONS.md has the whole table): vault entries
//! have no owner yet, so the vault is the household's, i.e. the admins'.
//! Reading metadata or a value needs `vault:read:<name>`, changing an entry
//! `vault:write:<name>`, both held by an admin (`ManageAllVault`) or an
//! admin's API key carrying the scope. `user` and `guest` get 403: their
//! `ReadOwnVault`/`WriteOwnVault` permissions cover entries they own, and
//! none do yet. Revealing a value and taking a backup are privileged: the
//! step-up rule (`Auth::step_up`) applies — a session needs a recent
//! re-authentication, an access token never has one, a key needs the
//! scope — and every reveal and backup is audited.
//! Seal, unseal, rotate-master, verify, init, backup and status need the
//! `admin` scope; unsealing in passphrase mode is also open to anyone
//! holding the passphrase (it is the credential), rate limited.
//!
//! Every vault call runs on the blocking pool: writes fsync, unsealing with
//! a passphrase runs scrypt, and backups encrypt the whole database.
//! Secrets travel only in request and response bodies (never in URLs, which
//! end up in logs and histories), and are held as `SecretString`.

use super::AppState;
use super::authn::{Authenticated, client_ip};
use super::error::ApiError;
use super::extract::ApiJson;
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::Via;
use crate::auth::scope::{Permission, Scope};
use crate::auth::service::KeyStepUp;
use crate::backup::{self, BackupRecipient};
use crate::config::MasterKeyKind;
use crate::secrecy::{ExposeSecret, SecretString};
use crate::vault::{Kind, MasterKey, NewRecord, RecordMeta, Vault, rotation};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Runs `f` on the blocking pool and counts it as vault operation `op`.
async fn run<T: Send + 'static>(
    state: &AppState,
    op: &'static str,
    f: impl FnOnce(&Vault) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let vault = Arc::clone(&state.vault);
    let res = tokio::task::spawn_blocking(move || f(&vault))
        .await
        .map_err(|e| ApiError::Internal(format!("vault task failed: {e}")))
        .and_then(|r| r);
    state.metrics.vault_op(op, res.is_ok());
    res
}

/// The vault permission check: the household's vault is readable and
/// writable by admins (`ManageAllVault`) and by their keys within the
/// keys' scopes.
fn vault_access(who: &Authenticated, needed: &Scope) -> Result<(), ApiError> {
    if who.0.role.may(Permission::ManageAllVault) && who.0.allows(needed) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("this needs `{needed}`")))
    }
}

/// Names are checked by the vault's own rule first: its message never
/// quotes the input (a secret pasted into the name field must not come
/// back in the error), while a scope error would.
fn checked_name(name: &str) -> Result<(), ApiError> {
    crate::vault::record::validate_name(name)
        .map_err(|e| ApiError::bad_request("invalid_field", e.to_string()))
}

fn read_scope(name: &str) -> Result<Scope, ApiError> {
    checked_name(name)?;
    Scope::vault_read(name).map_err(|e| ApiError::bad_request("invalid_field", e.to_string()))
}

fn write_scope(name: &str) -> Result<Scope, ApiError> {
    checked_name(name)?;
    format!("vault:write:{name}")
        .parse()
        .map_err(|e: crate::auth::scope::ScopeError| {
            ApiError::bad_request("invalid_field", e.to_string())
        })
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    // The String moves into the SecretString; no second copy lingers.
    String::deserialize(d).map(SecretString::from)
}

fn opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Option::<String>::deserialize(d).map(|o| o.map(SecretString::from))
}

/// `GET /api/vault`: every entry's metadata, sorted by name.
/// Needs some vault read scope; a key sees the entries its scopes name.
pub async fn list(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<Vec<RecordMeta>>, ApiError> {
    let any_read = match &who.0.via {
        Via::ApiKey { scopes, .. } => scopes
            .iter()
            .any(|s| matches!(s, Scope::Admin | Scope::VaultRead(_))),
        _ => true,
    };
    if !any_read || !who.0.role.may(Permission::ManageAllVault) {
        return Err(ApiError::forbidden("this needs `vault:read:…`"));
    }
    let all = run(&state, "list", |v| Ok(v.list()?)).await?;
    Ok(Json(
        all.into_iter()
            .filter(|m| Scope::vault_read(&m.name).is_ok_and(|s| who.0.allows(&s)))
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    pub name: String,
    pub kind: Kind,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "secret")]
    pub secret: SecretString,
    #[serde(default)]
    pub replace: bool,
}

/// `POST /api/vault`: store a secret (201 with its metadata); audited as
/// `vault.put` (detail `created` or `replaced`, never the value).
pub async fn put(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ext: axum::http::Extensions,
    who: Authenticated,
    ApiJson(req): ApiJson<PutRequest>,
) -> Result<(StatusCode, Json<RecordMeta>), ApiError> {
    vault_access(&who, &write_scope(&req.name)?)?;
    // Storing a value decides what agents are given (replace a provider's
    // key with one for an account the writer controls and every agent's
    // traffic goes there): the step-up rule, as for minting a
    // `vault:write` key. A key passes for the entries its scopes name.
    let ip = client_ip(&state, &headers, &ext);
    state
        .auth
        .step_up(
            &who.0,
            KeyStepUp::UseGrant,
            "vault.put",
            Some(&req.name),
            Some(ip),
        )
        .map_err(ApiError::from)?;
    let new = NewRecord {
        name: req.name,
        kind: req.kind,
        provider: req.provider,
        labels: req.labels,
    };
    let (secret, replace) = (req.secret, req.replace);
    let (meta, existed) = run(&state, "put", move |v| {
        let existed = v.meta(&new.name).is_ok();
        Ok((v.put(&new, &secret, replace)?, existed))
    })
    .await?;
    let ip = Some(client_ip(&state, &headers, &ext));
    record(
        &state,
        audit::vault_events::put(&who.0.actor(), &meta.name, existed, ip),
    );
    Ok((StatusCode::CREATED, Json(meta)))
}

/// Records a vault change right after its own transaction committed (the
/// vault's write API owns that transaction); a failure to record is logged,
/// the change stands. The entry is built by [`audit::vault_events`], as
/// for the host's offline commands.
fn record(state: &AppState, e: AuditEvent) {
    if let Err(err) = audit::append(state.vault.store(), e) {
        tracing::error!(error = %err, "could not write an audit entry");
    }
}

/// `GET /api/vault/{name}`: one entry's metadata (works while sealed).
pub async fn meta(
    State(state): State<AppState>,
    who: Authenticated,
    Path(name): Path<String>,
) -> Result<Json<RecordMeta>, ApiError> {
    vault_access(&who, &read_scope(&name)?)?;
    run(&state, "get", move |v| Ok(v.meta(&name)?))
        .await
        .map(Json)
}

#[derive(Serialize)]
struct Revealed<'a> {
    value: &'a str,
}

/// `POST /api/vault/{name}/reveal`: `{"value": …}`. Privileged: sessions
/// and access tokens need a recent re-authentication; audited.
pub async fn reveal(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ext: axum::http::Extensions,
    who: Authenticated,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let needed = read_scope(&name)?;
    let ip = client_ip(&state, &headers, &ext);
    let actor = who.0.actor();
    let store = Arc::clone(state.vault.store());
    let deny = |detail: &str| {
        let e = AuditEvent::new(&actor, "vault.reveal", Outcome::Failure)
            .target(&name)
            .ip(Some(ip))
            .detail(detail);
        if let Err(err) = audit::append(&store, e) {
            tracing::error!(error = %err, "could not write an audit entry");
        }
    };
    if let Err(e) = vault_access(&who, &needed) {
        deny("forbidden");
        return Err(e);
    }
    // The step-up rule audits its own refusal.
    state
        .auth
        .step_up(
            &who.0,
            KeyStepUp::UseGrant,
            "vault.reveal",
            Some(&name),
            Some(ip),
        )
        .map_err(ApiError::from)?;
    let (n, a) = (name.clone(), actor.clone());
    let secret = run(&state, "reveal", move |v| {
        let secret = v.reveal(&n)?;
        audit::append(v.store(), audit::vault_events::reveal(&a, &n, Some(ip)))?;
        Ok(secret)
    })
    .await?;
    // Serialized straight from the secret; the response buffer is the only
    // copy, and it goes out on the wire.
    let body = serde_json::to_vec(&Revealed {
        value: secret.expose_secret(),
    })
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `DELETE /api/vault/{name}`: the deleted entry's metadata.
pub async fn remove(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ext: axum::http::Extensions,
    who: Authenticated,
    Path(name): Path<String>,
) -> Result<Json<RecordMeta>, ApiError> {
    vault_access(&who, &write_scope(&name)?)?;
    let meta = run(&state, "delete", move |v| Ok(v.remove(&name)?)).await?;
    let ip = Some(client_ip(&state, &headers, &ext));
    record(
        &state,
        audit::vault_events::delete(&who.0.actor(), &meta.name, ip),
    );
    Ok(Json(meta))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SealState {
    pub sealed: bool,
}

/// `POST /api/vault/seal`: drop the data key and every cached secret.
pub async fn seal(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<SealState>, ApiError> {
    who.require(&Scope::Admin)?;
    run(&state, "seal", |v| {
        // Last-used times are not secret; keep them across the seal.
        if let Err(e) = v.flush_last_used() {
            tracing::warn!(error = %e, "could not write last-used times before sealing");
        }
        v.seal();
        Ok(())
    })
    .await?;
    // Open realtime sessions whose credential came from the vault re-check
    // and end (the epoch means only "re-check", see auth::revocation).
    state.auth.revocations.bump();
    tracing::info!("vault sealed over the API");
    Ok(Json(SealState { sealed: true }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    #[serde(default, deserialize_with = "opt_secret")]
    pub passphrase: Option<SecretString>,
}

/// `POST /api/vault/unseal`: with `{passphrase}` in passphrase mode; with
/// no body (or `{}`) the configured key source is read again. Needs the
/// `admin` scope, except in passphrase mode where the passphrase itself is
/// the credential (the route is rate limited per address).
///
/// In passphrase mode nothing costly runs for a request that cannot
/// succeed: an unsealed vault answers 409 `already_unsealed` without a
/// key derivation, a second concurrent attempt gets 409
/// `unseal_in_progress` at once, and after repeated wrong passphrases
/// anonymous attempts get 429 until the global backoff has passed
/// ([`crate::vault::gate`]). Every derivation's outcome is audited
/// (`vault.unseal`, with the client address).
pub async fn unseal(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ext: axum::http::Extensions,
    who: Option<Authenticated>,
    body: Option<ApiJson<UnsealRequest>>,
) -> Result<Json<SealState>, ApiError> {
    let req = body.map(|ApiJson(r)| r).unwrap_or_default();
    let source = state.source();
    let passphrase_mode = state.settings.vault.master_key == MasterKeyKind::Passphrase;
    if !passphrase_mode {
        who.ok_or_else(ApiError::unauthenticated)?
            .require(&Scope::Admin)?;
        run(&state, "unseal", move |v| {
            rotation::open_recovering(v, &source)?;
            Ok(())
        })
        .await?;
        tracing::info!("vault unsealed over the API");
        return Ok(Json(SealState { sealed: false }));
    }
    let ip = client_ip(&state, &headers, &ext);
    let privileged = who.as_ref().is_some_and(|w| w.0.allows(&Scope::Admin));
    let actor = who
        .as_ref()
        .map_or_else(|| "anonymous".to_owned(), |w| w.0.actor());
    run(&state, "unseal", move |v| {
        let Some(pass) = req.passphrase else {
            return Err(ApiError::bad_request(
                "passphrase_required",
                "this vault is unsealed with its passphrase: send {\"passphrase\": …}",
            ));
        };
        if !v.is_sealed() {
            return Err(already_unsealed());
        }
        // Unsealing an uninitialized vault would silently make this
        // (unconfirmed) passphrase the vault's passphrase.
        if !v.is_initialized()? {
            return Err(ApiError::conflict(
                "vault_not_initialized",
                "the vault has no passphrase yet: run `latchkey vault init` first",
            ));
        }
        let attempt = enter_gate(v, privileged)?;
        // Checked again inside the gate: an attempt that finished while
        // this one waited for the pool may have unsealed it.
        if !v.is_sealed() {
            return Err(already_unsealed());
        }
        let audit = |outcome: Outcome, detail: &str| {
            let e = AuditEvent::new(actor.as_str(), "vault.unseal", outcome)
                .ip(Some(ip))
                .detail(detail);
            if let Err(err) = audit::append(v.store(), e) {
                tracing::error!(error = %err, "could not write an audit entry");
            }
        };
        match v.unseal(&MasterKey::Passphrase(pass), source.kind_name()) {
            Ok(_) => {
                attempt.succeeded();
                audit(Outcome::Success, "passphrase");
                Ok(())
            }
            Err(e @ crate::vault::VaultError::Key(crate::vault::KeyError::WrongMasterKey(_))) => {
                attempt.failed(std::time::Instant::now());
                audit(Outcome::Failure, "wrong_passphrase");
                tracing::warn!(%ip, "wrong vault passphrase");
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    tracing::info!("vault unsealed over the API");
    Ok(Json(SealState { sealed: false }))
}

fn already_unsealed() -> ApiError {
    ApiError::conflict(
        "already_unsealed",
        "the vault is already unsealed; nothing was checked",
    )
}

/// Admits one passphrase derivation (see [`crate::vault::gate`]), or says
/// why not without doing any work.
fn enter_gate(v: &Vault, privileged: bool) -> Result<crate::vault::gate::Attempt<'_>, ApiError> {
    use crate::vault::gate::GateRefused;
    v.gate()
        .enter(std::time::Instant::now(), privileged)
        .map_err(|r| match r {
            GateRefused::Busy => ApiError::conflict(
                "unseal_in_progress",
                "another passphrase check is running; try again in a moment",
            ),
            GateRefused::Backoff { retry_after } => ApiError::UnsealBackoff { retry_after },
        })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    #[serde(default, deserialize_with = "opt_secret")]
    pub current_passphrase: Option<SecretString>,
    #[serde(default, deserialize_with = "opt_secret")]
    pub new_passphrase: Option<SecretString>,
}

/// Shortest passphrase accepted for a new vault passphrase (same rule as
/// the CLI's).
pub const MIN_PASSPHRASE: usize = 12;

/// `POST /api/vault/rotate-master`: a new master key (key file, keychain)
/// or a new passphrase (`{current_passphrase, new_passphrase}`).
pub async fn rotate_master(
    State(state): State<AppState>,
    who: Authenticated,
    body: Option<ApiJson<RotateRequest>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    who.require(&Scope::Admin)?;
    let req = body.map(|ApiJson(r)| r).unwrap_or_default();
    let source = state.source();
    let kind = state.settings.vault.master_key.clone();
    run(&state, "rotate_master", move |v| match kind {
        MasterKeyKind::Keyfile | MasterKeyKind::Keyring => {
            rotation::rotate_stored(v, &source)?;
            Ok(())
        }
        MasterKeyKind::Passphrase => {
            let (Some(current), Some(new)) = (req.current_passphrase, req.new_passphrase) else {
                return Err(ApiError::bad_request(
                    "passphrase_required",
                    "passphrase mode: send {\"current_passphrase\": …, \"new_passphrase\": …}",
                ));
            };
            if new.expose_secret().chars().count() < MIN_PASSPHRASE {
                return Err(ApiError::bad_request(
                    "weak_passphrase",
                    format!("the new passphrase must be at least {MIN_PASSPHRASE} characters"),
                ));
            }
            // One derivation at a time, whoever asks (admins skip only
            // the backoff).
            let _attempt = enter_gate(v, true)?;
            // Proves the caller knows the current passphrase (and leaves
            // the vault unsealed with the same data key).
            v.unseal(&MasterKey::Passphrase(current), source.kind_name())?;
            v.rewrap(&MasterKey::Passphrase(new), source.kind_name())?;
            Ok(())
        }
        MasterKeyKind::SystemdCredential => Err(ApiError::conflict(
            "unsupported_master_key_source",
            "systemd-credential mode: the credential is installed by systemd; stop the \
             service and run `latchkey vault rotate-master --new-key-file FILE`",
        )),
    })
    .await?;
    tracing::info!("master key rotated over the API");
    Ok(Json(serde_json::json!({ "rotated": true })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    #[serde(default)]
    pub recipient: Option<String>,
    #[serde(default, deserialize_with = "opt_secret")]
    pub passphrase: Option<SecretString>,
}

/// Response headers carrying the backup's summary (the body is the file).
pub const BACKUP_RECORDS: HeaderName = HeaderName::from_static("x-latchkey-vault-records");
pub const BACKUP_SCHEMA: HeaderName = HeaderName::from_static("x-latchkey-schema-version");
/// The fingerprint of the installation's backup key that signed the file.
pub const BACKUP_KEY: HeaderName = HeaderName::from_static("x-latchkey-backup-key");

/// Shortest backup passphrase accepted (same rule as the CLI's).
pub const MIN_BACKUP_PASSPHRASE: usize = 12;

/// `POST /api/backup`: the encrypted backup file of a consistent snapshot.
/// It holds every secret, under a key the caller chooses: the step-up rule
/// applies as for a reveal, and every backup is audited (`backup.create`).
pub async fn backup(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ext: axum::http::Extensions,
    who: Authenticated,
    ApiJson(req): ApiJson<BackupRequest>,
) -> Result<Response, ApiError> {
    who.require(&Scope::Admin)?;
    let ip = client_ip(&state, &headers, &ext);
    state
        .auth
        .step_up(&who.0, KeyStepUp::UseGrant, "backup.create", None, Some(ip))
        .map_err(ApiError::from)?;
    let to = match (req.recipient, req.passphrase) {
        (Some(r), None) => BackupRecipient::parse_recipient(&r)?,
        (None, Some(p)) => {
            if p.expose_secret().chars().count() < MIN_BACKUP_PASSPHRASE {
                return Err(ApiError::bad_request(
                    "weak_passphrase",
                    format!(
                        "the backup passphrase must be at least {MIN_BACKUP_PASSPHRASE} characters"
                    ),
                ));
            }
            BackupRecipient::Passphrase(p)
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give exactly one of `recipient` (age1…) or `passphrase`",
            ));
        }
    };
    let kind = audit::vault_events::backup_to(&to);
    let actor = who.0.actor();
    let (bytes, summary) = run(&state, "backup", move |v| {
        let made = backup::create(v, &to)?;
        // Recorded before the file leaves: no backup goes unaudited.
        audit::append(
            v.store(),
            audit::vault_events::backup(&actor, &kind, made.1.vault_records, Some(ip)),
        )?;
        Ok(made)
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"latchkey.backup\"".to_string(),
            ),
            (BACKUP_RECORDS, summary.vault_records.to_string()),
            (BACKUP_SCHEMA, summary.schema_version.to_string()),
            (BACKUP_KEY, summary.signed_by.unwrap_or_default()),
        ],
        bytes,
    )
        .into_response())
}

/// `POST /api/vault/verify`: decrypts every entry and checks it belongs to
/// its record; `{"verified": n}`.
pub async fn verify(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    who.require(&Scope::Admin)?;
    let n = run(&state, "verify", |v| Ok(v.verify_all()?)).await?;
    Ok(Json(serde_json::json!({ "verified": n })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    #[serde(default, deserialize_with = "opt_secret")]
    pub passphrase: Option<SecretString>,
}

/// `POST /api/vault/init`: passphrase mode only, once: sets the vault's
/// passphrase and leaves it unsealed. (The CLI asks twice before sending.)
pub async fn init(
    State(state): State<AppState>,
    who: Authenticated,
    ApiJson(req): ApiJson<InitRequest>,
) -> Result<(StatusCode, Json<SealState>), ApiError> {
    who.require(&Scope::Admin)?;
    let source = state.source();
    if state.settings.vault.master_key != MasterKeyKind::Passphrase {
        return Err(ApiError::conflict(
            "vault_already_initialized",
            "this vault's master key is created automatically; there is nothing to initialize",
        ));
    }
    let Some(pass) = req.passphrase else {
        return Err(ApiError::bad_request(
            "passphrase_required",
            "send {\"passphrase\": …}",
        ));
    };
    if pass.expose_secret().chars().count() < MIN_PASSPHRASE {
        return Err(ApiError::bad_request(
            "weak_passphrase",
            format!("the passphrase must be at least {MIN_PASSPHRASE} characters"),
        ));
    }
    run(&state, "init", move |v| {
        let _attempt = enter_gate(v, true)?;
        if v.is_initialized()? {
            return Err(ApiError::conflict(
                "vault_already_initialized",
                "the vault already has a passphrase; use rotate-master to change it",
            ));
        }
        v.initialize(&MasterKey::Passphrase(pass), source.kind_name())?;
        Ok(())
    })
    .await?;
    tracing::info!("vault initialized over the API");
    Ok((StatusCode::CREATED, Json(SealState { sealed: false })))
}
