//! The .deb, with real dpkg: its contents are exactly what
//! docs/PACKAGING.md lists, and install → upgrade → remove → purge in a
//! scratch root (`dpkg --root`, maintainer scripts run chrootless with
//! `DPKG_ROOT`) enables the service, keeps the data and the admin's
//! choice across an upgrade, keeps the data on `remove` and deletes it on
//! `purge`.
//!
//! The package comes from `LATCHKEY_DEB` (scripts/test.sh builds it once
//! with packaging/build-deb.sh); a path that does not exist fails the test.
//! Run ad hoc without it, the tests build it themselves.

use latchkey_e2e::{Out, run_cmd, run_cmd_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        if let Some(p) = std::env::var_os("LATCHKEY_DEB") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "LATCHKEY_DEB={} does not exist: packaging/build-deb.sh did not write it",
                p.display()
            );
            return p;
        }
        let c = Command::new(format!("{REPO}/packaging/build-deb.sh"));
        let out = run_cmd_for(c, b"", Duration::from_secs(1800));
        assert!(out.status.success(), "build-deb.sh failed:\n{}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "build-deb.sh prints one line: {:?}",
            out.stdout
        );
        let p = PathBuf::from(lines[0]);
        assert!(p.is_absolute() && p.is_file(), "{}", p.display());
        p
    })
}

fn ok(mut c: Command) -> Out {
    let shown = format!("{c:?}");
    c.env("LC_ALL", "C");
    let out = run_cmd_for(c, b"", Duration::from_secs(300));
    assert!(
        out.status.success(),
        "{shown} failed ({:?}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// The regular files and symlinks in the package, without the leading `./`.
fn package_files(deb: &Path) -> Vec<String> {
    let mut c = Command::new("dpkg-deb");
    c.arg("-c").arg(deb);
    let out = ok(c);
    let mut files: Vec<String> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches("./").to_string())
        .collect();
    files.sort();
    files
}

/// The paths listed in docs/PACKAGING.md's "Contents of the .deb" block.
fn documented_files() -> Vec<String> {
    let doc = std::fs::read_to_string(format!("{REPO}/docs/PACKAGING.md")).expect("PACKAGING.md");
    let section = doc
        .split("## Contents of the .deb")
        .nth(1)
        .expect("a `## Contents of the .deb` section");
    let block = section
        .split("```")
        .nth(1)
        .expect("a fenced list in that section");
    let mut files: Vec<String> = block
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .filter(|l| l.starts_with('/'))
        .map(|l| l.trim_start_matches('/').to_string())
        .collect();
    files.sort();
    files
}

#[test]
fn deb_contents_match_the_docs() {
    let deb = deb();
    assert_eq!(package_files(deb), documented_files());
    let mut c = Command::new("dpkg-deb");
    c.arg("-f").arg(deb).args(["Package", "Depends"]);
    let fields = ok(c).stdout;
    assert!(fields.contains("Package: latchkey"), "{fields}");
    assert!(fields.contains("libc6"), "dependencies computed: {fields}");
    // The unit in the package is the repository's.
    let x = tempfile::tempdir().expect("tmp");
    let mut c = Command::new("dpkg-deb");
    c.arg("-x").arg(deb).arg(x.path());
    ok(c);
    assert_eq!(
        std::fs::read(x.path().join("lib/systemd/system/latchkey.service")).expect("unit"),
        std::fs::read(format!("{REPO}/packaging/systemd/latchkey.service")).expect("repo unit")
    );
    let mut c = Command::new(x.path().join("usr/bin/latchkey"));
    c.arg("--version");
    assert!(ok(c).stdout.starts_with("latchkey "));
}

/// A scratch dpkg root.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("tmp");
        for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
            std::fs::write(dir.path().join(f), "").expect("touch");
        }
        Root { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `dpkg --root=ROOT ARGS…`: scripts run outside a chroot with
    /// `DPKG_ROOT` set; the scratch root has none of the host's packages.
    fn dpkg(&self, args: &[&str]) -> Out {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", self.dir.path().display()))
            .arg(format!("--log={}", self.path("var/log/dpkg.log").display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args);
        ok(c)
    }

    fn version(&self) -> Option<String> {
        let mut c = Command::new("dpkg-query");
        c.arg(format!(
            "--admindir={}",
            self.path("var/lib/dpkg").display()
        ))
        .args(["-W", "-f=${Version} ${Status}", "latchkey"]);
        let out = run_cmd(c, b"");
        out.status.success().then(|| out.stdout.trim().to_string())
    }

    fn enabled(&self) -> bool {
        self.path("etc/systemd/system/multi-user.target.wants/latchkey.service")
            .symlink_metadata()
            .is_ok()
    }

    /// `systemctl --root=ROOT ARGS`: what an admin's `systemctl disable`
    /// does to the files, offline.
    fn systemctl(&self, args: &[&str]) {
        let mut c = Command::new("systemctl");
        c.arg(format!("--root={}", self.dir.path().display()))
            .args(args);
        ok(c);
    }
}

/// The same package under another version (dpkg-deb unpacks and rebuilds
/// it): a real upgrade for dpkg.
fn with_version(deb: &Path, version: &str, out_dir: &Path) -> PathBuf {
    let tree = out_dir.join("tree");
    let mut c = Command::new("dpkg-deb");
    c.arg("-R").arg(deb).arg(&tree);
    ok(c);
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("control");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("Version:") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&control, text).expect("write control");
    let new = out_dir.join(format!("latchkey_{version}.deb"));
    let mut c = Command::new("dpkg-deb");
    c.args(["--root-owner-group", "-b"]).arg(&tree).arg(&new);
    ok(c);
    new
}

#[test]
fn install_upgrade_remove_purge_in_a_scratch_root() {
    let deb = deb();
    let r = Root::new();

    // Install: files in place, the service enabled, where to open it said.
    let out = r.dpkg(&["-i", deb.to_str().expect("utf-8")]);
    assert!(
        out.stdout.contains("https://localhost:8443/"),
        "postinst says where to open the setup:\n{}",
        out.stdout
    );
    assert!(out.stdout.contains("not started"), "{}", out.stdout);
    assert!(r.path("usr/bin/latchkey").is_file());
    assert!(r.path("lib/systemd/system/latchkey.service").is_file());
    assert!(r.enabled(), "postinst enables the unit");
    let v1 = r.version().expect("installed");
    assert!(v1.ends_with("install ok installed"), "{v1}");

    // What systemd makes for StateDirectory= with DynamicUser=: the data
    // under /var/lib/private, a symlink at /var/lib/latchkey.
    std::fs::create_dir_all(r.path("var/lib/private/latchkey")).expect("mkdir");
    std::fs::write(
        r.path("var/lib/private/latchkey/latchkey.toml"),
        "[log]\nlevel = \"debug\"\n",
    )
    .expect("config");
    std::fs::write(r.path("var/lib/private/latchkey/latchkey.redb"), b"data").expect("data");
    std::os::unix::fs::symlink("private/latchkey", r.path("var/lib/latchkey")).expect("symlink");
    let data_intact = || {
        std::fs::read(r.path("var/lib/latchkey/latchkey.redb")).ok() == Some(b"data".to_vec())
            && std::fs::read_to_string(r.path("var/lib/latchkey/latchkey.toml"))
                .is_ok_and(|t| t.contains("debug"))
    };

    // The admin disables the service; an upgrade keeps data, configuration
    // and that choice.
    r.systemctl(&["disable", "latchkey.service"]);
    assert!(!r.enabled());
    let scratch = tempfile::tempdir().expect("tmp");
    let newer = with_version(deb, "99.0.0-1", scratch.path());
    let out = r.dpkg(&["-i", newer.to_str().expect("utf-8")]);
    assert!(
        !out.stdout.contains("Latchkey is installed"),
        "an upgrade does not repeat the first-run message:\n{}",
        out.stdout
    );
    assert_eq!(
        r.version().as_deref(),
        Some("99.0.0-1 install ok installed")
    );
    assert!(data_intact(), "upgrade kept the data");
    assert!(!r.enabled(), "upgrade kept the admin's `disable`");
    r.systemctl(&["enable", "latchkey.service"]);
    assert!(r.enabled());

    // remove: the program goes, the data stays.
    r.dpkg(&["-r", "latchkey"]);
    assert!(!r.path("usr/bin/latchkey").exists());
    assert!(!r.path("lib/systemd/system/latchkey.service").exists());
    assert!(data_intact(), "remove keeps the data");

    // purge: the data goes too, and the enablement state.
    r.dpkg(&["-P", "latchkey"]);
    assert!(r.path("var/lib/latchkey").symlink_metadata().is_err());
    assert!(!r.path("var/lib/private/latchkey").exists());
    assert!(!r.enabled());
    assert!(
        r.version().is_none_or(|v| v.contains("not-installed")),
        "{:?}",
        r.version()
    );
    // Nothing outside the root was touched: the host has no such unit.
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/latchkey.service").exists());
}
