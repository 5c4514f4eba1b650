//! The web UI's static files (`ui/web/`), embedded in the binary.
//!
//! There is no bundler and no Node.js in the build: the UI is plain ES
//! modules and CSS, so `cargo build` alone produces a complete appliance.
//! [`Assets::load`] reads every file once at start, computes its ETag and a
//! gzip copy, and `core::http::ui` serves them; nothing here knows HTTP.

use std::collections::HashMap;
use std::io::Write;

use bytes::Bytes;
use rust_embed::RustEmbed;
use sha2::{Digest, Sha256};

#[derive(RustEmbed)]
#[folder = "web/"]
struct Files;

/// One file of the UI, ready to send.
#[derive(Debug)]
pub struct Asset {
    /// The file as written.
    pub body: Bytes,
    /// gzip of `body`, when that is smaller.
    pub gzip: Option<Bytes>,
    /// `Content-Type`.
    pub content_type: String,
    /// A strong ETag (quoted), from the content's SHA-256.
    pub etag: String,
}

/// Every file of the UI by path (`index.html`, `assets/app.js`, …).
#[derive(Debug)]
pub struct Assets {
    files: HashMap<String, Asset>,
}

/// The page every UI route answers with.
pub const INDEX: &str = "index.html";

impl Assets {
    /// Loads and compresses every embedded file.
    pub fn load() -> Assets {
        let files = Files::iter()
            .filter_map(|path| {
                let file = Files::get(&path)?;
                let body = file.data.into_owned();
                let content_type = content_type(&path, file.metadata.mimetype());
                let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
                let gzip = compressible(&content_type)
                    .then(|| gzip(&body))
                    .flatten()
                    .filter(|z| z.len() < body.len())
                    .map(Bytes::from);
                Some((
                    path.into_owned(),
                    Asset {
                        body: Bytes::from(body),
                        gzip,
                        content_type,
                        etag,
                    },
                ))
            })
            .collect();
        Assets { files }
    }

    /// The file at `path` (no leading slash).
    pub fn get(&self, path: &str) -> Option<&Asset> {
        self.files.get(path)
    }

    /// The paths of every file, sorted.
    pub fn paths(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = self.files.keys().map(String::as_str).collect();
        paths.sort_unstable();
        paths
    }
}

fn content_type(path: &str, guessed: &str) -> String {
    // Text types carry their charset; module scripts must be JavaScript.
    match path.rsplit('.').next() {
        Some("js" | "mjs") => "text/javascript; charset=utf-8".into(),
        Some("css") => "text/css; charset=utf-8".into(),
        Some("html") => "text/html; charset=utf-8".into(),
        Some("svg") => "image/svg+xml".into(),
        Some("json") => "application/json".into(),
        Some("webmanifest") => "application/manifest+json".into(),
        _ => guessed.to_string(),
    }
}

fn compressible(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type.starts_with("image/svg")
        || content_type.starts_with("application/")
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_page_and_its_script_are_embedded_with_types_and_etags() {
        let assets = Assets::load();
        let index = assets.get(INDEX).expect("index.html is embedded");
        assert_eq!(index.content_type, "text/html; charset=utf-8");
        assert!(index.etag.starts_with('"') && index.etag.len() == 34);
        let html = String::from_utf8_lossy(&index.body);
        // Every script and stylesheet the page names must exist.
        for attr in ["src=\"/", "href=\"/"] {
            for part in html.split(attr).skip(1) {
                let path = part.split('"').next().unwrap_or_default();
                assert!(
                    assets.get(path).is_some(),
                    "index.html names /{path}, which is not embedded"
                );
            }
        }
    }

    #[test]
    fn compressed_copies_decompress_to_the_original() {
        use std::io::Read;
        let assets = Assets::load();
        let mut checked = 0;
        for path in assets.paths() {
            let asset = assets.get(path).expect("listed");
            if let Some(z) = &asset.gzip {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&z[..])
                    .read_to_end(&mut out)
                    .expect("valid gzip");
                assert_eq!(out, asset.body, "{path}");
                checked += 1;
            }
        }
        assert!(checked > 0, "the scripts and styles compress");
    }
}
