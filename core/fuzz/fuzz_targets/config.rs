//! The configuration (`config::Settings::load`): `latchkey.toml` and
//! `LATCHKEY_<SECTION>__<KEY>` variables, with every section's checks
//! (providers, agents, connections, TLS, auth, …).
//!
//! The input is the TOML text, then `NAME=VALUE` environment variables
//! (`LATCHKEY_` is put in front of each NAME), separated by 0xFF.
//!
//! Properties:
//! - loading never panics, whatever the file and variables say;
//! - what `latchkey config show` prints for loaded settings
//!   (`toml::to_string_pretty`) loads again to the same settings (it is a
//!   valid configuration that means the same); the metrics token, printed
//!   redacted, is left out of this comparison;
//! - `Debug` of loaded settings never shows the metrics token.
#![no_main]

use latchkey_core::config::{MetricsAccess, Settings};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn file() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("latchkey.toml");
        (d, p)
    })
    .1
}

fn load(text: &[u8], env: Vec<(String, String)>) -> Option<Settings> {
    std::fs::write(file(), text).expect("write");
    Settings::load(file(), true, env).ok()
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|&b| b == 0xFF);
    let text = fields.next().unwrap_or(&[]);
    let env: Vec<(String, String)> = fields
        .filter_map(|f| {
            let f = std::str::from_utf8(f).ok()?;
            let (k, v) = f.split_once('=')?;
            Some((format!("LATCHKEY_{k}"), v.to_string()))
        })
        .collect();
    let Some(mut s) = load(text, env) else {
        return;
    };
    if let Some(t) = &s.metrics.token
        && !t.is_empty()
    {
        let mut without = s.clone();
        without.metrics.token = None;
        if !format!("{without:?}").contains(t.as_str()) {
            assert!(
                !format!("{s:?}").contains(t.as_str()),
                "Debug shows the metrics token"
            );
        }
    }
    // Round trip of what `config show` prints, the redacted token aside.
    if s.metrics.token.take().is_some() && s.metrics.access == MetricsAccess::Token {
        s.metrics.access = MetricsAccess::Loopback;
    }
    let shown = toml::to_string_pretty(&s).expect("settings serialize");
    let again = load(shown.as_bytes(), Vec::new())
        .unwrap_or_else(|| panic!("`config show` output does not load:\n{shown}"));
    let shown_again = toml::to_string_pretty(&again).expect("settings serialize");
    assert_eq!(
        shown, shown_again,
        "`config show` output loads to other settings"
    );
});
