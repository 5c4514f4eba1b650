//! The update channel end to end: `latchkey update` against feeds served
//! on loopback, releases written by `packaging/release.sh` and signed with
//! zipsign, the installed binary a copy in a temporary directory (the
//! process replaces its own file, as it does in production). Each refusal
//! is checked for its reason and for the binary being byte-for-byte what
//! it was; the rollbacks for the previous build being back.

use latchkey_e2e::update::{
    StaticServer, build_of, chmod_x, current_version, feed_for, good_release, key_a, key_b,
    stripped, target, unsigned_archive, zipsign,
};
use latchkey_e2e::{Out, run_cmd_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The version every "newer build" calls itself.
const NEW: &str = "99.0.0";

/// An installation: a binary in `bin/`, a data directory, the trusted
/// keys, and stand-ins for systemctl and dpkg.
struct Install {
    tmp: tempfile::TempDir,
    original: Vec<u8>,
    keys: String,
}

impl Install {
    /// The real binary (or `binary`) installed as `bin/latchkey`, trusting
    /// key A.
    fn new() -> Install {
        Install::of(&stripped())
    }

    fn of(binary: &Path) -> Install {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("bin")).expect("bin");
        std::fs::create_dir_all(tmp.path().join("data")).expect("data");
        let bin = tmp.path().join("bin/latchkey");
        std::fs::copy(binary, &bin).expect("install");
        chmod_x(&bin);
        let original = std::fs::read(&bin).expect("read");
        let install = Install {
            tmp,
            original,
            keys: key_a().base64(),
        };
        install.standin("systemctl", "is-active) exit 3 ;;");
        install.standin(
            "dpkg",
            "-S) echo \"dpkg-query: no path found matching pattern $2\" >&2; exit 1 ;;",
        );
        install
    }

    fn bin(&self) -> PathBuf {
        self.tmp.path().join("bin/latchkey")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("standin.log")).unwrap_or_default()
    }

    /// A stand-in script `NAME` that logs its arguments and answers with
    /// `cases` (a shell `case "$1"` body).
    fn standin(&self, name: &str, cases: &str) {
        let path = self.tmp.path().join(name);
        let script = format!(
            "#!/bin/sh\necho \"{name} $*\" >> \"{log}\"\ncase \"$1\" in\n{cases}\nesac\nexit 0\n",
            log = self.tmp.path().join("standin.log").display()
        );
        std::fs::write(&path, script).expect("stand-in");
        chmod_x(&path);
    }

    /// `bin/latchkey update ARGS…` as the updater would run it.
    fn update(&self, args: &[&str]) -> Out {
        let mut c = Command::new(self.bin());
        c.arg("update")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("LATCHKEY_DATA_DIR", self.tmp.path().join("data"))
            .env("LATCHKEY_UPDATE__PUBLIC_KEYS", &self.keys)
            .env("LATCHKEY_SYSTEMCTL", self.tmp.path().join("systemctl"))
            .env("LATCHKEY_DPKG", self.tmp.path().join("dpkg"))
            .env("STANDIN_BIN", self.bin());
        run_cmd_for(c, b"", Duration::from_secs(120))
    }

    fn version(&self) -> String {
        let mut c = Command::new(self.bin());
        c.arg("--version");
        run_cmd_for(c, b"", Duration::from_secs(30))
            .stdout
            .trim()
            .to_string()
    }

    /// Refused: exit 1, one `latchkey: refused…` line containing `reason`,
    /// the binary untouched, nothing left beside it.
    fn assert_refused(&self, out: &Out, reason: &str) {
        assert_eq!(
            out.status.code(),
            Some(1),
            "stdout={} stderr={}",
            out.stdout,
            out.stderr
        );
        let line = out
            .stderr
            .lines()
            .rfind(|l| l.starts_with("latchkey: "))
            .unwrap_or_else(|| panic!("no error line: {}", out.stderr));
        assert!(line.contains(reason), "expected `{reason}` in: {line}");
        self.assert_untouched();
        assert!(
            !self.tmp.path().join("data/update-report.json").exists(),
            "a refusal before the swap leaves no install report"
        );
    }

    fn assert_untouched(&self) {
        assert!(
            std::fs::read(self.bin()).expect("read") == self.original,
            "the binary changed"
        );
        let names: Vec<String> = std::fs::read_dir(self.tmp.path().join("bin"))
            .expect("bin")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "latchkey" && n != "latchkey.previous")
            .collect();
        assert!(names.is_empty(), "left beside the binary: {names:?}");
    }

    fn report(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.tmp.path().join("data/update-report.json"))
            .expect("update report");
        serde_json::from_str(&text).expect("report JSON")
    }
}

/// A served directory with a feed (and whatever artifacts are put there).
struct Channel {
    dir: tempfile::TempDir,
    server: StaticServer,
}

impl Channel {
    fn new() -> Channel {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = StaticServer::serve(dir.path());
        Channel { dir, server }
    }

    /// The good signed release of `version`, copied in.
    fn with_release(version: &str) -> Channel {
        let ch = Channel::new();
        let from = good_release(version);
        for e in std::fs::read_dir(from).expect("release").flatten() {
            std::fs::copy(e.path(), ch.dir.path().join(e.file_name())).expect("copy");
        }
        ch
    }

    fn put(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.path().join(name), bytes).expect("write");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn feed(&self) -> String {
        self.server.url("latest.json")
    }
}

fn artifact(version: &str) -> String {
    format!("latchkey-{version}-{}.tar.gz", target())
}

#[test]
fn a_newer_signed_build_is_installed_and_runs() {
    let ch = Channel::with_release(NEW);
    let inst = Install::new();
    let old_version = inst.version();
    assert_eq!(old_version, format!("latchkey {}", current_version()));

    let check = inst.update(&["--check", "--feed", &ch.feed()]);
    assert!(check.status.success(), "{}", check.stderr);
    assert!(
        check.stdout.contains(&format!("update available: {NEW}")),
        "{}",
        check.stdout
    );
    inst.assert_untouched();

    // Under a service manager whose latchkey.service runs and restarts.
    inst.standin("systemctl", "is-active) exit 0 ;;\nrestart) exit 0 ;;");
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("installed latchkey {NEW}")),
        "{}",
        out.stdout
    );
    assert_eq!(inst.version(), format!("latchkey {NEW}"));
    let previous = std::fs::read(inst.tmp.path().join("bin/latchkey.previous")).expect("previous");
    assert!(
        previous == inst.original,
        "latchkey.previous is the build that ran before"
    );
    assert!(
        inst.log().contains("systemctl restart latchkey.service"),
        "the service was restarted: {}",
        inst.log()
    );
    let report = inst.report();
    assert_eq!(report["outcome"], "installed");
    assert_eq!(report["to"], NEW);

    // Running it again: the same version is not installed twice.
    let again = inst.update(&["--yes", "--feed", &ch.feed()]);
    assert!(again.status.success(), "{}", again.stderr);
    assert!(again.stdout.contains("is up to date"), "{}", again.stdout);
}

#[test]
fn an_artifact_signed_with_an_untrusted_key_is_refused() {
    let ch = Channel::with_release(NEW);
    let mut inst = Install::new();
    inst.keys = key_b().base64();
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    inst.assert_refused(&out, "does not verify with any trusted key");
}

#[test]
fn an_unsigned_artifact_is_refused() {
    let ch = Channel::new();
    let name = artifact(NEW);
    unsigned_archive(&build_of(NEW), &ch.path(&name));
    ch.put(
        "latest.json",
        feed_for(NEW, &target(), &ch.path(&name), &name).as_bytes(),
    );
    let inst = Install::new();
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    inst.assert_refused(&out, "carries no valid signature");
}

#[test]
fn a_tampered_artifact_is_refused() {
    let ch = Channel::with_release(NEW);
    let name = artifact(NEW);
    let mut bytes = std::fs::read(ch.path(&name)).expect("artifact");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    ch.put(&name, &bytes);
    let inst = Install::new();
    // The feed still states the original hash: caught by SHA-256.
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    inst.assert_refused(&out, "SHA-256 does not match");
    // The attacker rewrote the feed too: caught by the signature.
    ch.put(
        "latest.json",
        feed_for(NEW, &target(), &ch.path(&name), &name).as_bytes(),
    );
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    inst.assert_refused(&out, "does not verify with any trusted key");
}

#[test]
fn a_truncated_download_is_refused() {
    let ch = Channel::with_release(NEW);
    let name = artifact(NEW);
    let bytes = std::fs::read(ch.path(&name)).expect("artifact");
    ch.put(&name, &bytes[..bytes.len() / 3]);
    let inst = Install::new();
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    inst.assert_refused(&out, "truncated or altered download");
}

#[test]
fn older_and_equal_versions_are_not_installed() {
    let ch = Channel::with_release(NEW);
    // Running a newer build than the feed offers: a downgrade, refused.
    let inst = Install::of(&build_of("100.0.0"));
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    inst.assert_refused(&out, "older than the running 100.0.0 (no downgrades)");
    // Running the feed's version: nothing to do, nothing touched.
    let inst = Install::of(&build_of(NEW));
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("is up to date"), "{}", out.stdout);
    inst.assert_untouched();
}

#[test]
fn a_signed_build_replayed_as_another_version_is_refused() {
    // The 99.0.0 artifact, genuinely signed, offered as 100.0.0: its
    // signature's context is its real name, so it does not verify.
    let ch = Channel::with_release(NEW);
    let replayed = artifact("100.0.0");
    std::fs::rename(ch.path(&artifact(NEW)), ch.path(&replayed)).expect("rename");
    ch.put(
        "latest.json",
        feed_for("100.0.0", &target(), &ch.path(&replayed), &replayed).as_bytes(),
    );
    let inst = Install::new();
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    inst.assert_refused(&out, "does not verify with any trusted key");
}

#[test]
fn another_platforms_artifact_is_refused() {
    let ch = Channel::new();
    let foreign = "latchkey-99.0.0-aarch64-unknown-linux-gnu.tar.gz";
    let unsigned = ch.path("unsigned.tar.gz");
    unsigned_archive(&build_of(NEW), &unsigned);
    zipsign(&unsigned, &ch.path(foreign), foreign, key_a());
    // Listed only for another platform.
    ch.put(
        "latest.json",
        feed_for(NEW, "aarch64-unknown-linux-gnu", &ch.path(foreign), foreign).as_bytes(),
    );
    let inst = Install::new();
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    inst.assert_refused(&out, "has no artifact for this platform");
    // Signed for another platform, offered as ours: the context differs.
    let ours = artifact(NEW);
    std::fs::copy(ch.path(foreign), ch.path(&ours)).expect("copy");
    ch.put(
        "latest.json",
        feed_for(NEW, &target(), &ch.path(&ours), &ours).as_bytes(),
    );
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    inst.assert_refused(&out, "does not verify with any trusted key");
}

#[test]
fn a_build_that_fails_its_self_check_is_rolled_back() {
    let ch = Channel::new();
    let name = artifact(NEW);
    // A signed release whose binary cannot run its self-check here.
    let broken = ch.path("broken-latchkey");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'cannot start on this machine' >&2\nexit 1\n",
    )
    .expect("write");
    chmod_x(&broken);
    let unsigned = ch.path("unsigned.tar.gz");
    unsigned_archive(&broken, &unsigned);
    zipsign(&unsigned, &ch.path(&name), &name, key_a());
    ch.put(
        "latest.json",
        feed_for(NEW, &target(), &ch.path(&name), &name).as_bytes(),
    );
    let inst = Install::new();
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("rolled back"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("failed its self-check: cannot start on this machine"),
        "{}",
        out.stderr
    );
    inst.assert_untouched();
    assert_eq!(inst.version(), format!("latchkey {}", current_version()));
    let report = inst.report();
    assert_eq!(report["outcome"], "rolled_back");
}

#[test]
fn a_build_that_does_not_become_ready_is_rolled_back_and_restarted() {
    let ch = Channel::with_release(NEW);
    let inst = Install::new();
    // The service manager stand-in: the unit runs; a restart on the new
    // build never reaches readiness, one on any other build does.
    inst.standin(
        "systemctl",
        &format!(
            "is-active) exit 0 ;;\nrestart) [ \"$(\"$STANDIN_BIN\" --version)\" = \"latchkey {NEW}\" ] && exit 1; exit 0 ;;"
        ),
    );
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("rolled back"), "{}", out.stderr);
    assert!(
        out.stderr.contains("did not become ready"),
        "{}",
        out.stderr
    );
    inst.assert_untouched();
    let restarts = inst
        .log()
        .matches("systemctl restart latchkey.service")
        .count();
    assert_eq!(
        restarts,
        2,
        "the new build, then the previous one: {}",
        inst.log()
    );
    assert_eq!(inst.report()["outcome"], "rolled_back");
}

#[test]
fn a_binary_the_package_manager_owns_is_not_replaced() {
    let ch = Channel::with_release(NEW);
    let inst = Install::new();
    inst.standin("dpkg", "-S) echo \"latchkey: $2\"; exit 0 ;;");
    let out = inst.update(&["--yes", "--feed", &ch.feed()]);
    inst.assert_refused(&out, "belongs to the Debian package `latchkey`");
}

#[test]
fn plain_http_feeds_are_refused_off_loopback() {
    let inst = Install::new();
    let out = inst.update(&["--check", "--feed", "http://192.0.2.7/latest.json"]);
    inst.assert_refused(&out, "plain http:// is allowed only to a loopback host");
    let out = inst.update(&["--check"]);
    inst.assert_refused(&out, "no feed: set update.feed or pass --feed URL");
}

/// Where the unit files are.
fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

#[test]
fn the_updater_units_verify_clean() {
    // Copied with ExecStart= pointing at this build (the verifier checks
    // that the program exists); nothing else changed.
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = latchkey_e2e::latchkey_bin();
    for name in ["latchkey-update.service", "latchkey-update.timer"] {
        let text = std::fs::read_to_string(units_dir().join(name)).expect("unit");
        let text = text.replace("/usr/bin/latchkey ", &format!("{} ", bin.display()));
        std::fs::write(tmp.path().join(name), text).expect("write");
    }
    let mut c = Command::new("systemd-analyze");
    c.args(["verify", "--man=no"])
        .arg(tmp.path().join("latchkey-update.service"))
        .arg(tmp.path().join("latchkey-update.timer"));
    let out = run_cmd_for(c, b"", Duration::from_secs(60));
    assert!(
        out.status.success() && out.stdout.trim().is_empty() && out.stderr.trim().is_empty(),
        "systemd-analyze verify: status {:?}\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

#[test]
fn the_updater_unit_exposure_is_at_most_2() {
    let mut c = Command::new("systemd-analyze");
    c.args(["security", "--offline=true", "--no-pager"])
        .arg(units_dir().join("latchkey-update.service"));
    let out = run_cmd_for(c, b"", Duration::from_secs(60));
    let text = format!("{}{}", out.stdout, out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for latchkey-update.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    assert!(
        score <= 2.0,
        "exposure {score} > 2.0 (docs/UPDATES.md states it):\n{text}"
    );
}

#[test]
fn the_server_shows_an_available_update_and_audits_it_and_the_last_install() {
    use latchkey_e2e::{ServeOpts, TestDir, spawn_server};
    // The server only reads the feed; no artifact needs to exist.
    let ch = Channel::new();
    let name = artifact(NEW);
    ch.put(
        "latest.json",
        format!(
            r#"{{"version":"{NEW}","notes":"Faster.","artifacts":{{"{}":{{"url":"{name}","size":10,"sha256":"{}"}}}}}}"#,
            target(),
            "ab".repeat(32)
        )
        .as_bytes(),
    );
    let d = TestDir::new();
    std::fs::create_dir_all(d.data()).expect("data");
    // What `latchkey update` left after a rollback.
    std::fs::write(
        d.data().join("update-report.json"),
        format!(
            r#"{{"at":1800000000,"from":"{}","to":"98.0.0","outcome":"rolled_back","reason":"the new build failed its self-check"}}"#,
            current_version()
        ),
    )
    .expect("report");
    let mut s = spawn_server(
        &d,
        &ServeOpts::new().env("LATCHKEY_UPDATE__FEED", &ch.feed()),
    );
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        let r = s.api("GET", "/api/status", None);
        assert_eq!(r.status, 200, "{}", r.body);
        status = serde_json::from_str(&r.body).expect("status JSON");
        if !status["update"]["checked_at"].is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let u = &status["update"];
    assert_eq!(u["available"], true, "{status}");
    assert_eq!(u["latest"], NEW);
    assert_eq!(u["current"], current_version());
    assert_eq!(u["notes"], "Faster.");
    assert_eq!(u["last_install"]["outcome"], "rolled_back");
    let audit = s.api("GET", "/api/audit?limit=100", None);
    assert_eq!(audit.status, 200, "{}", audit.body);
    assert_eq!(
        audit.body.matches("\"update.available\"").count(),
        1,
        "{}",
        audit.body
    );
    assert_eq!(
        audit.body.matches("\"update.install\"").count(),
        1,
        "{}",
        audit.body
    );
    assert!(
        audit.body.contains("failed its self-check"),
        "{}",
        audit.body
    );
    assert!(d.data().join("update-report.seen.json").exists());
    s.stop();
}
