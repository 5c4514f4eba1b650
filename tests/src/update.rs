//! Fixtures for the update channel's tests (`it/update.rs`): throwaway
//! zipsign keys, "builds" of other versions, releases written by the real
//! `packaging/release.sh`, and a static file server on loopback.
//!
//! A build of another version is the real binary, stripped (smaller
//! archives, same code) with another version written into its version
//! slot (`latchkey_core::update::SLOT_MARKER`): what it runs is exactly
//! this workspace's code, without a second compile.

use crate::{Out, latchkey_bin, run_cmd, run_cmd_for};
use base64::Engine;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// This platform's target triple, as the binary's self-check reports it.
pub fn target() -> String {
    let mut c = Command::new(stripped());
    c.env("LATCHKEY_DATA_DIR", fixtures_dir().join("no-data"))
        .arg("self-check");
    let out = run_cmd(c, b"");
    assert!(out.status.success(), "self-check: {}", out.stderr);
    out.stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("target="))
        .expect("target= in the self-check line")
        .to_string()
}

/// Where fixtures built once per test run live (under the target
/// directory, so `cargo clean` removes them).
pub fn fixtures_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let bin = latchkey_bin();
        let dir = bin
            .parent()
            .expect("binary directory")
            .join("update-it")
            .join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
        std::fs::create_dir_all(&dir).expect("fixtures dir");
        dir
    })
    .clone()
}

/// The real binary, stripped, once.
pub fn stripped() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = fixtures_dir();
        let out = dir.join("latchkey.stripped");
        std::fs::copy(latchkey_bin(), &out).expect("copy the binary");
        let mut c = Command::new("strip");
        c.arg(&out);
        let s = run_cmd(c, b"");
        assert!(s.status.success(), "strip: {}", s.stderr);
        out
    })
    .clone()
}

/// The version the real binary calls itself.
pub fn current_version() -> String {
    let mut c = Command::new(stripped());
    c.arg("--version");
    let out = run_cmd(c, b"");
    out.stdout
        .trim()
        .strip_prefix("latchkey ")
        .expect("`latchkey VERSION`")
        .to_string()
}

/// A copy of the stripped binary that calls itself `version`.
pub fn build_of(version: &str) -> PathBuf {
    let out = fixtures_dir().join(format!("latchkey-{version}"));
    if out.exists() {
        return out;
    }
    let mut bytes = std::fs::read(stripped()).expect("read binary");
    let marker = latchkey_core::update::SLOT_MARKER;
    let found: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "exactly one version slot in the binary");
    let at = found[0] + marker.len();
    let room = latchkey_core::update::SLOT_LEN - marker.len();
    assert!(version.len() < room);
    bytes[at..at + room].fill(0);
    bytes[at..at + version.len()].copy_from_slice(version.as_bytes());
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &bytes).expect("write build");
    chmod_x(&tmp);
    std::fs::rename(&tmp, &out).expect("rename build");
    out
}

pub fn chmod_x(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A throwaway zipsign key pair.
pub struct Key {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl Key {
    /// `zipsign gen-key` into `dir` as `NAME.key` / `NAME.pub`.
    pub fn new(dir: &Path, name: &str) -> Key {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        if !private.exists() {
            let mut c = Command::new("zipsign");
            c.arg("gen-key").arg(&private).arg(&public);
            let out = run_cmd(c, b"");
            assert!(out.status.success(), "zipsign gen-key: {}", out.stderr);
        }
        Key { private, public }
    }

    /// What `update.public_keys` takes: base64 of the public key file.
    pub fn base64(&self) -> String {
        let bytes = std::fs::read(&self.public).expect("public key");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// The test signing key (shared by the run's tests).
pub fn key_a() -> &'static Key {
    static K: OnceLock<Key> = OnceLock::new();
    K.get_or_init(|| Key::new(&fixtures_dir(), "a"))
}

/// Another key nobody trusts.
pub fn key_b() -> &'static Key {
    static K: OnceLock<Key> = OnceLock::new();
    K.get_or_init(|| Key::new(&fixtures_dir(), "b"))
}

/// `packaging/release.sh --version V --key K --out DIR --binary B`
/// (fast compression: the archive's format is the same).
pub fn release(version: &str, key: &Key, out: &Path, binary: &Path) -> Out {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/release.sh");
    let mut c = Command::new("bash");
    c.arg(script)
        .args(["--version", version, "--key"])
        .arg(&key.private)
        .arg("--out")
        .arg(out)
        .arg("--binary")
        .arg(binary)
        .env("RELEASE_GZIP_LEVEL", "1");
    run_cmd_for(c, b"", Duration::from_secs(300))
}

/// The release of `version` signed with key A, made once per run.
pub fn good_release(version: &str) -> PathBuf {
    static MADE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = fixtures_dir().join(format!("release-{version}"));
    let mut made = MADE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !made.iter().any(|v| v == version) {
        let out = release(version, key_a(), &dir, &build_of(version));
        assert!(out.status.success(), "release.sh: {}", out.stderr);
        made.push(version.to_string());
    }
    dir
}

/// `tar.gz` holding `binary` as `latchkey`, unsigned.
pub fn unsigned_archive(binary: &Path, out: &Path) {
    let stage = tempfile::tempdir().expect("tempdir");
    std::fs::copy(binary, stage.path().join("latchkey")).expect("copy");
    chmod_x(&stage.path().join("latchkey"));
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg("tar -C \"$1\" -cf - latchkey | gzip -1n > \"$2\"")
        .arg("tar")
        .arg(stage.path())
        .arg(out);
    let r = run_cmd(c, b"");
    assert!(r.status.success(), "tar: {}", r.stderr);
}

/// `zipsign sign tar` of `input` into `output` with `context`.
pub fn zipsign(input: &Path, output: &Path, context: &str, key: &Key) {
    let mut c = Command::new("zipsign");
    c.args(["sign", "tar", "--force", "--context", context, "--output"])
        .arg(output)
        .arg(input)
        .arg(&key.private);
    let r = run_cmd_for(c, b"", Duration::from_secs(120));
    assert!(r.status.success(), "zipsign: {}", r.stderr);
}

/// A feed document for one artifact file.
pub fn feed_for(version: &str, target: &str, file: &Path, url: &str) -> String {
    let bytes = std::fs::read(file).expect("artifact");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    format!(
        r#"{{"version":"{version}","artifacts":{{"{target}":{{"url":"{url}","size":{},"sha256":"{sha}"}}}}}}"#,
        bytes.len()
    )
}

/// A static file server on loopback: `GET /NAME` answers the file `NAME`
/// of its directory (no subdirectories). Stops on drop.
pub struct StaticServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StaticServer {
    pub fn serve(dir: &Path) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, flag) = (dir.to_path_buf(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let dir = dir.clone();
                std::thread::spawn(move || answer(conn, &dir));
            }
        });
        StaticServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(conn: TcpStream, dir: &Path) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Skip the headers.
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let name = path.trim_start_matches('/');
    let mut conn = conn;
    let file = (!name.is_empty() && !name.contains('/') && !name.contains(".."))
        .then(|| std::fs::read(dir.join(name)).ok())
        .flatten();
    let _ = match file {
        Some(body) => conn
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .and_then(|()| conn.write_all(&body)),
        None => conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}
