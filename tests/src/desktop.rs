//! The desktop app's test environment: a virtual display (Xvfb), a D-Bus
//! session bus of our own (no service activation, so nothing starts
//! behind the test's back), a tray host and a notification server on it
//! (`tests/desktop/desktop_services.py`: what a desktop session's panel
//! and notification daemon provide, recording what the app sends them),
//! optionally gnome-keyring as the Secret Service, and `tauri-driver`
//! (driving Debian's `WebKitWebDriver`), all in a scratch HOME.
//! Everything started is killed on drop.

use crate::caddy::free_port;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `target/release/latchkey-desktop` (what `scripts/build-desktop.sh` and
/// `cargo build --release -p latchkey-desktop` make); `LATCHKEY_DESKTOP_BIN`
/// overrides.
pub fn desktop_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LATCHKEY_DESKTOP_BIN") {
        return PathBuf::from(p);
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/latchkey-desktop");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --release -p latchkey-desktop`), or run \
         scripts/test.sh",
        bin.display()
    );
    bin
}

/// A process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process by PID, killed on drop (daemons that fork).
struct KilledPid(u32);

impl Drop for KilledPid {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

/// The environment (see the module docs).
pub struct DesktopEnv {
    pub home: PathBuf,
    pub display: String,
    pub bus_address: String,
    pub driver_port: u16,
    pub log: PathBuf,
    /// Where `BROWSER` (the system browser the app hands links to)
    /// records each URL it is given.
    pub browser_log: PathBuf,
    /// Where the tray host and the notification server record.
    pub services_dir: PathBuf,
    // Dropped in reverse order of start: driver, keyring, services, bus,
    // display.
    driver: Option<Killed>,
    _keyring: Option<Killed>,
    _services: Killed,
    _bus: KilledPid,
    _xvfb: Killed,
}

impl DesktopEnv {
    /// Starts the display, the bus, the Secret Service when `keyring`,
    /// and the driver; the app launched by the driver gets `app_env`.
    pub fn start(work: &Path, keyring: bool, app_env: &[(&str, &str)]) -> DesktopEnv {
        let home = work.join("home");
        let run = work.join("run");
        for d in [&home, &run] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        set_mode_700(&run);
        let log = work.join("desktop.log");

        let (xvfb, display) = start_xvfb(work);
        let (bus, bus_address) = start_bus(work);
        let base_env = |c: &mut Command| {
            c.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", &home)
                .env("XDG_RUNTIME_DIR", &run)
                .env("XDG_DATA_HOME", home.join(".local/share"))
                .env("XDG_CONFIG_HOME", home.join(".config"))
                .env("DISPLAY", &display)
                .env("DBUS_SESSION_BUS_ADDRESS", &bus_address)
                .env("LANG", "C.UTF-8");
        };
        let services_dir = work.join("desktop-services");
        std::fs::create_dir_all(&services_dir).expect("services dir");
        let services = {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("desktop/desktop_services.py");
            // Debian's Python, where python3-dbus and python3-gi are (a
            // python3 earlier on PATH, e.g. pyenv's, has neither).
            let mut c = Command::new("/usr/bin/python3");
            c.arg(script).arg(&services_dir);
            base_env(&mut c);
            let mut child = c
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(
                    std::fs::File::create(work.join("desktop-services.stderr"))
                        .map_or(Stdio::null(), Stdio::from),
                )
                .spawn()
                .expect("python3");
            let stdout = child.stdout.take().expect("stdout");
            let services = Killed(child);
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            assert_eq!(
                line.trim(),
                "READY",
                "the tray host and notification server did not start (python3-dbus, \
                 python3-gi: scripts/install-deps.sh): {}",
                std::fs::read_to_string(work.join("desktop-services.stderr")).unwrap_or_default()
            );
            services
        };
        let keyring_proc = keyring.then(|| {
            let mut c = Command::new("gnome-keyring-daemon");
            c.args(["--foreground", "--unlock", "--components=secrets"]);
            base_env(&mut c);
            let mut child = c
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gnome-keyring-daemon (apt install gnome-keyring)");
            // The login keyring's password, then EOF.
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"test-keyring-password");
            }
            let k = Killed(child);
            wait_for_secret_service(&bus_address);
            k
        });

        let browser_log = work.join("browser.log");
        let browser = work.join("browser.sh");
        std::fs::write(
            &browser,
            format!("#!/bin/sh\necho \"$1\" >> '{}'\n", browser_log.display()),
        )
        .expect("write browser.sh");
        set_mode_700(&browser);
        // The system browser, as xdg-open finds it: the default handler of
        // http(s) links in this HOME (so no real browser starts).
        let apps = home.join(".local/share/applications");
        std::fs::create_dir_all(&apps).expect("applications dir");
        std::fs::write(
            apps.join("test-browser.desktop"),
            format!(
                "[Desktop Entry]\nType=Application\nName=Test browser\nExec={} %u\n\
                 MimeType=x-scheme-handler/http;x-scheme-handler/https;\n",
                browser.display()
            ),
        )
        .expect("desktop entry");
        std::fs::create_dir_all(home.join(".config")).expect("config dir");
        std::fs::write(
            home.join(".config/mimeapps.list"),
            "[Default Applications]\nx-scheme-handler/http=test-browser.desktop\n\
             x-scheme-handler/https=test-browser.desktop\n",
        )
        .expect("mimeapps.list");

        let driver_port = free_port();
        let native_port = free_port();
        let mut c = Command::new("tauri-driver");
        c.args([
            "--port",
            &driver_port.to_string(),
            "--native-port",
            &native_port.to_string(),
        ]);
        base_env(&mut c);
        c.env("BROWSER", &browser).env("LATCHKEY_LOG", "info");
        for (k, v) in app_env {
            c.env(k, v);
        }
        let logf = std::fs::File::create(&log).expect("log file");
        let driver = c
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .expect("tauri-driver (cargo install tauri-driver; scripts/install-deps.sh)");
        DesktopEnv {
            home,
            display,
            bus_address,
            driver_port,
            log,
            browser_log,
            services_dir,
            driver: Some(Killed(driver)),
            _keyring: keyring_proc,
            _services: services,
            _bus: bus,
            _xvfb: xvfb,
        }
    }

    /// The app's and the driver's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `secret-tool lookup ATTR VALUE…` on this bus: the stored secret.
    pub fn secret_tool_lookup(&self, attrs: &[&str]) -> Option<String> {
        let out = Command::new("secret-tool")
            .arg("lookup")
            .args(attrs)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address)
            .env("HOME", &self.home)
            .output()
            .expect("secret-tool (apt install libsecret-tools)");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The tray items registered with the tray host so far: (bus name,
    /// object path).
    pub fn tray_items(&self) -> Vec<(String, String)> {
        self.recorded("items.jsonl")
            .iter()
            .filter_map(|v| Some((v["service"].as_str()?.into(), v["path"].as_str()?.into())))
            .collect()
    }

    /// The notifications shown so far: (summary, body).
    pub fn notifications(&self) -> Vec<(String, String)> {
        self.recorded("notifications.jsonl")
            .iter()
            .filter_map(|v| Some((v["summary"].as_str()?.into(), v["body"].as_str()?.into())))
            .collect()
    }

    fn recorded(&self, file: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.services_dir.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `gdbus call --session ARGS…` on this bus: its output (GVariant
    /// text); panics when the call fails.
    pub fn gdbus_call(&self, args: &[&str]) -> String {
        let out = Command::new("gdbus")
            .args(["call", "--session"])
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address)
            .output()
            .expect("gdbus (libglib2.0-bin)");
        assert!(
            out.status.success(),
            "gdbus call {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command with this environment (display, bus, HOME).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("DISPLAY", &self.display)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address)
            .env("HOME", &self.home)
            .env("XDG_DATA_HOME", self.home.join(".local/share"));
        c
    }

    /// Stops the driver (and with it any app it launched).
    pub fn stop_driver(&mut self) {
        self.driver.take();
    }
}

fn set_mode_700(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

fn start_xvfb(work: &Path) -> (Killed, String) {
    // Xvfb picks a free display itself and writes its number to stdout
    // (`-displayfd 1`): no race with other tests starting their own.
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x900x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(work.join("xvfb.log")).map_or(Stdio::null(), Stdio::from))
        .spawn()
        .expect("Xvfb (apt install xvfb)");
    let stdout = child.stdout.take().expect("stdout");
    let xvfb = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("Xvfb's display number");
    let n: u32 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Xvfb did not start (see {}/xvfb.log)", work.display()));
    (xvfb, format!(":{n}"))
}

fn start_bus(work: &Path) -> (KilledPid, String) {
    let conf = work.join("session-bus.conf");
    std::fs::write(
        &conf,
        "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
         \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
         <busconfig><type>session</type><listen>unix:tmpdir=/tmp</listen>\
         <auth>EXTERNAL</auth><policy context=\"default\"><allow send_destination=\"*\" \
         eavesdrop=\"true\"/><allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n",
    )
    .expect("bus config");
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--fork", "--print-address=1", "--print-pid=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon (apt install dbus)");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let address = lines.next().and_then(Result::ok).expect("bus address");
    let pid: u32 = lines
        .next()
        .and_then(Result::ok)
        .and_then(|p| p.trim().parse().ok())
        .expect("bus pid");
    let _ = child.wait();
    (KilledPid(pid), address.trim().to_string())
}

/// Waits until `org.freedesktop.secrets` has an owner on the bus.
fn wait_for_secret_service(bus: &str) {
    let started = Instant::now();
    loop {
        let out = Command::new("dbus-send")
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
                "string:org.freedesktop.secrets",
            ])
            .env("DBUS_SESSION_BUS_ADDRESS", bus)
            .output();
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("boolean true")) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gnome-keyring never registered org.freedesktop.secrets"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
