//! Downloading and verifying, with `self_update`'s bounded download and
//! its zipsign signature check. Nothing here touches the installed
//! binary: an artifact is staged in a temporary directory beside it (so
//! the swap is one rename on the same file system) and removed with it.

use anyhow::{Context as _, anyhow, bail};
use latchkey_core::update::feed::{self, Artifact, Feed, MAX_FEED_BYTES};
use latchkey_core::update::{TARGET, VerifyingKey};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Time limit for the feed.
const FEED_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit for an artifact.
const ARTIFACT_TIMEOUT: Duration = Duration::from_secs(600);

/// A verified artifact, staged beside the binary.
pub struct Staged {
    /// Its file name (the signature's context).
    pub name: String,
    /// The directory it and the extracted binary live in (removed on drop).
    pub dir: tempfile::TempDir,
    /// The extracted `latchkey`.
    pub binary: PathBuf,
}

fn download(
    url: &url::Url,
    cap: u64,
    timeout: Duration,
    dest: impl std::io::Write,
) -> anyhow::Result<()> {
    // The one crypto provider of the binary (reqwest is built without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    self_update::Download::from_url(url.as_str())
        .timeout(timeout)
        .max_download_size(cap)
        .download_to(dest)
        .map_err(|e| anyhow!("{}", one_line(&e)))
}

/// Reads and parses the feed (at most [`MAX_FEED_BYTES`]).
pub fn feed(url: &url::Url) -> anyhow::Result<Feed> {
    let mut bytes = Vec::new();
    download(url, MAX_FEED_BYTES as u64, FEED_TIMEOUT, &mut bytes)
        .with_context(|| format!("reading the feed {url}"))?;
    feed::parse(&bytes).map_err(|e| anyhow!("refused: {e}"))
}

/// Downloads `artifact` for `version`, checks size, SHA-256 and signature,
/// and extracts `latchkey` from it.
pub fn artifact(
    url: &url::Url,
    version: &semver::Version,
    artifact: &Artifact,
    keys: &[VerifyingKey],
    binary: &Path,
) -> anyhow::Result<Staged> {
    let beside = binary
        .parent()
        .ok_or_else(|| anyhow!("the binary {} has no directory", binary.display()))?;
    let dir = tempfile::Builder::new()
        .prefix(".latchkey-update-")
        .tempdir_in(beside)
        .with_context(|| format!("cannot write beside the binary in {}", beside.display()))?;
    // The name it is verified under is ours, not the server's: version and
    // platform are what the signature must bind.
    let name = feed::artifact_name(version, TARGET);
    let path = dir.path().join(&name);
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // One byte over the stated size is enough to tell "too long".
    download(
        url,
        artifact.size.saturating_add(1),
        ARTIFACT_TIMEOUT,
        std::io::BufWriter::new(file),
    )
    .map_err(|e| anyhow!("refused: downloading {name} failed: {e}"))?;
    let got = std::fs::metadata(&path)?.len();
    if got != artifact.size {
        bail!(
            "refused: {name} is {got} bytes, the feed says {} (truncated or altered download)",
            artifact.size
        );
    }
    let digest = sha256_file(&path)?;
    if digest != artifact.sha256 {
        bail!("refused: {name}'s SHA-256 does not match the feed (altered or corrupted download)");
    }
    verify_signature(&path, keys).map_err(|e| anyhow!("refused: {name}: {e}"))?;
    let out = dir.path().join("extracted");
    std::fs::create_dir(&out)?;
    self_update::Extract::from_source(&path)
        .extract_file(&out, "latchkey")
        .map_err(|e| anyhow!("refused: {name} holds no file `latchkey`: {}", one_line(&e)))?;
    let extracted = out.join("latchkey");
    let meta = std::fs::symlink_metadata(&extracted)?;
    if !meta.is_file() {
        bail!("refused: `latchkey` in {name} is not a regular file");
    }
    Ok(Staged {
        name,
        dir,
        binary: extracted,
    })
}

/// Why a signature check failed, in one line.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// Never reached with the compiled-in key, but `self_update` accepts
    /// anything when its key list is empty: refused here first.
    #[error("no trusted keys to verify with")]
    NoKeys,
    #[error(
        "its signature does not verify with any trusted key (wrong key, or the artifact or its version was altered)"
    )]
    NoMatch,
    #[error("it carries no valid signature (unsigned or damaged): {0}")]
    Unsigned(String),
}

/// zipsign's ed25519 check over the `.tar.gz`, its file name as context.
pub fn verify_signature(path: &Path, keys: &[VerifyingKey]) -> Result<(), SignatureError> {
    if keys.is_empty() {
        return Err(SignatureError::NoKeys);
    }
    self_update::verify_signature(path, keys).map_err(|e| {
        let mut cause: Option<&dyn std::error::Error> = Some(&e);
        while let Some(c) = cause {
            if c.to_string().contains("no matching key/signature pair") {
                return SignatureError::NoMatch;
            }
            cause = c.source();
        }
        SignatureError::Unsigned(one_line(&e))
    })
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// An error and its causes on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `self_update::verify_signature` passes anything when given no keys;
    /// ours must refuse, even an artifact with no signature at all.
    #[test]
    fn an_empty_key_list_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir
            .path()
            .join("latchkey-1.0.0-x86_64-unknown-linux-gnu.tar.gz");
        std::fs::write(&path, b"not even an archive").expect("write");
        assert!(
            self_update::verify_signature(&path, &[]).is_ok(),
            "self_update still accepts anything with no keys: this guard matters"
        );
        assert!(matches!(
            verify_signature(&path, &[]),
            Err(SignatureError::NoKeys)
        ));
        assert!(verify_signature(&path, &[[7u8; 32]]).is_err());
    }
}
