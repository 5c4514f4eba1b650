//! A small WebDriver client (W3C, JSON over HTTP/1.1 on loopback), enough
//! to drive the desktop app's window through `tauri-driver` and Debian's
//! `WebKitWebDriver`: sessions, elements found by script, typing,
//! clicking, text, the URL, screenshots.

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The W3C key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One request to the driver: `(status, JSON body)`. A connection the
/// driver drops without an answer (it happens while the page navigates)
/// is retried a few times.
pub fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut last = String::new();
    for _ in 0..10 {
        match try_call(port, method, path, body) {
            Ok(answer) => return answer,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("WebDriver {method} {path} on port {port}: {last}");
}

/// One attempt; `Err` when nothing (or no HTTP) came back.
pub fn try_call(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer ({} bytes)", raw.len()))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A WebDriver session on one app launch.
pub struct Session {
    pub port: u16,
    pub id: String,
}

impl Session {
    /// Starts a session that launches `application` (tauri-driver's
    /// `tauri:options`), retrying while the driver comes up.
    pub fn start(port: u16, application: &str, deadline: Duration) -> Session {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "tauri:options": {"application": application},
        }}});
        let started = Instant::now();
        loop {
            let attempt = try_call(port, "POST", "/session", Some(&caps));
            if let Ok((200, v)) = &attempt
                && let Some(id) = v["value"]["sessionId"].as_str()
            {
                return Session {
                    port,
                    id: id.to_string(),
                };
            }
            assert!(
                started.elapsed() < deadline,
                "no WebDriver session within {deadline:?}: {:?}",
                attempt.map(|(s, v)| format!("{s} {v}"))
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.try_cmd(method, path, body)
            .unwrap_or_else(|(status, v)| {
                panic!("WebDriver {method} {path} answered {status}: {v}")
            })
    }

    fn try_cmd(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, (u16, Value)> {
        let (status, v) = call(
            self.port,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        );
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err((status, v))
        }
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn exec(&self, script: &str, args: &[Value]) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's visible text.
    pub fn text(&self) -> String {
        self.exec("return document.body ? document.body.innerText : '';", &[])
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the page's text contains `needle`.
    pub fn wait_text(&self, needle: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            // A script run while the page navigates (the click that led
            // here) is cut off by the unload: WebKitWebDriver answers
            // `no such frame`. That is "not there yet", not a failure.
            let text = match self.try_cmd(
                "POST",
                "/execute/sync",
                Some(&json!({"script": "return document.body ? document.body.innerText : '';", "args": []})),
            ) {
                Ok(v) => v.as_str().unwrap_or_default().to_string(),
                Err((_, v)) if v["value"]["error"] == "no such frame" => String::new(),
                Err((status, v)) => panic!("WebDriver POST /execute/sync answered {status}: {v}"),
            };
            if text.contains(needle) {
                return text;
            }
            assert!(
                started.elapsed() < limit,
                "the window never showed {needle:?} (URL {}); it shows:\n{text}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// An element found by `finder` (a script returning one element or
    /// null), waited for.
    fn find(&self, what: &str, finder: &str, arg: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let v = self.exec(finder, &[json!(arg)]);
            if v.get(ELEMENT).is_some() {
                return v;
            }
            assert!(
                started.elapsed() < limit,
                "no {what} {arg:?} in the window (URL {}; the finder returned {v}); it shows:\n{}",
                self.url(),
                self.text()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn element_id(v: &Value) -> String {
        v[ELEMENT].as_str().unwrap_or_default().to_string()
    }

    /// The form control labelled `label` (its label's text starts so).
    pub fn field(&self, label: &str) -> String {
        let v = self.find(
            "field labelled",
            "for (const l of document.querySelectorAll('label')) { \
               if (!l.textContent.trim().startsWith(arguments[0])) continue; \
               const c = l.control || l.querySelector('input, select, textarea') \
                 || (l.htmlFor && document.getElementById(l.htmlFor)); \
               if (c) return c; } \
             return null;",
            label,
            Duration::from_secs(20),
        );
        Self::element_id(&v)
    }

    /// The button (or link) whose text is exactly `name`.
    pub fn button(&self, name: &str) -> String {
        let v = self.find(
            "button",
            "for (const b of document.querySelectorAll('button, a, input[type=submit]')) { \
               if ((b.innerText || b.value || '').trim() === arguments[0]) return b; } \
             return null;",
            name,
            Duration::from_secs(20),
        );
        Self::element_id(&v)
    }

    /// The first element matching a CSS selector.
    pub fn css(&self, selector: &str) -> String {
        let v = self.find(
            "element",
            "return document.querySelector(arguments[0]);",
            selector,
            Duration::from_secs(20),
        );
        Self::element_id(&v)
    }

    pub fn type_into(&self, element: &str, text: &str) {
        self.cmd(
            "POST",
            &format!("/element/{element}/value"),
            Some(&json!({"text": text})),
        );
    }

    pub fn click(&self, element: &str) {
        self.cmd(
            "POST",
            &format!("/element/{element}/click"),
            Some(&json!({})),
        );
    }

    pub fn element_text(&self, element: &str) -> String {
        self.cmd("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Sets a `<select>`'s value and tells the page.
    pub fn select(&self, element: &str, value: &str) {
        self.exec(
            "const [el, v] = arguments; el.value = v; \
             el.dispatchEvent(new Event('change', {bubbles: true})); return el.value;",
            &[json!({ELEMENT: element}), json!(value)],
        );
    }

    pub fn check(&self, element: &str) {
        let on = self.exec("return arguments[0].checked;", &[json!({ELEMENT: element})]);
        if on != Value::Bool(true) {
            self.click(element);
        }
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.cmd("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("the screenshot is base64")
    }

    /// Navigates the window (as a script would, so the app's navigation
    /// rules apply).
    pub fn script_navigate(&self, url: &str) {
        self.exec(
            "window.location.href = arguments[0]; return null;",
            &[json!(url)],
        );
    }

    /// Ends the session (the driver stops the app).
    pub fn end(self) {
        let _ = call(self.port, "DELETE", &format!("/session/{}", self.id), None);
    }
}
