//! The shell's own pages in the window (`/_desktop/…`): the first page,
//! which waits for the core and then opens the setup wizard with the
//! in-process setup token (no link to copy), the keychain explanation
//! with its passphrase choice, and an error page. Static HTML and one
//! stylesheet, no script, under the same strict CSP as the web UI.

use crate::engine::{Engine, Phase};
use crate::scheme::plain;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use latchkey_core::secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";
const STYLE: &str = include_str!("../pages/desktop.css");

pub async fn answer(engine: &Arc<Engine>, req: Request<Vec<u8>>) -> Response<Vec<u8>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/_desktop/desktop.css") => {
            let mut r = Response::new(STYLE.as_bytes().to_vec());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/_desktop/start") => start(engine),
        (&Method::GET, "/_desktop/keychain") => keychain_page(engine, None),
        (&Method::POST, "/_desktop/retry") => {
            if !matches!(engine.phase(), Phase::Running(_) | Phase::Starting) {
                engine.start(None);
            }
            go_to_start()
        }
        (&Method::POST, "/_desktop/passphrase") => {
            let form = form(req.body());
            let (Some(a), Some(b)) = (form.get("passphrase"), form.get("repeat")) else {
                return keychain_page(engine, Some("Type the passphrase twice."));
            };
            if a.expose_secret() != b.expose_secret() {
                return keychain_page(engine, Some("The two passphrases differ."));
            }
            match engine.choose_passphrase(a.clone()) {
                Ok(()) => go_to_start(),
                Err(e) => keychain_page(engine, Some(&e)),
            }
        }
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

/// What the window sees at a core path while the core is not serving.
pub fn not_running(engine: &Arc<Engine>, _path: &str) -> Response<Vec<u8>> {
    match engine.phase() {
        Phase::Keychain { .. } => keychain_page(engine, None),
        _ => start(engine),
    }
}

fn form(body: &[u8]) -> std::collections::HashMap<String, SecretString> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), SecretString::from(v.into_owned())))
        .collect()
}

/// The first page: waits for the core, then the setup wizard (first
/// launch, with the token in the fragment, which is never sent anywhere)
/// or the UI.
fn start(engine: &Arc<Engine>) -> Response<Vec<u8>> {
    match engine.phase() {
        Phase::Starting => page(
            "Starting",
            "<h1>Starting Latchkey…</h1><p>Opening the vault.</p>",
            Some("0.3; url=/_desktop/start"),
        ),
        Phase::Running(_) => match engine.take_setup_token() {
            Some(t) => page(
                "Setup",
                "<p>Opening the setup wizard…</p>",
                Some(&format!("0; url=/setup#token={}", t.expose_secret())),
            ),
            None => page("Latchkey", "<p>Opening…</p>", Some("0; url=/")),
        },
        Phase::Keychain { .. } => keychain_page(engine, None),
        Phase::Failed(e) => page(
            "Latchkey could not start",
            &format!(
                "<h1>Latchkey could not start</h1><p class=\"detail\">{}</p>\
                 <form method=\"post\" action=\"/_desktop/retry\"><button>Try again</button></form>",
                escape(&e)
            ),
            None,
        ),
        Phase::Stopped => page("Stopped", "<h1>Latchkey has stopped.</h1>", None),
    }
}

fn go_to_start() -> Response<Vec<u8>> {
    page(
        "Latchkey",
        "<p>One moment…</p>",
        Some("0; url=/_desktop/start"),
    )
}

fn keychain_page(engine: &Arc<Engine>, problem: Option<&str>) -> Response<Vec<u8>> {
    let Phase::Keychain {
        detail,
        can_choose_passphrase,
    } = engine.phase()
    else {
        return start(engine);
    };
    let mut body = String::from(
        "<h1 id=\"keychain-title\">The system keychain is not available</h1>\
         <p>Latchkey keeps its master key in your operating system's keychain (the Secret \
         Service on Linux — GNOME Keyring or KWallet —, Keychain on macOS, Credential Manager \
         on Windows). It could not reach it, so the vault stays locked. Latchkey never writes \
         the key to a plain file instead.</p>",
    );
    body.push_str(&format!("<p class=\"detail\">{}</p>", escape(&detail)));
    body.push_str(
        "<h2>Unlock the keychain</h2><p>Log in to a desktop session with a keyring (or unlock \
         it), then try again.</p>\
         <form method=\"post\" action=\"/_desktop/retry\"><button id=\"retry\">Try again</button></form>",
    );
    if can_choose_passphrase {
        if let Some(p) = problem {
            body.push_str(&format!(
                "<p class=\"problem\" role=\"alert\">{}</p>",
                escape(p)
            ));
        }
        body.push_str(
            "<h2>Or use a passphrase</h2><p>The vault has no key yet, so you can protect it with \
             a passphrase instead: you type it each time Latchkey starts, and nothing can \
             recover the vault without it. This is saved as <code>vault.master_key = \
             \"passphrase\"</code> in <code>latchkey.toml</code>.</p>\
             <form method=\"post\" action=\"/_desktop/passphrase\" id=\"passphrase-form\">\
             <label>Passphrase (12 characters or more) <input type=\"password\" name=\"passphrase\" \
             autocomplete=\"new-password\" minlength=\"12\" required></label>\
             <label>Again <input type=\"password\" name=\"repeat\" autocomplete=\"new-password\" \
             minlength=\"12\" required></label>\
             <button>Use this passphrase</button></form>",
        );
    } else {
        body.push_str(
            "<p>This vault's master key is in the keychain: unlock it to open the vault (a new \
             passphrase cannot replace the key).</p>",
        );
    }
    page("Keychain not available", &body, None)
}

fn page(title: &str, body: &str, refresh: Option<&str>) -> Response<Vec<u8>> {
    let refresh = refresh
        .map(|r| format!("<meta http-equiv=\"refresh\" content=\"{}\">", escape(r)))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"referrer\" content=\"no-referrer\">{refresh}<title>{}</title>\
         <link rel=\"stylesheet\" href=\"/_desktop/desktop.css\"></head>\
         <body><main>{body}</main></body></html>",
        escape(title)
    );
    let mut r = Response::new(html.into_bytes());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// HTML-escapes text put into the pages.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
