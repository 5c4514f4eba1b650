//! The unit's system-call filter does not kill (or cripple) the real
//! server: every system call the server makes under a realistic request
//! mix — first start (keys, CA and certificate generated), HTTPS over
//! HTTP/1.1 and HTTP/2, probes, metrics, admin API calls, a vault write, a
//! failed sign-in (argon2 on the blocking pool), a configuration reload,
//! a graceful shutdown — traced with `strace -f -c`, must be in what the
//! unit allows: `@system-service` minus `@privileged` and `@resources`,
//! as `systemd-analyze syscall-filter` expands those groups.

use latchkey_e2e::{TestDir, curl_cmd, latchkey_bin, run_cmd};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/systemd/latchkey.service"
);

/// Every group `systemd-analyze syscall-filter` knows, with its entries
/// (calls, or nested `@groups`).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let mut c = Command::new("systemd-analyze");
    c.args(["syscall-filter", "--no-pager"]);
    let out = run_cmd(c, b"");
    assert!(out.status.success(), "{}", out.stderr);
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.stdout.lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_string());
            groups.entry(line.trim().to_string()).or_default();
        } else if line.trim().is_empty() {
            current = None;
        } else if let Some(g) = &current {
            let entry = line.trim();
            if !entry.starts_with('#') {
                groups.entry(g.clone()).or_default().push(entry.to_string());
            }
        }
    }
    groups
}

fn expand(groups: &BTreeMap<String, Vec<String>>, name: &str, out: &mut BTreeSet<String>) {
    let entries = groups
        .get(name)
        .unwrap_or_else(|| panic!("systemd knows no group {name}"));
    for e in entries {
        if e.starts_with('@') {
            expand(groups, e, out);
        } else {
            out.insert(e.clone());
        }
    }
}

/// What the unit's `SystemCallFilter=` lines allow, read from the unit.
fn allowed_by_unit() -> BTreeSet<String> {
    let unit = std::fs::read_to_string(UNIT).expect("unit");
    let groups = syscall_groups();
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for value in unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
    {
        let (deny, list) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        for item in list.split_whitespace() {
            let target = if deny { &mut denied } else { &mut allowed };
            if item.starts_with('@') {
                expand(&groups, item, target);
            } else {
                target.insert(item.to_string());
            }
        }
    }
    assert!(allowed.len() > 100, "the unit allows @system-service");
    assert!(
        denied.contains("setrlimit") && denied.contains("chown"),
        "{denied:?}"
    );
    allowed.difference(&denied).cloned().collect()
}

/// Kills what is still running when the test ends, however it ends.
struct Procs(Vec<u32>);

impl Drop for Procs {
    fn drop(&mut self) {
        for pid in &self.0 {
            // Already gone after a clean stop: nothing to say.
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn every_syscall_the_server_makes_is_allowed_by_the_unit() {
    let allowed = allowed_by_unit();
    let d = TestDir::new();
    let trace = d.path().join("strace.txt");
    let stdout = d.path().join("serve.stdout");
    let stderr = d.path().join("serve.stderr");
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-c", "-o"])
        .arg(&trace)
        .arg("--")
        .arg(latchkey_bin())
        .arg("--data-dir")
        .arg(d.data())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", d.path())
        .env("LATCHKEY_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("stdout file"))
        .stderr(File::create(&stderr).expect("stderr file"));
    let mut strace = c
        .spawn()
        .expect("strace (scripts/install-deps.sh installs it)");
    let mut procs = Procs(vec![strace.id()]);

    let deadline = Instant::now() + Duration::from_secs(120);
    let port = loop {
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        if out.contains("Stop with Ctrl-C") {
            break out
                .lines()
                .find_map(|l| l.trim().strip_prefix("Listening on:"))
                .and_then(|l| l.trim().rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .expect("port in the banner");
        }
        assert!(
            Instant::now() < deadline && strace.try_wait().ok().flatten().is_none(),
            "no banner: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let lock: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.data().join("latchkey.lock")).expect("lock"),
    )
    .expect("lock json");
    let server_pid = lock["pid"].as_u64().expect("pid").to_string();
    procs.0.push(server_pid.parse().expect("pid"));
    let token = std::fs::read_to_string(d.data().join("admin.token")).expect("token");
    let auth = format!("Authorization: Bearer {}", token.trim());
    let base = format!("https://localhost:{port}");

    // The traffic; -k because only the calls matter here (TLS itself is
    // checked against the CA elsewhere).
    let curl = |args: &[&str]| {
        let mut c = curl_cmd();
        c.args(["-k", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(args);
        run_cmd(c, b"").stdout
    };
    for _ in 0..3 {
        assert_eq!(curl(&[&format!("{base}/health")]), "200");
    }
    assert_eq!(curl(&["--http2", &format!("{base}/ready")]), "200");
    assert_eq!(curl(&["--http1.1", &format!("{base}/metrics")]), "200");
    assert_eq!(curl(&["-H", &auth, &format!("{base}/api/status")]), "200");
    assert_eq!(
        curl(&[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"name":"k1","kind":"api_key","secret":"sk-syscall-test"}"#,
            &format!("{base}/api/vault"),
        ]),
        "201"
    );
    assert_eq!(curl(&["-H", &auth, &format!("{base}/api/vault")]), "200");
    let login = curl(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        &format!("Origin: {base}"),
        "--data",
        r#"{"username":"nobody","password":"not-the-password-1"}"#,
        &format!("{base}/api/auth/login"),
    ]);
    assert!(login.starts_with('4'), "login answered {login}");
    assert_eq!(curl(&[&format!("{base}/no/such/path")]), "404");
    let hup = Command::new("kill")
        .args(["-HUP", &server_pid])
        .status()
        .expect("kill");
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(curl(&[&format!("{base}/health")]), "200");
    let term = Command::new("kill")
        .args(["-TERM", &server_pid])
        .status()
        .expect("kill");
    assert!(term.success());
    assert!(
        wait_child(&mut strace, Duration::from_secs(60)),
        "the server did not stop"
    );
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(log.contains("configuration reloaded"), "{log}");

    let table = std::fs::read_to_string(&trace).expect("strace summary");
    let used: BTreeSet<String> = table
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| *name != "total")
        .map(str::to_string)
        .collect();
    assert!(
        used.contains("accept4") || used.contains("accept"),
        "the trace covers serving: {used:?}"
    );
    let outside: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        outside.is_empty(),
        "system calls the unit's filter refuses (EPERM): {outside:?}\nall used: {used:?}"
    );
}
