//! The systemd unit and `latchkey service`, with real tools: the unit
//! `service install` writes passes `systemd-analyze verify` with no
//! diagnostics and scores ≤ 2.0 in `systemd-analyze security --offline`;
//! install, status and uninstall drive a stand-in `systemctl` that records
//! its arguments; the refusals (not root, no systemd, a foreign unit, a
//! binary the sandbox cannot see) change nothing.

use latchkey_e2e::{Out, TestDir, latchkey_bin, run_cmd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The packaged unit, as in the repository.
const PACKAGED_UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/systemd/latchkey.service"
);

/// Where a copy of the binary goes: the target directory when the service
/// could see it, else `/var/lib` (a clone under /tmp or /home — CI checks
/// out anywhere — would be refused by `service install`, rightly).
fn visible_scratch_parent() -> PathBuf {
    let target = latchkey_bin()
        .parent()
        .expect("binary's directory")
        .to_path_buf();
    let hidden = ["/home", "/root", "/run/user", "/tmp", "/var/tmp"];
    if hidden.iter().any(|h| target.starts_with(h)) {
        PathBuf::from("/var/lib")
    } else {
        target
    }
}

/// A copy of the binary somewhere the hardened unit can see, and a
/// stand-in systemctl.
struct Setup {
    _bin_dir: tempfile::TempDir,
    bin: PathBuf,
    d: TestDir,
    systemctl: PathBuf,
    argv_log: PathBuf,
    units: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let bin_dir = tempfile::Builder::new()
            .prefix("service-e2e-")
            .tempdir_in(visible_scratch_parent())
            .expect("scratch dir the service could see");
        let bin = bin_dir.path().join("latchkey");
        std::fs::copy(latchkey_bin(), &bin).expect("copy the binary");
        let d = TestDir::new();
        let argv_log = d.path().join("systemctl.argv");
        let systemctl = d.path().join("systemctl");
        std::fs::write(
            &systemctl,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$1\" in\n  is-enabled) echo enabled ;;\n  \
                 is-active) echo activating ;;\nesac\n",
                argv_log.display()
            ),
        )
        .expect("write stand-in");
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let units = d.path().join("units");
        Setup {
            _bin_dir: bin_dir,
            bin,
            d,
            systemctl,
            argv_log,
            units,
        }
    }

    /// `BIN service ARGS… --systemctl STAND-IN --unit-dir UNITS`.
    fn service(&self, bin: &Path, args: &[&str]) -> Out {
        let mut c = Command::new(bin);
        c.arg("service").args(args);
        c.arg("--systemctl").arg(&self.systemctl);
        c.arg("--unit-dir").arg(&self.units);
        c.arg("--state-dir").arg(self.d.data());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        run_cmd(c, b"")
    }

    fn argv(&self) -> Vec<String> {
        std::fs::read_to_string(&self.argv_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn unit(&self) -> PathBuf {
        self.units.join("latchkey.service")
    }
}

fn error_line(out: &Out) -> &str {
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    out.stderr
        .lines()
        .rfind(|l| l.starts_with("latchkey: "))
        .unwrap_or_else(|| panic!("no one-line error in {}", out.stderr))
}

/// `systemd-analyze security --offline=true UNIT`'s overall exposure.
fn exposure(unit: &Path) -> f64 {
    let mut c = Command::new("systemd-analyze");
    c.args(["security", "--offline=true", "--no-pager"])
        .arg(unit);
    let out = run_cmd(c, b"");
    let text = format!("{}{}", out.stdout, out.stderr);
    text.lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|score| score.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"))
}

#[test]
fn install_writes_a_unit_that_verifies_clean_and_scores_at_most_2() {
    let s = Setup::new();
    let out = s.service(&s.bin, &["install"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        s.argv(),
        [
            "daemon-reload",
            "enable --now latchkey.service latchkey-update.timer"
        ],
        "systemctl calls"
    );
    assert!(
        out.stdout
            .contains("Open:          https://localhost:8443/"),
        "says where to open the setup:\n{}",
        out.stdout
    );
    assert!(out.stdout.contains("setup"), "{}", out.stdout);

    let unit = std::fs::read_to_string(s.unit()).expect("unit written");
    let exec = format!("\nExecStart={} serve\n", s.bin.display());
    assert!(unit.contains(&exec), "{unit}");
    let mode = std::fs::metadata(s.unit())
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
    // The rest is the packaged unit, line for line.
    let packaged = std::fs::read_to_string(PACKAGED_UNIT).expect("packaged unit");
    let differing: Vec<_> = packaged
        .lines()
        .zip(unit.lines().skip(1))
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(differing.len(), 1, "{differing:?}");

    // The updater's unit may write only this binary's directory (besides
    // the service's state), and runs this binary.
    let update = std::fs::read_to_string(s.units.join("latchkey-update.service"))
        .expect("updater unit written");
    let dir = s.bin.parent().expect("dir").display().to_string();
    assert!(
        update.contains(&format!(
            "\nReadWritePaths={dir} /var/lib/private/latchkey\n"
        )),
        "{update}"
    );
    assert!(
        update.contains(&format!(
            "\nExecStart={} update --scheduled\n",
            s.bin.display()
        )),
        "{update}"
    );

    // systemd's own verifier on all three: no diagnostics at all (a
    // misspelt key only warns, so any output fails).
    let mut c = Command::new("systemd-analyze");
    c.args(["verify", "--man=no"])
        .arg(s.unit())
        .arg(s.units.join("latchkey-update.service"))
        .arg(s.units.join("latchkey-update.timer"));
    let v = run_cmd(c, b"");
    assert!(
        v.status.success() && v.stdout.trim().is_empty() && v.stderr.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{}{}",
        v.status,
        v.stdout,
        v.stderr
    );
    let score = exposure(&s.unit());
    assert!(score <= 2.0, "exposure {score} > 2.0");
    assert_eq!(
        exposure(Path::new(PACKAGED_UNIT)),
        score,
        "the packaged unit scores the same"
    );

    // The TPM-credential drop-in example, installed beside it, is valid
    // too (verify reads `latchkey.service.d/`) and weakens nothing.
    let dropins = s.units.join("latchkey.service.d");
    std::fs::create_dir_all(&dropins).expect("mkdir");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/systemd/tpm-credential.conf.example"
        ),
        dropins.join("credential.conf"),
    )
    .expect("copy drop-in");
    let mut c = Command::new("systemd-analyze");
    c.args(["verify", "--man=no"]).arg(s.unit());
    let v = run_cmd(c, b"");
    assert!(
        v.status.success() && v.stdout.trim().is_empty() && v.stderr.trim().is_empty(),
        "with the drop-in: {:?}\n{}{}",
        v.status,
        v.stdout,
        v.stderr
    );
    assert!(exposure(&s.unit()) <= score);

    // Installing again replaces our own unit.
    let again = s.service(&s.bin, &["install"]);
    assert!(again.status.success(), "{}", again.stderr);
}

#[test]
fn status_explains_and_uninstall_removes_only_our_unit() {
    let s = Setup::new();
    let none = s.service(&s.bin, &["status"]);
    assert!(none.status.success(), "{}", none.stderr);
    assert!(none.stdout.contains("Unit:     none"), "{}", none.stdout);
    let out = s.service(&s.bin, &["install"]);
    assert!(out.status.success(), "{}", out.stderr);

    let st = s.service(&s.bin, &["status"]);
    assert!(st.status.success(), "{}", st.stderr);
    assert!(
        st.stdout.contains("written by `latchkey service install`"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout.contains("Enabled:  enabled — starts at boot"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout
            .contains("Running:  activating — starting, or waiting to be ready"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout
            .contains("Updates:  latchkey-update.timer enabled — looks for signed releases daily"),
        "{}",
        st.stdout
    );

    let un = s.service(&s.bin, &["uninstall"]);
    assert!(un.status.success(), "{}", un.stderr);
    assert!(!s.unit().exists());
    assert!(!s.units.join("latchkey-update.service").exists());
    assert!(!s.units.join("latchkey-update.timer").exists());
    assert!(un.stdout.contains("data is kept"), "{}", un.stdout);
    let argv = s.argv();
    assert_eq!(
        argv[argv.len() - 2..],
        [
            "disable --now latchkey.service latchkey-update.timer",
            "daemon-reload"
        ]
    );
    let again = s.service(&s.bin, &["uninstall"]);
    assert!(error_line(&again).contains("nothing to uninstall"));

    // A unit someone else wrote is neither replaced nor removed.
    std::fs::create_dir_all(&s.units).expect("mkdir");
    let foreign = "[Service]\nExecStart=/usr/bin/true\n";
    std::fs::write(s.unit(), foreign).expect("write");
    let calls = s.argv().len();
    let err = s.service(&s.bin, &["uninstall"]);
    assert!(
        error_line(&err).contains("not written by"),
        "{}",
        err.stderr
    );
    let err = s.service(&s.bin, &["install"]);
    assert!(
        error_line(&err).contains("not replacing it"),
        "{}",
        err.stderr
    );
    assert_eq!(std::fs::read_to_string(s.unit()).expect("read"), foreign);
    assert_eq!(s.argv().len(), calls, "systemctl was not called");
}

#[test]
fn install_refuses_without_root_systemd_or_a_visible_binary() {
    let s = Setup::new();

    // A binary under /tmp: PrivateTmp= would hide it from the service.
    let tmp = tempfile::Builder::new()
        .prefix("latchkey-e2e-")
        .tempdir_in("/tmp")
        .expect("tmp");
    let in_tmp = tmp.path().join("latchkey");
    std::fs::copy(&s.bin, &in_tmp).expect("copy");
    let err = s.service(&in_tmp, &["install"]);
    assert!(
        error_line(&err).contains("which the hardened service cannot see"),
        "{}",
        err.stderr
    );

    // Not root (as nobody, through setpriv).
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&s.bin)
        .args(["service", "install", "--systemctl"])
        .arg(&s.systemctl)
        .arg("--unit-dir")
        .arg(&s.units)
        .env_clear();
    let out = run_cmd(c, b"");
    assert!(
        error_line(&out).contains("only root can install"),
        "{}",
        out.stderr
    );

    // No systemd as PID 1 (this container): the real systemctl is not run.
    if !Path::new("/run/systemd/system").exists() {
        let mut c = Command::new(&s.bin);
        c.args(["service", "install", "--unit-dir"])
            .arg(&s.units)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let out = run_cmd(c, b"");
        assert!(
            error_line(&out).contains("systemd is not running"),
            "{}",
            out.stderr
        );
    }
    assert!(!s.units.exists(), "nothing was written");
    assert!(s.argv().is_empty(), "systemctl was never called");
}
