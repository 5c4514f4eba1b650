//! Reading secrets from stdin, a file, or a terminal prompt — never argv.

use anyhow::{Context, bail};
use latchkey_core::secrecy::SecretString;
use std::io::{IsTerminal, Read};
use std::path::Path;
use zeroize::Zeroizing;

/// Reads a whole secret from stdin, or prompts when stdin is a terminal.
/// One trailing newline is removed (what `echo` and editors add).
pub fn secret_from_stdin(prompt: &str) -> anyhow::Result<SecretString> {
    if std::io::stdin().is_terminal() {
        return prompt_tty(prompt);
    }
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take((latchkey_core::vault::record::MAX_SECRET_BYTES + 2) as u64)
        .read_to_end(&mut buf)
        .context("reading the secret from stdin")?;
    to_secret(buf, "stdin")
}

fn to_secret(mut buf: Zeroizing<Vec<u8>>, from: &str) -> anyhow::Result<SecretString> {
    if buf.ends_with(b"\n") {
        buf.pop();
        if buf.ends_with(b"\r") {
            buf.pop();
        }
    }
    let text = String::from_utf8(std::mem::take(&mut *buf))
        .map_err(|_| anyhow::anyhow!("the secret from {from} is not valid UTF-8"))?;
    Ok(SecretString::from(text))
}

/// Reads one line from stdin (used when stdin carries several secrets).
pub fn line_from_stdin(what: &str) -> anyhow::Result<SecretString> {
    let mut line = Zeroizing::new(String::new());
    let n = std::io::stdin()
        .read_line(&mut line)
        .with_context(|| format!("reading {what} from stdin"))?;
    if n == 0 {
        bail!("expected {what} on stdin, got end of input");
    }
    let trimmed = line.trim_end_matches(['\n', '\r']).to_string();
    Ok(SecretString::from(trimmed))
}

pub fn prompt_tty(prompt: &str) -> anyhow::Result<SecretString> {
    let value = rpassword::prompt_password(prompt).context("reading from the terminal")?;
    Ok(SecretString::from(value))
}

/// Reads the first line of a file holding a passphrase.
pub fn from_file(path: &Path) -> anyhow::Result<SecretString> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let line = text.lines().next().unwrap_or_default().to_string();
    Ok(SecretString::from(line))
}
