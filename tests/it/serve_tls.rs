//! The server's TLS, checked from outside with `openssl s_client`: the
//! chain verifies for every name it should, old protocols and weak suites
//! are refused by the server, certificates renew and swap without a restart.

use latchkey_e2e::{Out, ServeOpts, Server, TestDir, first_pem_cert, openssl, spawn_server, x509};
use std::path::Path;
use std::time::{Duration, Instant};

fn verified(out: &Out) -> bool {
    out.status.success() && out.stdout.contains("Verify return code: 0 (ok)")
}

/// Handshake refused with an alert the server sent (not a client that never
/// offered the protocol).
fn refused_by_server(out: &Out) -> bool {
    let all = format!("{}{}", out.stdout, out.stderr);
    !out.status.success()
        && all.contains("alert")
        && !all.contains("no protocols available")
        && !all.contains("no cipher match")
        && all.contains("Cipher is (NONE)")
}

fn host_name() -> Option<String> {
    let out = std::process::Command::new("hostname")
        .output()
        .expect("run hostname");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let plain = !name.is_empty()
        && name != "localhost"
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    plain.then_some(name)
}

#[test]
fn chain_verifies_for_localhost_loopback_and_host_name() {
    let d = TestDir::new();
    let s = d.serve();
    let ca = s.ca_pem().to_str().expect("utf8").to_string();
    let base = ["-verify_return_error", "-CAfile", &ca];

    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        s.s_client(&args)
    };
    let out = with(&["-servername", "localhost", "-verify_hostname", "localhost"]);
    assert!(verified(&out), "localhost:\n{}{}", out.stdout, out.stderr);
    let out = with(&["-verify_ip", "127.0.0.1"]);
    assert!(verified(&out), "127.0.0.1:\n{}{}", out.stdout, out.stderr);
    if let Some(host) = host_name() {
        let out = with(&["-servername", &host, "-verify_hostname", &host]);
        assert!(verified(&out), "{host}:\n{}{}", out.stdout, out.stderr);
        let local = format!("{host}.local");
        let out = with(&["-servername", &local, "-verify_hostname", &local]);
        assert!(verified(&out), "{local}:\n{}{}", out.stdout, out.stderr);
    }

    // Negative: names the certificate does not cover, and another CA.
    let out = with(&[
        "-servername",
        "evil.example",
        "-verify_hostname",
        "evil.example",
    ]);
    assert!(!verified(&out), "a foreign name must not verify");
    let out = with(&["-verify_ip", "10.99.99.99"]);
    assert!(!verified(&out), "a foreign IP must not verify");
    let other = TestDir::new();
    let other_server = other.serve();
    let other_ca = other_server.ca_pem().to_str().expect("utf8");
    let out = s.s_client(&[
        "-verify_return_error",
        "-CAfile",
        other_ca,
        "-servername",
        "localhost",
    ]);
    assert!(
        !verified(&out),
        "another Latchkey's CA must not verify this one"
    );
}

#[test]
fn only_tls_1_2_and_1_3_with_aead_suites() {
    let d = TestDir::new();
    let s = d.serve();
    let ca = s.ca_pem().to_str().expect("utf8").to_string();
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = s.s_client(&[flag, "-verify_return_error", "-CAfile", &ca]);
        assert!(verified(&out), "{name}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains(&format!("Protocol  : {name}"))
                || out.stdout.contains(&format!("New, {name}")),
            "{}",
            out.stdout
        );
    }
    // SECLEVEL=0 makes this openssl offer TLS 1.0/1.1 at all, so the
    // refusal below comes from the server.
    for flag in ["-tls1", "-tls1_1"] {
        let out = s.s_client(&[flag, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(
            refused_by_server(&out),
            "{flag} must be refused by the server:\n{}{}",
            out.stdout,
            out.stderr
        );
    }
    // TLS 1.2 with CBC or non-ECDHE suites only.
    for suites in [
        "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256",
        "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA",
        "DHE-RSA-AES128-GCM-SHA256",
    ] {
        let out = s.s_client(&["-tls1_2", "-cipher", &format!("{suites}@SECLEVEL=0")]);
        assert!(
            refused_by_server(&out),
            "{suites} must be refused:\n{}{}",
            out.stdout,
            out.stderr
        );
    }
    // The server is still fine after all those refusals.
    assert_eq!(s.get("/health").status, 200);
}

fn fingerprint(pem: &str) -> String {
    x509(pem, &["-fingerprint", "-sha256"]).trim().to_string()
}

/// Polls the served certificate until `pred` holds (at most `limit`).
fn wait_for_cert(s: &Server, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let pem = s.served_cert();
        if pred(&pem) {
            return pem;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {limit:?}; server log:\n{}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn generated_certificate_renews_without_a_restart() {
    let d = TestDir::new();
    // Lifetime 1 h (the minimum), renewed when under 3599 s are left: every
    // certificate is due a second after it was issued.
    let mut s = spawn_server(
        &d,
        &ServeOpts::new().config(
            "[tls]\nserver_cert_lifetime = \"1h\"\nrenew_before = 3599\ncheck_interval = \"1s\"\n",
        ),
    );
    let pid = s.pid;
    let ca = s.ca_pem().to_str().expect("utf8").to_string();
    let first = fingerprint(&s.served_cert());
    let mut seen = vec![first.clone()];
    for _ in 0..2 {
        let pem = wait_for_cert(&s, Duration::from_secs(15), "a renewed certificate", |p| {
            !seen.contains(&fingerprint(p))
        });
        seen.push(fingerprint(&pem));
        let end = x509(&pem, &["-enddate"]);
        assert!(end.contains("notAfter="), "{end}");
        // The renewed certificate verifies like the first.
        let out = s.s_client(&[
            "-verify_return_error",
            "-CAfile",
            &ca,
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
        ]);
        assert!(verified(&out), "{}{}", out.stdout, out.stderr);
    }
    assert!(s.is_running(), "renewal needs no restart");
    assert_eq!(s.pid, pid);
    assert_eq!(s.get("/ready").status, 200);
    assert!(
        s.stderr().contains("issued new server certificate"),
        "renewals are logged"
    );
}

#[test]
fn new_extra_names_reissue_the_certificate_on_restart() {
    let d = TestDir::new();
    let mut s = d.serve();
    let ca = s.ca_pem().to_str().expect("utf8").to_string();
    let check = |s: &Server, extra: &[&str]| {
        let mut args = vec!["-verify_return_error", "-CAfile", ca.as_str()];
        args.extend_from_slice(extra);
        verified(&s.s_client(&args))
    };
    let by_name = [
        "-servername",
        "nas.example.test",
        "-verify_hostname",
        "nas.example.test",
    ];
    assert!(!check(&s, &by_name), "not yet covered");
    assert!(!check(&s, &["-verify_ip", "127.0.0.2"]), "not yet covered");
    let before = fingerprint(&s.served_cert());
    s.stop();

    let s = spawn_server(
        &d,
        &ServeOpts::new().config("[tls]\nextra_names = [\"nas.example.test\", \"127.0.0.2\"]\n"),
    );
    assert_ne!(fingerprint(&s.served_cert()), before, "reissued");
    assert!(check(&s, &by_name), "{}", s.stderr());
    assert!(check(&s, &["-verify_ip", "127.0.0.2"]));
    assert!(check(
        &s,
        &["-servername", "localhost", "-verify_hostname", "localhost"]
    ));
    let sans = x509(&s.served_cert(), &["-ext", "subjectAltName"]);
    assert!(
        sans.contains("DNS:nas.example.test") && sans.contains("IP Address:127.0.0.2"),
        "{sans}"
    );
}

/// A CA and leaf certificates made with openssl, as an ACME client or a
/// home-lab CA would hand them over.
struct TestPki {
    dir: std::path::PathBuf,
}

impl TestPki {
    fn new(dir: &Path) -> Self {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).expect("mkdir pki");
        let p = |f: &str| dir.join(f).to_str().expect("utf8").to_string();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &p("ca.key"),
                "-out",
                &p("ca.pem"),
                "-days",
                "2",
                "-subj",
                "/CN=Latchkey Test User CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            b"",
        );
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
             basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
        )
        .expect("write ext");
        TestPki { dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).to_str().expect("utf8").to_string()
    }

    /// Issues `NAME.pem` / `NAME.key` with subject CN=NAME.
    fn issue(&self, name: &str) -> (String, String) {
        let (key, csr, cert) = (
            self.path(&format!("{name}.key")),
            self.path(&format!("{name}.csr")),
            self.path(&format!("{name}.pem")),
        );
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
            b"",
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &self.path("ca.pem"),
                "-CAkey",
                &self.path("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                &self.path("leaf.ext"),
            ],
            b"",
        );
        (
            std::fs::read_to_string(&cert).expect("cert"),
            std::fs::read_to_string(&key).expect("key"),
        )
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    // Write beside, then rename: what a careful ACME client does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename");
}

fn subject(pem: &str) -> String {
    x509(pem, &["-subject"]).trim().to_string()
}

#[test]
fn user_certificate_is_swapped_while_running() {
    let d = TestDir::new();
    let pki = TestPki::new(d.path());
    let (cert1, key1) = pki.issue("first");
    let (cert2, key2) = pki.issue("second");
    let live = d.path().join("live");
    std::fs::create_dir_all(&live).expect("mkdir");
    let (cert_file, key_file) = (live.join("fullchain.pem"), live.join("privkey.pem"));
    write_private(&cert_file, &cert1);
    write_private(&key_file, &key1);

    let mut s = spawn_server(
        &d,
        &ServeOpts::new()
            .config(&format!(
                "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\ncheck_interval = \"1s\"\n",
                cert_file.display(),
                key_file.display()
            ))
            .ca_file(Path::new(&pki.path("ca.pem"))),
    );
    let pid = s.pid;
    assert!(subject(&s.served_cert()).contains("CN = first"));
    let ca = pki.path("ca.pem");
    let out = s.s_client(&[
        "-verify_return_error",
        "-CAfile",
        &ca,
        "-servername",
        "localhost",
        "-verify_hostname",
        "localhost",
    ]);
    assert!(verified(&out), "{}{}", out.stdout, out.stderr);

    // A broken replacement is refused; the certificate in service stays.
    write_private(&cert_file, "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(subject(&s.served_cert()).contains("CN = first"));
    assert_eq!(s.get("/health").status, 200);

    write_private(&key_file, &key2);
    write_private(&cert_file, &cert2);
    let pem = wait_for_cert(&s, Duration::from_secs(15), "the second certificate", |p| {
        subject(p).contains("CN = second")
    });
    assert_eq!(first_pem_cert(&cert2).as_deref(), Some(pem.as_str()));
    let out = s.s_client(&[
        "-verify_return_error",
        "-CAfile",
        &ca,
        "-verify_ip",
        "127.0.0.1",
    ]);
    assert!(verified(&out), "{}{}", out.stdout, out.stderr);
    assert_eq!(s.get("/health").status, 200, "curl trusts the user's CA");
    assert!(s.is_running());
    assert_eq!(s.pid, pid, "no restart");
    let log = s.stderr();
    assert!(
        log.contains("reloaded user-provided TLS certificate"),
        "{log}"
    );
    // The generated certificate was never put in service.
    assert!(!d.data().join("tls").join("server.pem").exists());
}

#[test]
fn ca_exported_before_the_first_start_is_the_one_served() {
    let d = TestDir::new();
    // A user installs the CA on their devices before ever starting the server.
    let early = d.ok(&["tls", "export-ca"], b"").stdout;
    assert!(early.starts_with("-----BEGIN CERTIFICATE-----"), "{early}");
    let s = spawn_server(&d, &ServeOpts::new());
    let served_ca = std::fs::read_to_string(s.ca_pem()).expect("exported CA");
    assert_eq!(
        early, served_ca,
        "serve must reuse the CA made by export-ca"
    );
    // And the chain the server presents verifies against that early copy.
    let early_file = d.path().join("early-ca.pem");
    std::fs::write(&early_file, &early).expect("write");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&early_file)
        .arg(format!("{}/health", s.url()))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}
