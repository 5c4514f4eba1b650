//! The update path's refusals, against a loopback HTTPS feed with a
//! throwaway minisign key made here: [`fetch`] — what the tray's "Check
//! for updates" runs — through the real updater plugin in a Tauri mock
//! app whose plugin configuration is `tauri.conf.json`'s own, with only
//! the public key and the feed's address given to the plugin's builder
//! (the seam: no environment variable or setting lets a release binary
//! trust another key). The feed's TLS certificate is trusted through the
//! plugin's client hook, as a real feed's would be through the system's
//! roots.

use super::*;
use std::collections::HashMap;
use std::sync::Arc;
use tauri_plugin_updater::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONF: &str = include_str!("../tauri.conf.json");

/// The shipped configuration's `plugins.updater`.
fn shipped_updater_config() -> serde_json::Value {
    let conf: serde_json::Value = serde_json::from_str(CONF).expect("tauri.conf.json");
    conf["plugins"]["updater"].clone()
}

/// A throwaway minisign key: (Tauri's `pubkey` form — base64 of the public
/// key file —, the secret key).
fn keypair() -> (String, minisign::SecretKey, minisign::PublicKey) {
    use base64::Engine as _;
    let minisign::KeyPair { pk, sk } =
        minisign::KeyPair::generate_unencrypted_keypair().expect("keypair");
    let boxed = pk.to_box().expect("pk box").to_string();
    (
        base64::engine::general_purpose::STANDARD.encode(boxed),
        sk,
        pk,
    )
}

/// A `.sig` as `tauri signer sign` writes it (base64 of the signature
/// file), its trusted comment naming `version` when given.
fn sign(
    pk: &minisign::PublicKey,
    sk: &minisign::SecretKey,
    data: &[u8],
    version: Option<&str>,
) -> String {
    use base64::Engine as _;
    let mut trusted = "timestamp:1765000000\tfile:Latchkey.AppImage".to_string();
    if let Some(v) = version {
        trusted.push_str(&format!("\tversion:{v}"));
    }
    let sig = minisign::sign(
        Some(pk),
        sk,
        std::io::Cursor::new(data),
        Some(&trusted),
        Some("signature from tauri secret key"),
    )
    .expect("sign");
    base64::engine::general_purpose::STANDARD.encode(sig.to_string())
}

/// A loopback HTTPS server answering fixed paths; its CA's PEM.
struct Feed {
    port: u16,
    ca_pem: String,
}

fn tls_pair() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, &ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key der");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("server config");
    (ca.pem(), config)
}

/// Serves the files `files(port)` names (documents that name the feed's
/// own URL need its port first).
async fn serve(files: impl FnOnce(u16) -> HashMap<String, Vec<u8>>) -> Feed {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (ca_pem, config) = tls_pair();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let files = Arc::new(files(port));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, files) = (acceptor.clone(), Arc::clone(&files));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, body) = match files.get(&path) {
                    Some(b) => ("200 OK", b.clone()),
                    None => ("404 Not Found", Vec::new()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Feed { port, ca_pem }
}

fn release(version: &str, url: &str, signature: &str) -> Vec<u8> {
    serde_json::json!({
        "version": version,
        "notes": "test release",
        "pub_date": "2026-12-07T12:00:00Z",
        "platforms": {
            "linux-x86_64": { "signature": signature, "url": url },
            "darwin-aarch64": { "signature": signature, "url": url },
            "darwin-x86_64": { "signature": signature, "url": url },
            "windows-x86_64": { "signature": signature, "url": url }
        }
    })
    .to_string()
    .into_bytes()
}

/// A mock app (version 0.1.0) with the updater plugin configured as
/// shipped.
fn app() -> tauri::App<tauri::test::MockRuntime> {
    let mut ctx = tauri::test::mock_context(tauri::test::noop_assets());
    ctx.config_mut()
        .plugins
        .0
        .insert("updater".into(), shipped_updater_config());
    tauri::test::mock_builder()
        .plugin(tauri_plugin_updater::Builder::new().build())
        .build(ctx)
        .expect("mock app")
}

#[test]
fn the_shipped_configuration_pins_the_key_and_the_signed_version() {
    let c = shipped_updater_config();
    let pubkey = c["pubkey"].as_str().expect("a compiled-in public key");
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD
        .decode(pubkey)
        .expect("base64");
    let text = String::from_utf8(text).expect("utf-8");
    assert!(
        text.starts_with("untrusted comment: minisign public key"),
        "{text}"
    );
    assert_eq!(c["requireSignedVersion"], serde_json::json!(true));
    for flag in [
        "dangerousInsecureTransportProtocol",
        "dangerousAcceptInvalidCerts",
        "dangerousAcceptInvalidHostnames",
        "allowDowngrades",
    ] {
        assert!(
            c.get(flag).is_none_or(|v| v.as_bool() == Some(false)),
            "{flag} is set"
        );
    }
    for e in c["endpoints"].as_array().expect("endpoints") {
        assert!(e.as_str().is_some_and(|u| u.starts_with("https://")), "{e}");
    }
}

#[test]
fn refuses_unsigned_tampered_foreign_older_and_downgraded_releases() {
    let (pubkey, sk, pk) = keypair();
    let (_, other_sk, other_pk) = keypair();
    let new = b"Latchkey 0.2.0 AppImage: new bytes".to_vec();
    let old = b"Latchkey 0.0.9 AppImage: old bytes".to_vec();
    let mut tampered = new.clone();
    tampered[0] ^= 1;

    let cases: Vec<(&str, &str, &str, String)> = vec![
        ("good", "0.2.0", "new", sign(&pk, &sk, &new, Some("0.2.0"))),
        ("unsigned", "0.2.0", "new", String::new()),
        (
            "tampered",
            "0.2.0",
            "tampered",
            sign(&pk, &sk, &new, Some("0.2.0")),
        ),
        (
            "foreign",
            "0.2.0",
            "new",
            sign(&other_pk, &other_sk, &new, Some("0.2.0")),
        ),
        ("older", "0.0.9", "old", sign(&pk, &sk, &old, Some("0.0.9"))),
        ("same", "0.1.0", "new", sign(&pk, &sk, &new, Some("0.1.0"))),
        // An old release's genuine signature, announced as a new version.
        (
            "downgrade",
            "0.2.0",
            "old",
            sign(&pk, &sk, &old, Some("0.0.9")),
        ),
        ("unversioned", "0.2.0", "new", sign(&pk, &sk, &new, None)),
    ];

    tauri::async_runtime::block_on(async move {
        let (n, o, t) = (new.clone(), old.clone(), tampered);
        let feed = serve(move |port| {
            let mut files: HashMap<String, Vec<u8>> = HashMap::new();
            files.insert("/dl/new".into(), n);
            files.insert("/dl/old".into(), o);
            files.insert("/dl/tampered".into(), t);
            for (case, version, artifact, sig) in &cases {
                files.insert(
                    format!("/feed/{case}.json"),
                    release(
                        version,
                        &format!("https://127.0.0.1:{port}/dl/{artifact}"),
                        sig,
                    ),
                );
            }
            files
        })
        .await;
        let cert = reqwest::Certificate::from_pem(feed.ca_pem.as_bytes()).expect("ca");
        let handle = app();
        let updater = |case: &str, key: Option<&str>| {
            let cert = cert.clone();
            let mut b = handle
                .updater_builder()
                .endpoints(vec![
                    format!("https://127.0.0.1:{}/feed/{case}.json", feed.port)
                        .parse()
                        .expect("url"),
                ])
                .expect("https endpoint")
                .timeout(std::time::Duration::from_secs(20))
                .configure_client(move |c| c.tls_certs_only([cert.clone()]));
            if let Some(k) = key {
                b = b.pubkey(k);
            }
            b.build().expect("updater")
        };

        // Accepted: signed with the key, for the announced newer version.
        match fetch(&updater("good", Some(&pubkey)), true).await {
            Ok(Found::Verified { update, bytes }) => {
                assert_eq!(update.version, "0.2.0");
                assert_eq!(bytes, new, "the verified bytes are the release's");
            }
            Ok(_) => panic!("the signed newer release was not offered"),
            Err(e) => panic!("the signed newer release was refused: {e}"),
        }
        // Refused before anything is installed.
        let refused = |r: Result<Found, Error>| match r {
            Ok(Found::Verified { .. }) => panic!("verified"),
            Ok(Found::Available(v)) => panic!("offered {v} without downloading"),
            Ok(Found::UpToDate) => panic!("not offered at all"),
            Err(e) => e,
        };
        let e = refused(fetch(&updater("unsigned", Some(&pubkey)), true).await);
        assert!(
            matches!(
                e,
                Error::Minisign(_) | Error::Base64(_) | Error::SignatureUtf8(_)
            ),
            "unsigned: {e}"
        );
        let e = refused(fetch(&updater("tampered", Some(&pubkey)), true).await);
        assert!(matches!(e, Error::Minisign(_)), "tampered: {e}");
        let e = refused(fetch(&updater("foreign", Some(&pubkey)), true).await);
        assert!(matches!(e, Error::Minisign(_)), "another key: {e}");
        let e = refused(fetch(&updater("downgrade", Some(&pubkey)), true).await);
        assert!(
            matches!(e, Error::SignedVersionMismatch { .. }),
            "an old release announced as new: {e}"
        );
        let e = refused(fetch(&updater("unversioned", Some(&pubkey)), true).await);
        assert!(
            matches!(e, Error::MissingSignedVersion),
            "a signature that names no version: {e}"
        );
        // Not newer: not offered.
        for case in ["older", "same"] {
            assert!(
                matches!(
                    fetch(&updater(case, Some(&pubkey)), true).await,
                    Ok(Found::UpToDate)
                ),
                "{case} was offered"
            );
        }
        // The shipped key (no key given to the builder: the compiled-in
        // one) refuses the release this test's key signed.
        let e = refused(fetch(&updater("good", None), true).await);
        assert!(matches!(e, Error::Minisign(_)), "the shipped key: {e}");
    });
}
