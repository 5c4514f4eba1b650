//! The crate's modules form layers that point one way (ARCHITECTURE.md):
//! a module uses only modules of lower layers, never one above it. These
//! tests read the sources and refuse any `crate::<module>` path that
//! points up, so an import loop cannot come back unnoticed; and they keep
//! every file (outside `auth/`, which has its own) under ~800 lines of
//! code that is not a test; and nothing above `store` names redb.

use std::path::{Path, PathBuf};

/// Bottom first. A module may use the modules of its own layer's lower
/// layers; within a layer only where [`SIBLINGS`] says so.
const LAYERS: &[&[&str]] = &[
    &["net", "duration_str", "private_fs"],
    &["store"],
    &["vault"],
    &["backup"],
    &["audit"],
    &["auth"],
    &["connections"],
    &["proxy", "agent", "update", "livekit"],
    &["config"],
    &["http"],
    &["serve"],
    &["app"],
    &["fuzzing"],
];

/// Uses within one layer that are allowed (none today: `proxy`, `agent`,
/// `update` and `livekit` share only what is below them).
const SIBLINGS: &[(&str, &str)] = &[];

/// Most lines of non-test code in one file.
const MAX_LINES: usize = 800;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `path` (or `path` itself).
fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("source directory")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            rust_files(&p, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The code of a line: without its `//` comment (doc comments included).
/// A `//` inside a string literal cuts the line short too, which can only
/// hide a use, never invent one: no source line here needs it.
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or_default()
}

/// The top-level modules named as `crate::<name>` in `text`.
fn used_modules(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = code(line);
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + "crate::".len()..];
            // `latchkey_crate::` or `somecrate::` are other paths.
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
        }
    }
    out
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The crate's top-level modules: `src/<name>.rs` and `src/<name>/`.
fn top_level_modules() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(src()).expect("src").flatten() {
        let p = e.path();
        let name = e
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if !matches!(name.as_str(), "lib" | "layers_tests") {
            out.push((name, p));
        }
    }
    out.sort();
    out
}

#[test]
fn every_module_has_a_layer() {
    for (module, _) in top_level_modules() {
        assert!(
            layer_of(&module).is_some(),
            "module `{module}` is in no layer: add it to LAYERS (and ARCHITECTURE.md)"
        );
    }
}

#[test]
fn no_module_uses_one_above_it() {
    let mut up = Vec::new();
    for (module, path) in top_level_modules() {
        let Some(own) = layer_of(&module) else {
            continue;
        };
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("source");
            for (line, used) in used_modules(&text) {
                // `crate::secrecy` is the crate's re-export of `age::secrecy`.
                if used == module || used == "secrecy" {
                    continue;
                }
                let allowed = match layer_of(&used) {
                    Some(l) if l < own => true,
                    Some(l) if l == own => SIBLINGS.contains(&(module.as_str(), used.as_str())),
                    _ => false,
                };
                if !allowed {
                    up.push(format!("{}:{line}: {module} uses {used}", file.display()));
                }
            }
        }
    }
    assert!(
        up.is_empty(),
        "uses that point up a layer:\n{}",
        up.join("\n")
    );
}

/// The lines of `text` that are not tests: a `#[cfg(test)]` module at the
/// end of a file and everything after it do not count; files that are
/// test modules themselves (`tests.rs`, `*_tests.rs`, `tests/`) are
/// skipped by the caller.
fn non_test_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .position(|w| {
            w[0].trim() == "#[cfg(test)]" && w[1].starts_with("mod ") && w[1].ends_with('{')
        })
        .unwrap_or(lines.len())
}

#[test]
fn no_file_is_over_800_lines_of_code() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src()).unwrap_or(&file);
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let test_file = name == "tests.rs"
            || name.ends_with("_tests.rs")
            || rel.components().any(|c| c.as_os_str() == "tests");
        // `auth/` is split by its own owner; its limit is checked there.
        if test_file || rel.starts_with("auth") {
            continue;
        }
        let n = non_test_lines(&std::fs::read_to_string(&file).expect("source"));
        if n > MAX_LINES {
            long.push(format!("{}: {n} lines", rel.display()));
        }
    }
    assert!(
        long.is_empty(),
        "split these by concern:\n{}",
        long.join("\n")
    );
}

/// The one file above `store` allowed to name redb: the restore's new
/// database file, made and migrated outside any open store (its `//!` says
/// why).
const REDB_OUTSIDE_STORE: &[&str] = &["backup/redb_target.rs"];

/// The places in `text` that name redb in code: its paths, and the macro
/// that converts its errors.
fn redb_mentions(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = code(line);
            code.contains("redb::") || code.contains("from_redb_errors")
        })
        .map(|(n, _)| n + 1)
        .collect()
}

#[test]
fn nothing_above_store_names_redb() {
    // Every module above `store` reads and writes through the seam
    // (`store::kv`), so a PostgreSQL store serves them unchanged.
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src()).unwrap_or(&file);
        // This file names it in its own checks' examples.
        let allowed = rel.starts_with("store")
            || rel == Path::new("layers_tests.rs")
            || REDB_OUTSIDE_STORE.iter().any(|a| rel == Path::new(a));
        if allowed {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("source");
        for line in redb_mentions(&text) {
            found.push(format!("{}:{line}", rel.display()));
        }
    }
    assert!(
        found.is_empty(),
        "redb named above the storage seam (use store::{{ReadTxn, WriteTxn, Table}}):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    let uses = used_modules(
        "use crate::http::ApiError; // crate::proxy\n/// crate::agent\nlet x = latchkey_crate::y; f(crate::net::x)",
    );
    assert_eq!(uses, [(1, "http".to_string()), (3, "net".to_string())]);
    let text = "a\nb\n#[cfg(test)]\nmod tests {\nc\n}\n";
    assert_eq!(non_test_lines(text), 2);
    assert_eq!(non_test_lines("a\nb\n"), 2);
    let text = "use redb::ReadableTable;\n// redb::Table in a comment\nx\ncrate::store::from_redb_errors!(E);";
    assert_eq!(redb_mentions(text), [1, 4]);
}
