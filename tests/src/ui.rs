//! Browser tests of the web UI: runs the Node scripts in `tests/ui/`
//! (Debian's headless Chromium driven by `playwright-core`, accessibility
//! checked with `axe-core`) against a running [`Server`], with the server's
//! address, the hash of its certificate's public key (the one certificate
//! Chromium is told to accept) and where to put screenshots.

use crate::server::{Server, openssl};
use crate::{Out, latchkey_bin, run_cmd_for};
use base64::Engine;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `tests/ui` in this workspace.
pub fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// `target/ui-artifacts/<name>` (next to the binary's profile folder),
/// emptied first: screenshots, accessibility and performance JSON, and
/// `failures/<step>.png` for failed steps.
pub fn artifacts_dir(name: &str) -> PathBuf {
    let bin = latchkey_bin();
    let target = bin
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("ui-artifacts").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Base64 of the SHA-256 of the SubjectPublicKeyInfo of the certificate
/// the server presents for `localhost` — Chromium's
/// `--ignore-certificate-errors-spki-list` format.
pub fn spki_sha256(s: &Server) -> String {
    let pem = s.served_cert();
    let pubkey = openssl(&["x509", "-noout", "-pubkey"], pem.as_bytes()).stdout;
    let der = s.work_dir().join("served-spki.der");
    let digest = s.work_dir().join("served-spki.sha256");
    let der_s = der.to_str().expect("utf8 path");
    let digest_s = digest.to_str().expect("utf8 path");
    openssl(
        &["pkey", "-pubin", "-outform", "DER", "-out", der_s],
        pubkey.as_bytes(),
    );
    openssl(
        &["dgst", "-sha256", "-binary", "-out", digest_s, der_s],
        b"",
    );
    let hash = std::fs::read(&digest).expect("read SPKI digest");
    assert_eq!(hash.len(), 32, "SHA-256 digest of the SPKI");
    base64::engine::general_purpose::STANDARD.encode(hash)
}

/// Runs `node tests/ui/<script>` for server `s` with `env` added to a clean
/// environment (`LK_URL`, `LK_SPKI`, `LK_ARTIFACTS`, `NODE_EXTRA_CA_CERTS`
/// are set here), killed after `limit`. The scripts stop their browser
/// themselves before their own, shorter, deadline.
pub fn run_script(
    s: &Server,
    script: &str,
    artifacts: &Path,
    env: &[(&str, &str)],
    limit: Duration,
) -> Out {
    let dir = ui_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir()
            && dir.join("node_modules/axe-core").is_dir(),
        "{}/node_modules is missing: run scripts/install-deps.sh (npm ci --prefix tests/ui)",
        dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "/usr/bin/chromium is missing: run scripts/install-deps.sh (Debian's `chromium`)"
    );
    let home = s.work_dir().join("ui-home");
    std::fs::create_dir_all(&home).expect("create ui home");
    let mut c = Command::new("node");
    c.arg(dir.join(script))
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .env("LK_URL", s.url())
        .env("LK_SPKI", spki_sha256(s))
        .env("LK_ARTIFACTS", artifacts)
        .env(
            "LK_DEADLINE_MS",
            limit.as_millis().saturating_sub(20_000).to_string(),
        )
        .env("NODE_EXTRA_CA_CERTS", s.ca_pem());
    if let Some(c2) = std::env::var_os("CHROMIUM") {
        c.env("CHROMIUM", c2);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    run_cmd_for(c, b"", limit)
}

/// Writes `text` to the test process's real standard error, past the test
/// harness's output capture, so figures such as `ui-perf:` lines show in
/// every test run's log.
pub fn print_uncaptured(text: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}
