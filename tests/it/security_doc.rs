//! docs/SECURITY.md and its detail pages name the tests that show each
//! claim. A renamed or deleted test would leave a claim without evidence,
//! so every test name they cite must still be a function in the tree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Every `fn name(` in the Rust sources under `dir`.
fn functions_under(dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            if name != "target" && name != "node_modules" && !name.starts_with('.') {
                functions_under(&p, out);
            }
        } else if name.ends_with(".rs") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            for part in text.split("fn ").skip(1) {
                let ident: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if part[ident.len()..].starts_with('(') || part[ident.len()..].starts_with('<') {
                    out.insert(ident);
                }
            }
        }
    }
}

/// Backticked test-like names: snake_case with at least three words, the
/// last path segment of `a::b::name`; wildcards (`tests::*`) are skipped.
fn cited_tests(doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, chunk) in doc.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let last = chunk.rsplit("::").next().unwrap_or(chunk);
        let is_name = last.matches('_').count() >= 2
            && last
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !last.starts_with('_');
        if is_name {
            out.insert(last.to_string());
        }
    }
    out
}

#[test]
fn every_test_named_in_security_md_exists() {
    let root = repo_root();
    let mut fns = BTreeSet::new();
    for dir in [
        "core",
        "appliance",
        "migrations",
        "tests",
        "ui",
        "src-tauri",
    ] {
        functions_under(&root.join(dir), &mut fns);
    }
    assert!(fns.len() > 500, "found only {} functions", fns.len());
    // Configuration keys and metric names are backticked snake_case too;
    // they are not test names.
    let config =
        std::fs::read_to_string(root.join("docs/CONFIGURATION.md")).expect("docs/CONFIGURATION.md");
    let settings = cited_tests(&config);
    let mut docs = vec![root.join("docs/SECURITY.md")];
    let detail = root.join("docs/security");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&detail)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    pages.sort();
    docs.extend(pages);
    let mut missing = Vec::new();
    let mut cited = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", doc.display()));
        for name in cited_tests(&text) {
            // Names of settings and scopes are backticked too; only names
            // that look like a sentence (tests) must exist.
            if name.matches('_').count() < 3
                || name.starts_with("latchkey_")
                || settings.contains(&name)
            {
                continue;
            }
            cited += 1;
            if !fns.contains(&name) {
                missing.push(format!("{}: {name}", doc.display()));
            }
        }
    }
    assert!(
        cited > 50,
        "only {cited} test names cited: is the parser broken?"
    );
    assert!(
        missing.is_empty(),
        "cited but not found:\n{}",
        missing.join("\n")
    );
}
