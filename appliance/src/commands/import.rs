//! `latchkey vault import`: moves a `.env` file (or JSON lines) into the
//! vault.
//!
//! Every entry is committed on its own and acknowledged on stdout
//! (`stored NAME`) only once it is durable, so an interrupted import can be
//! resumed from the last acknowledged line. The input is checked line by line
//! before anything is written: a malformed line stops the import before the
//! first write, naming the line.

use crate::cli::{ImportArgs, ImportFormat};
use crate::context::Context;
use crate::remote::Remote;
use anyhow::bail;
use latchkey_core::secrecy::SecretString;
use latchkey_core::vault::{Kind, NewRecord, record::validate_secret};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use zeroize::Zeroizing;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    name: String,
    secret: SecretString,
    kind: Option<Kind>,
    provider: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

struct Entry {
    record: NewRecord,
    secret: SecretString,
}

fn parse_env_line(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (k, v) = line.split_once('=')?;
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
        .unwrap_or(v);
    Some((k.trim().to_string(), v.to_string()))
}

fn parse(a: &ImportArgs, input: impl BufRead) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = Zeroizing::new(line.map_err(|e| anyhow::anyhow!("line {n}: {e}"))?);
        let entry = match a.format {
            ImportFormat::Env => {
                if line.trim().is_empty() || line.trim().starts_with('#') {
                    continue;
                }
                let Some((name, value)) = parse_env_line(&line) else {
                    bail!("line {n}: expected KEY=VALUE");
                };
                Entry {
                    record: NewRecord {
                        name,
                        kind: a.kind,
                        provider: a.provider.clone(),
                        labels: BTreeMap::new(),
                    },
                    secret: SecretString::from(value),
                }
            }
            ImportFormat::Jsonl => {
                if line.trim().is_empty() {
                    continue;
                }
                // serde_json's error names a column, never the value.
                let j: JsonEntry =
                    serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("line {n}: {e}"))?;
                Entry {
                    record: NewRecord {
                        name: j.name,
                        kind: j.kind.unwrap_or(a.kind),
                        provider: j.provider.or_else(|| a.provider.clone()),
                        labels: j.labels,
                    },
                    secret: j.secret,
                }
            }
        };
        entry
            .record
            .validate()
            .map_err(|e| anyhow::anyhow!("line {n}: {e}"))?;
        validate_secret(latchkey_core::secrecy::ExposeSecret::expose_secret(
            &entry.secret,
        ))
        .map_err(|e| anyhow::anyhow!("line {n}: {e}"))?;
        out.push(entry);
    }
    Ok(out)
}

pub fn run(ctx: &Context, a: ImportArgs) -> anyhow::Result<()> {
    let entries = parse(&a, std::io::stdin().lock())?;
    if entries.is_empty() {
        bail!("nothing to import: stdin held no entries");
    }
    let mut out = std::io::stdout().lock();
    let mut ack = |name: &str| -> anyhow::Result<()> {
        writeln!(out, "stored {}", crate::term::safe(name))?;
        Ok(out.flush()?)
    };
    match Remote::detect(ctx)? {
        // One request per entry: each answer means a durable commit.
        Some(remote) => {
            for e in &entries {
                remote.put(&e.record, &e.secret, a.replace)?;
                ack(&e.record.name)?;
            }
        }
        None => {
            let app = ctx.open_unsealed()?;
            for e in &entries {
                app.put_as_host(&e.record, &e.secret, a.replace)?;
                ack(&e.record.name)?;
            }
        }
    }
    eprintln!("Imported {} entries.", entries.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(format: ImportFormat) -> ImportArgs {
        ImportArgs {
            format,
            kind: Kind::ApiKey,
            provider: Some("openai".into()),
            replace: false,
        }
    }

    #[test]
    fn env_format() {
        let input =
            "# comment\nexport OPENAI_API_KEY=\"sk-1\"\n\nANTHROPIC_KEY='sk-2'\nPLAIN=x=y\n";
        let e = parse(&args(ImportFormat::Env), input.as_bytes()).expect("parse");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].record.name, "OPENAI_API_KEY");
        use latchkey_core::secrecy::ExposeSecret;
        assert_eq!(e[0].secret.expose_secret(), "sk-1");
        assert_eq!(e[1].secret.expose_secret(), "sk-2");
        assert_eq!(e[2].secret.expose_secret(), "x=y");
    }

    #[test]
    fn bad_line_is_named_without_its_value() {
        let input = "GOOD=1\nno equals sign here sk-SECRETVALUE\n";
        let err = parse(&args(ImportFormat::Env), input.as_bytes())
            .err()
            .expect("error");
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(!msg.contains("SECRETVALUE"), "{msg}");
        let err = parse(
            &args(ImportFormat::Jsonl),
            "{\"name\":\"a\",\"secret\":\"sk-SECRETVALUE\",\"x\":1}".as_bytes(),
        )
        .err()
        .expect("error");
        assert!(!err.to_string().contains("SECRETVALUE"), "{err}");
    }
}
