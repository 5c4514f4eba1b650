//! `latchkey setup`, `latchkey user …` and `latchkey audit tail`.
//!
//! Like the vault commands, each goes through a running server's API
//! ([`Remote`], authenticated as the host) when one holds the data
//! directory, and otherwise opens the database itself. Either way the
//! actor in the audit log is `host`.

use crate::cli::{AuditCommand, SetupArgs, UserCommand};
use crate::context::Context;
use crate::prompt;
use crate::remote::Remote;
use crate::term::{safe, safe_or_dash};
use anyhow::{Context as _, bail};
use latchkey_core::audit::{self, AuditEvent, AuditQuery};
use latchkey_core::auth::Auth;
use latchkey_core::auth::scope::Role;
use latchkey_core::secrecy::ExposeSecret;
use serde::Deserialize;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

/// The auth service over this data directory, for a one-shot command.
/// `unsealed`: whether the command needs the vault's keys (TOTP secrets).
fn local_auth(ctx: &Context, unsealed: bool) -> anyhow::Result<Arc<Auth>> {
    let app = if unsealed {
        ctx.open_unsealed()?
    } else {
        ctx.open_sealed()?
    };
    Ok(Arc::clone(app.auth()))
}

#[derive(Deserialize)]
struct SetupResult {
    username: String,
    otpauth_uri: String,
    qr_svg: String,
    recovery_codes: Vec<String>,
}

pub fn setup(ctx: &Context, a: SetupArgs) -> anyhow::Result<()> {
    let password = if a.password_stdin {
        prompt::line_from_stdin("the password")?
    } else {
        let p = prompt::prompt_tty("Owner password: ")?;
        if p.expose_secret() != prompt::prompt_tty("Repeat it: ")?.expose_secret() {
            bail!("the passwords do not match");
        }
        p
    };
    let result: SetupResult = match Remote::detect(ctx)? {
        Some(remote) => serde_json::from_value(remote.setup_host(&a.username, &password)?)
            .context("the server's answer is not what was expected")?,
        None => {
            let auth = local_auth(ctx, true)?;
            let (user, enrollment, codes) = auth.setup_host(&a.username, &password)?;
            SetupResult {
                username: user.username,
                otpauth_uri: enrollment.otpauth_uri.0.expose_secret().to_string(),
                qr_svg: enrollment.qr_svg,
                recovery_codes: codes
                    .iter()
                    .map(|c| c.expose_secret().to_string())
                    .collect(),
            }
        }
    };
    drop(password);
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = serde_json::json!({
            "username": result.username,
            "otpauth_uri": result.otpauth_uri,
            "qr_svg": result.qr_svg,
            "recovery_codes": result.recovery_codes,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "Created the owner `{}` (admin).\n",
        safe(&result.username)
    )?;
    writeln!(
        out,
        "Add this account to your authenticator app (scan the code or enter the URI):\n  {}\n",
        result.otpauth_uri
    )?;
    if std::io::stdout().is_terminal()
        && let Some(qr) = terminal_qr(&result.otpauth_uri)
    {
        writeln!(out, "{qr}")?;
    }
    writeln!(
        out,
        "Recovery codes: store them now (a password manager, or on paper). They are shown only \
         once; each works once if you lose your authenticator."
    )?;
    for c in &result.recovery_codes {
        writeln!(out, "  {c}")?;
    }
    Ok(())
}

/// The QR code in half-block characters, light modules drawn (for dark
/// terminals), with the quiet zone the spec asks for.
fn terminal_qr(text: &str) -> Option<String> {
    use qrcodegen::{QrCode, QrCodeEcc};
    let qr = QrCode::encode_text(text, QrCodeEcc::Medium).ok()?;
    let quiet = 2;
    let size = qr.size();
    let light = |x: i32, y: i32| !qr.get_module(x, y);
    let mut s = String::new();
    let mut y = -quiet;
    while y < size + quiet {
        s.push_str("  ");
        for x in -quiet..size + quiet {
            s.push(match (light(x, y), light(x, y + 1)) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        s.push('\n');
        y += 2;
    }
    Some(s)
}

#[derive(Deserialize, serde::Serialize)]
struct UserRow {
    username: String,
    role: String,
    mfa_enabled: bool,
    disabled: bool,
    created_at: i64,
}

pub fn user(ctx: &Context, cmd: UserCommand) -> anyhow::Result<()> {
    let remote = Remote::detect(ctx)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        UserCommand::List { json } => {
            let users: Vec<UserRow> = match &remote {
                Some(r) => serde_json::from_value(r.users()?)?,
                None => serde_json::from_value(serde_json::to_value(
                    local_auth(ctx, false)?.list_users()?,
                )?)?,
            };
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&users)?)?;
                return Ok(());
            }
            if users.is_empty() {
                writeln!(out, "No users yet: run `latchkey setup`.")?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<24} {:<6} {:<4} {:<9} CREATED",
                "USERNAME", "ROLE", "MFA", "STATUS"
            )?;
            for u in users {
                writeln!(
                    out,
                    "{:<24} {:<6} {:<4} {:<9} {}",
                    safe(&u.username),
                    safe(&u.role),
                    if u.mfa_enabled { "on" } else { "off" },
                    if u.disabled { "disabled" } else { "active" },
                    rfc3339(u.created_at)
                )?;
            }
        }
        UserCommand::ResetMfa { username } => {
            match &remote {
                Some(r) => drop(r.reset_mfa(&username)?),
                None => {
                    let auth = local_auth(ctx, false)?;
                    auth.reset_mfa(&auth.host_principal(), &username)?;
                }
            }
            let username = safe(&username);
            eprintln!(
                "Removed `{username}`'s TOTP and recovery codes and ended their sessions; they \
                 enroll again at their next sign-in."
            );
        }
        UserCommand::Invite { role, json } => {
            let role: Role = role.parse()?;
            let (token, url, expires_at) = match &remote {
                Some(r) => {
                    #[derive(Deserialize)]
                    struct Inv {
                        token: String,
                        url: String,
                        expires_at: i64,
                    }
                    let i: Inv = serde_json::from_value(r.invite(role.as_str())?)?;
                    (i.token, i.url, i.expires_at)
                }
                None => {
                    let auth = local_auth(ctx, false)?;
                    let (token, expires_at) =
                        auth.create_invite(&auth.host_principal(), role, None)?;
                    let port = ctx
                        .settings
                        .server
                        .listen
                        .first()
                        .map_or(8443, |a| a.port());
                    let token = token.expose_secret().to_string();
                    let url = format!("https://localhost:{port}/invite#{token}");
                    (token, url, expires_at)
                }
            };
            if json {
                let v = serde_json::json!({ "token": token, "url": url, "expires_at": expires_at });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(
                    out,
                    "Invite for a new {role} (single use, expires {}):\n  {url}",
                    rfc3339(expires_at)
                )?;
            }
        }
    }
    Ok(())
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

fn print_event(out: &mut impl Write, e: &AuditEvent, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    } else {
        writeln!(
            out,
            "{:>6}  {}  {:<8} {:<20} {:<24} {:<14} {}{}",
            e.seq,
            rfc3339(e.at),
            format!("{:?}", e.outcome).to_lowercase(),
            safe(&e.action),
            safe(&e.actor),
            safe_or_dash(e.target.as_deref()),
            safe_or_dash(e.ip.as_deref()),
            e.detail
                .as_deref()
                .map(|d| format!("  ({})", safe(d)))
                .unwrap_or_default(),
        )?;
    }
    out.flush()?;
    Ok(())
}

pub fn audit(ctx: &Context, cmd: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Tail {
        lines,
        follow,
        json,
    } = cmd;
    let remote = Remote::detect(ctx)?;
    let store = match remote {
        Some(_) => None,
        None => Some(Arc::clone(ctx.open_sealed()?.store())),
    };
    let fetch = |q: AuditQuery| -> anyhow::Result<Vec<AuditEvent>> {
        match (&remote, &store) {
            (Some(r), _) => {
                let mut parts = Vec::new();
                if let Some(b) = q.before {
                    parts.push(format!("before={b}"));
                }
                if let Some(a) = q.after {
                    parts.push(format!("after={a}"));
                }
                if let Some(l) = q.limit {
                    parts.push(format!("limit={l}"));
                }
                let page = r.audit(&parts.join("&"))?;
                Ok(serde_json::from_value(page["events"].clone())?)
            }
            (None, Some(s)) => Ok(audit::query(s, &q)?),
            (None, None) => bail!("neither a server nor the database is available"),
        }
    };
    let mut events = fetch(AuditQuery {
        limit: Some(lines.clamp(1, audit::MAX_PAGE)),
        ..AuditQuery::default()
    })?;
    events.reverse();
    let mut out = std::io::stdout().lock();
    let mut last = events.last().map_or(0, |e| e.seq);
    for e in &events {
        print_event(&mut out, e, json)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        for e in fetch(AuditQuery {
            after: Some(last),
            limit: Some(audit::MAX_PAGE),
            ..AuditQuery::default()
        })? {
            last = last.max(e.seq);
            print_event(&mut out, &e, json)?;
        }
    }
}
