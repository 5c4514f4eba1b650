//! The desktop app (`latchkey-desktop`, src-tauri/) end to end: the real
//! release binary in a real WebKitGTK window under Xvfb, driven over
//! WebDriver (`tauri-driver` + Debian's `WebKitWebDriver`), with a D-Bus
//! session of its own and gnome-keyring as the Secret Service
//! (`latchkey_e2e::desktop`). Screenshots of each step go to
//! `target/desktop-e2e/`.

use crate::proxy::Mock;
use latchkey_e2e::caddy::free_port;
use latchkey_e2e::desktop::{DesktopEnv, desktop_bin};
use latchkey_e2e::webdriver::Session;
use latchkey_e2e::{PASSWORD, TestDir, auth_config, files_under, run_cmd_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CANARY: &str = "sk-desktop-canary-5b1f0c9e77d24a61";
pub(crate) const STEP: Duration = Duration::from_secs(30);

pub(crate) fn shots_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/desktop-e2e")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("screenshot dir");
    d
}

pub(crate) fn shot(s: &Session, dir: &Path, name: &str) {
    let png = s.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("save screenshot");
}

pub(crate) fn lock_pid(data: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data.join("latchkey.lock")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

pub(crate) fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Resident memory of `pid` and every process below it (WebKit's web and
/// network processes), in KiB.
fn tree_rss_kib(pid: u32) -> u64 {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        parents.push((p, ppid));
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree.iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// The `since_launch_ms` of the app's first log line containing `message`.
fn launch_ms(log: &str, message: &str) -> Option<u64> {
    // Without colour codes, should the log have them.
    let mut plain = String::with_capacity(log.len());
    let mut in_escape = false;
    for c in log.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    plain
        .lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| l.split("since_launch_ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .next()
}

/// `curl` status code of `GET url` (000 when nothing answers).
pub(crate) fn http_status(url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The official OpenAI SDK streams through the loopback proxy.
pub(crate) fn sdk_stream(env: &DesktopEnv, step: &str, port: u16, key: &str) -> String {
    let c = latchkey_e2e::sdk_script(
        "openai_stream.py",
        "openai",
        &format!("http://127.0.0.1:{port}"),
        key,
        Path::new(""),
    );
    let out = run_cmd_for(c, b"", Duration::from_secs(60));
    let text = format!("{}{}", out.stdout, out.stderr);
    if !out.status.success() {
        let log = env.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{step}: the OpenAI SDK failed:\n{text}\n--- app log (last lines, newest first):\n{}",
            tail.join("\n")
        );
    }
    assert!(text.contains("ok   stream"), "{text}");
    text
}

/// Quits the app as the system does (SIGTERM: it shuts down in order) and
/// waits for it to be gone.
pub(crate) fn quit(data: &Path) {
    let pid = lock_pid(data).expect("the running app's PID in the lock file");
    let _ = Command::new("kill").arg(pid.to_string()).status();
    wait_until("the app to exit", Duration::from_secs(40), || !alive(pid));
}

/// The setup wizard, which a first launch opens by itself, completed in
/// the window (owner `owner`, TOTP from the key shown); ends on the home
/// screen. Returns the owner's authenticator.
pub(crate) fn complete_setup(s: &Session, shots: &Path) -> latchkey_e2e::Authenticator {
    s.wait_text("Repeat password", STEP);
    shot(s, shots, "01-setup-wizard");
    assert!(
        !s.url().contains("token="),
        "the setup token left the URL: {}",
        s.url()
    );
    assert!(s.url().starts_with("latchkey://localhost/"), "{}", s.url());
    s.type_into(&s.field("Username"), "owner");
    s.type_into(&s.field("Password"), PASSWORD);
    s.type_into(&s.field("Repeat password"), PASSWORD);
    s.click(&s.button("Continue"));
    let key_text = s.element_text(&s.css(".totp-key"));
    let secret: String = key_text
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    shot(s, shots, "02-authenticator");
    let totp = latchkey_e2e::Authenticator::new(&format!("otpauth://totp/x?secret={secret}"));
    s.type_into(&s.field("Code from your authenticator app"), &totp.code());
    s.click(&s.button("Confirm"));
    s.wait_text("Continue to Latchkey", STEP);
    shot(s, shots, "03-recovery-codes");
    s.check(&s.field("I have saved my recovery codes"));
    s.click(&s.button("Continue to Latchkey"));
    s.wait_text("Vault", STEP);
    shot(s, shots, "04-home");
    totp
}

#[test]
fn desktop_app_first_run_keychain_proxy_and_relaunch() {
    let bin = desktop_bin();
    let started = Instant::now();
    let mock = Mock::start();
    let d = TestDir::new();
    let work = d.path().to_path_buf();
    let data = work.join("desktop-data");
    std::fs::create_dir_all(&data).expect("data dir");
    let port = free_port();
    std::fs::write(
        data.join("latchkey.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n{}\n\
             [providers.openai]\nupstream = \"http://127.0.0.1:{}\"\nsecret = \"openai-main\"\n",
            auth_config(""),
            mock.port
        ),
    )
    .expect("config");
    let shots = shots_dir("first-run");
    let data_s = data.display().to_string();
    let mut env = DesktopEnv::start(&work, true, &[("LATCHKEY_DATA_DIR", &data_s)]);
    let app = bin.display().to_string();

    // ------------------------------------------------ first launch: setup
    let s = Session::start(env.driver_port, &app, Duration::from_secs(90));
    complete_setup(&s, &shots);

    // ------------------------------------------------ a secret, a key
    s.click(&s.button("Vault"));
    s.click(&s.button("Add entry"));
    s.type_into(&s.field("Name"), "openai-main");
    s.select(&s.field("Kind"), "api_key");
    s.type_into(&s.field("Provider"), "openai");
    s.type_into(&s.field("Secret value"), CANARY);
    s.click(&s.button("Save"));
    s.wait_text("openai-main", STEP);
    assert!(!s.text().contains(CANARY), "the secret stays on the page");
    shot(&s, &shots, "05-vault-entry");

    s.click(&s.button("API keys"));
    s.click(&s.button("Create key"));
    s.type_into(&s.field("Name"), "desktop-agent");
    s.check(&s.field("proxy:openai"));
    s.click(&s.button("Create"));
    let once = s.element_text(&s.css(".secret-once"));
    let key = once
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .find(|w| w.starts_with("lk_"))
        .unwrap_or_else(|| panic!("no lk_ key shown: {once}"))
        .to_string();
    // "Use it" names the loopback proxy agents on this machine use, as the
    // server said (not the window's own latchkey:// address), and no CA.
    let snippet = s.element_text(&s.css("pre.example"));
    assert!(
        snippet.contains(&format!(
            "OPENAI_BASE_URL=http://127.0.0.1:{port}/proxy/openai/v1"
        )),
        "{snippet}"
    );
    let card = s.exec(
        "return document.querySelector('.secret-once').closest('section').innerText;",
        &[],
    );
    assert!(
        card.as_str().is_some_and(|t| !t.contains("certificate")),
        "no CA hint over plain HTTP: {card}"
    );
    shot(&s, &shots, "06-new-key");
    s.click(&s.button("Done"));

    // ------------------------------------------------ the window's rules
    assert_eq!(
        s.exec("return document.cookie;", &[]),
        serde_json::json!(""),
        "the session cookie is not readable by script (the shell keeps it)"
    );
    assert_eq!(
        s.exec("return localStorage.length + sessionStorage.length;", &[]),
        serde_json::json!(0),
        "nothing in web storage"
    );
    // A foreign page never loads in the window: the navigation is refused
    // and the URL handed to the system browser instead.
    let foreign = format!("http://127.0.0.1:{}/foreign-page", free_port());
    let before = s.url();
    s.script_navigate(&foreign);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.url(), before, "the window left our origin");
    assert!(s.text().contains("API keys"), "our page is still shown");
    let handed = std::fs::read_to_string(&env.browser_log).unwrap_or_default();
    assert!(
        handed.contains("/foreign-page"),
        "the foreign URL went to the system browser: {handed:?}"
    );
    // The loopback listener has no session for anyone: the owner's cookie
    // lives in the shell only.
    assert_eq!(
        http_status(&format!("http://127.0.0.1:{port}/api/vault")),
        "401"
    );

    // ------------------------------------------------ keychain, disk
    let master = env
        .secret_tool_lookup(&["service", "latchkey", "username", "master-key"])
        .expect("the master key is in the Secret Service under service `latchkey`");
    assert!(master.starts_with("AGE-SECRET-KEY-1"), "an age identity");
    assert!(!data.join("master.key").exists(), "no key file");
    for f in files_under(&work) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for needle in [CANARY, master.trim()] {
            assert!(
                !latchkey_e2e::contains_bytes(&bytes, needle.as_bytes()),
                "plaintext {} found in {}",
                if needle == CANARY {
                    "secret"
                } else {
                    "master key"
                },
                f.display()
            );
        }
    }

    // The CLI works against the running app (lock file, admin token).
    let out = run_cmd_for(
        {
            let mut c = Command::new(latchkey_e2e::latchkey_bin());
            c.args(["vault", "list"]).env("LATCHKEY_DATA_DIR", &data);
            c
        },
        b"",
        Duration::from_secs(30),
    );
    assert!(
        out.status.success() && out.stdout.contains("openai-main"),
        "latchkey vault list against the app: {}{}",
        out.stdout,
        out.stderr
    );

    // The official SDK streams through the loopback proxy, the real key
    // injected upstream.
    sdk_stream(&env, "first launch", port, &key);
    let seen = mock.seen();
    assert!(
        seen.iter()
            .any(|r| r.headers.get("authorization").map(String::as_str)
                == Some(&format!("Bearer {CANARY}"))),
        "the upstream got the real key"
    );
    assert!(
        seen.iter()
            .all(|r| !r.headers.values().any(|v| v.contains(&key))),
        "the Latchkey key never reaches the upstream"
    );

    // ------------------------------------------------ quit, relaunch
    quit(&data);
    s.end();
    assert_eq!(
        http_status(&format!("http://127.0.0.1:{port}/health")),
        "000"
    );
    let relaunched = Instant::now();
    let log_from = env.log_text().len();
    let s = Session::start(env.driver_port, &app, Duration::from_secs(90));
    s.wait_text("Sign in", STEP);
    shot(&s, &shots, "07-relaunch-sign-in");
    // Unsealed from the keychain with nobody signed in: the proxy serves.
    wait_until("the proxy", STEP, || {
        http_status(&format!("http://127.0.0.1:{port}/health")) == "200"
    });
    sdk_stream(&env, "relaunch", port, &key);
    assert!(!data.join("master.key").exists(), "still no key file");

    // A second launch hands over to the first and exits.
    let mut second = env.command(&bin);
    second.env("LATCHKEY_DATA_DIR", &data);
    let out = run_cmd_for(second, b"", Duration::from_secs(30));
    assert!(out.status.success(), "second launch: {}", out.stderr);
    assert!(
        lock_pid(&data).is_some_and(alive),
        "the first keeps running"
    );

    // Figures (docs/PERFORMANCE.md, "Desktop"): idle memory with the
    // window open, then closed to the tray.
    let pid = lock_pid(&data).expect("pid");
    std::thread::sleep(Duration::from_secs(5));
    let rss_open = tree_rss_kib(pid);

    // Closing the window (as a window manager's close button does) keeps
    // the app in the tray and the proxy answering.
    let mut close = env.command(Path::new("python3"));
    close.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("desktop/close_window.py"));
    close.arg("Latchkey");
    let out = run_cmd_for(close, b"", Duration::from_secs(20));
    assert!(
        out.status.success(),
        "close the window: {}{}",
        out.stdout,
        out.stderr
    );
    std::thread::sleep(Duration::from_secs(5));
    let rss_closed = tree_rss_kib(pid);
    sdk_stream(&env, "window closed", port, &key);
    let log = env.log_text();
    let relaunch_log = log.get(log_from..).unwrap_or_default();
    eprintln!(
        "desktop figures: launch->window shown {:?} ms, launch->page loaded {:?} ms, \
         launch->proxy ready {:?} ms, idle RSS (app + WebKit processes) window open {} KiB, \
         closed to tray {} KiB",
        launch_ms(relaunch_log, "window shown"),
        launch_ms(relaunch_log, "window page loaded"),
        launch_ms(relaunch_log, "core ready"),
        rss_open,
        rss_closed
    );
    assert!(
        lock_pid(&data).is_some_and(alive),
        "the app runs on with its window closed"
    );
    // "Open" again (here: launching it again) brings a new window.
    let shown_before = log.matches("window shown").count();
    let mut again = env.command(&bin);
    again.env("LATCHKEY_DATA_DIR", &data);
    let out = run_cmd_for(again, b"", Duration::from_secs(30));
    assert!(out.status.success(), "launch again: {}", out.stderr);
    wait_until("a new window", STEP, || {
        env.log_text().matches("window shown").count() > shown_before
    });
    assert!(!log.contains(CANARY), "the secret is not in the app's log");
    assert!(!log.contains(&key), "the API key is not in the app's log");
    quit(&data);
    s.end();
    env.stop_driver();
    eprintln!(
        "desktop e2e: relaunch to the end {:?}; whole test {:?}",
        relaunched.elapsed(),
        started.elapsed()
    );
}

#[test]
fn desktop_app_without_secret_service_explains_and_writes_no_key() {
    let bin = desktop_bin();
    let d = TestDir::new();
    let work = d.path().to_path_buf();
    let data = work.join("desktop-data");
    let port = free_port();
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(
        data.join("latchkey.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
            auth_config("")
        ),
    )
    .expect("config");
    let shots = shots_dir("no-keychain");
    let data_s = data.display().to_string();
    // A session bus, but nothing on it provides the Secret Service.
    let mut env = DesktopEnv::start(&work, false, &[("LATCHKEY_DATA_DIR", &data_s)]);
    let s = Session::start(
        env.driver_port,
        &bin.display().to_string(),
        Duration::from_secs(90),
    );
    let text = s.wait_text("The system keychain is not available", STEP);
    shot(&s, &shots, "01-keychain-unavailable");
    assert!(text.contains("Or use a passphrase"), "{text}");
    let key_files = |dir: &Path| -> Vec<PathBuf> {
        files_under(dir)
            .into_iter()
            .filter(|f| {
                f.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("master.key"))
                    || latchkey_e2e::contains_bytes(
                        &std::fs::read(f).unwrap_or_default(),
                        b"AGE-SECRET-KEY-",
                    )
            })
            .filter(|f| !f.ends_with("admin.token"))
            .collect()
    };
    assert_eq!(
        key_files(&work),
        Vec::<PathBuf>::new(),
        "no key file written"
    );
    assert_eq!(
        http_status(&format!("http://127.0.0.1:{port}/health")),
        "000",
        "nothing serves while the vault cannot open"
    );

    // Passphrase mode, chosen on that screen: the setup wizard follows,
    // and still no key file.
    s.type_into(&s.field("Passphrase"), "a long desktop passphrase");
    s.type_into(&s.field("Again"), "a long desktop passphrase");
    s.click(&s.button("Use this passphrase"));
    s.wait_text("Set up Latchkey", STEP);
    shot(&s, &shots, "02-passphrase-chosen-setup");
    let toml = std::fs::read_to_string(data.join("latchkey.toml")).expect("config");
    assert!(toml.contains("master_key = \"passphrase\""), "{toml}");
    assert_eq!(
        key_files(&work),
        Vec::<PathBuf>::new(),
        "no key file written"
    );
    quit(&data);
    s.end();
    env.stop_driver();
}

#[test]
fn desktop_deb_unpacks_with_binary_entry_and_icons() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/bundle/deb");
    let deb = std::fs::read_dir(&dir)
        .ok()
        .and_then(|mut it| {
            it.find_map(|e| {
                let p = e.ok()?.path();
                (p.extension()? == "deb").then_some(p)
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no .deb in {}: run scripts/build-desktop.sh (scripts/test.sh does)",
                dir.display()
            )
        });
    let d = TestDir::new();
    let root = d.path().join("root");
    let out = Command::new("dpkg-deb")
        .args([
            "-x",
            &deb.display().to_string(),
            &root.display().to_string(),
        ])
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg -x: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = root.join("usr/bin/latchkey-desktop");
    assert!(bin.is_file(), "the binary");
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("latchkey-desktop "),
        "the unpacked binary runs"
    );
    let entry = std::fs::read_to_string(root.join("usr/share/applications/Latchkey.desktop"))
        .expect("the desktop entry");
    assert!(entry.contains("Exec=latchkey-desktop"), "{entry}");
    assert!(entry.contains("Icon=latchkey-desktop"), "{entry}");
    for size in ["32x32", "128x128", "256x256@2"] {
        let icon = root.join(format!(
            "usr/share/icons/hicolor/{size}/apps/latchkey-desktop.png"
        ));
        assert!(
            std::fs::read(&icon).is_ok_and(|b| b.starts_with(b"\x89PNG")),
            "icon {}",
            icon.display()
        );
    }
    let control = Command::new("dpkg-deb")
        .args(["-f", &deb.display().to_string(), "Depends"])
        .output()
        .expect("dpkg-deb -f");
    let depends = String::from_utf8_lossy(&control.stdout);
    assert!(depends.contains("libwebkit2gtk-4.1-0"), "{depends}");
}
