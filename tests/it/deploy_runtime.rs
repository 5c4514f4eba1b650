//! The image's runtime contract, without the image (its base images come
//! from a container registry this machine cannot reach): the `latchkey`
//! binary run the way `packaging/k8s/deployment.yaml` runs it in the image
//! of `packaging/oci/Dockerfile`, everything read from those two files.
//!
//! Each container runs in its own mount namespace where `/` is read-only
//! and only its volume mounts are writable (read-only ones bound so), as
//! the pod's UID/GID with the pod's `fsGroup` as supplementary group, no
//! capabilities and `no_new_privs` (setpriv), from the image's `WORKDIR`
//! with the image's and the container's environment. Volumes are
//! directories laid out as the kubelet makes them: emptyDirs 2777 with the
//! fsGroup, the Secret's file behind `..data` symlinks with the mode the
//! kubelet gives it under `fsGroup` (`defaultMode | 0440`), the ConfigMap's
//! file 0644. Paths in the manifests are mapped onto those directories.
//!
//! The store is the ConfigMap's: a real PostgreSQL database (a throwaway
//! server on loopback, `latchkey_e2e::postgres`), its URL and password from
//! the Secret through the Deployment's `secretKeyRef`s.
//!
//! Needs root (to make the namespace and switch users), as CI runs.

use super::deploy::{
    DOCKERFILE, Manifests, at, container, int, latchkey_toml, list, mount_of, string,
};
use latchkey_e2e::postgres::{PG_PASSWORD, PgServer};
use latchkey_e2e::{PASSWORD, latchkey_bin, run_cmd, run_cmd_for};
use serde_json::Value;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the image installs the binary (its `ENTRYPOINT`).
const IMAGE_BINARY: &str = "/usr/local/bin/latchkey";
/// What a probe from the kubelet carries: the pod's address, not ours.
const KUBELET_HOST: &str = "Host: 10.244.1.17:8080";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// The final stage's `ENV` pairs and `WORKDIR`.
fn image_env_and_workdir() -> (Vec<(String, String)>, String) {
    let text = std::fs::read_to_string(DOCKERFILE).expect("Dockerfile");
    let stage = text.rsplit("\nFROM ").next().expect("final stage");
    // Join continuation lines, then read the instructions.
    let joined = stage.replace("\\\n", " ");
    let mut env = Vec::new();
    let mut workdir = "/".to_string();
    for line in joined.lines() {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                env.push((k.to_string(), v.to_string()));
            }
        } else if let Some(dir) = line.strip_prefix("WORKDIR ") {
            workdir = dir.trim().to_string();
        }
    }
    (env, workdir)
}

/// Secrets by name, each with its files (key, content).
type Secrets<'a> = [(&'a str, Vec<(&'a str, Vec<u8>)>)];

/// The pod, emulated in a temporary directory.
struct Pod {
    tmp: tempfile::TempDir,
    pod: Value,
    uid: u32,
    gid: u32,
    fs_group: u32,
    image_env: Vec<(String, String)>,
    workdir: String,
}

impl Pod {
    /// Lays out the image's binary and every volume of the pod template;
    /// `secrets` gives each Secret's files (name → [(key, content)]).
    fn new(m: &Manifests, secrets: &Secrets<'_>) -> Pod {
        let pod = at(m.one("Deployment"), "/spec/template/spec").clone();
        let id = |p: &str| u32::try_from(int(&pod, p)).expect("a UID/GID");
        let (uid, gid, fs_group) = (
            id("/securityContext/runAsUser"),
            id("/securityContext/runAsGroup"),
            id("/securityContext/fsGroup"),
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        chmod(tmp.path(), 0o755);
        let (image_env, workdir) = image_env_and_workdir();
        let this = Pod {
            tmp,
            pod,
            uid,
            gid,
            fs_group,
            image_env,
            workdir,
        };
        // The image: the binary, root's, 0755.
        let bin = this.image_path(IMAGE_BINARY);
        std::fs::create_dir_all(bin.parent().expect("bin dir")).expect("image dirs");
        std::fs::copy(latchkey_bin(), &bin).expect("copy the binary");
        chmod(&bin, 0o755);
        // The image's WORKDIR as the Dockerfile makes it (the pod user's,
        // 0700); a container with a volume there sees the volume instead.
        let workdir = this.image_path(&this.workdir);
        std::fs::create_dir_all(&workdir).expect("workdir");
        chown(&workdir, uid, gid);
        chmod(&workdir, 0o700);
        for v in list(&this.pod, "/volumes") {
            let name = string(v, "/name");
            let dir = this.volume_dir(name);
            std::fs::create_dir_all(&dir).expect("volume dir");
            if v.get("emptyDir").is_some() {
                chown(&dir, 0, fs_group);
                chmod(&dir, 0o2777);
            } else if v.get("configMap").is_some() {
                // Filled by `write_config`.
            } else if let Some(s) = v.get("secret") {
                let secret_name = string(s, "/secretName");
                let files = &secrets
                    .iter()
                    .find(|(n, _)| *n == secret_name)
                    .unwrap_or_else(|| panic!("no Secret {secret_name} given"))
                    .1;
                let mode = u32::try_from(int(s, "/defaultMode")).expect("mode") | 0o440;
                // The kubelet's layout: files in a timestamped directory,
                // reached through `..data` and one symlink per key.
                let real = dir.join("..2026_12_07_00_00_00.000000001");
                std::fs::create_dir_all(&real).expect("secret dir");
                std::os::unix::fs::symlink(real.file_name().expect("name"), dir.join("..data"))
                    .expect("..data");
                for item in list(s, "/items") {
                    let key = string(item, "/key");
                    let path = string(item, "/path");
                    let (_, content) = files
                        .iter()
                        .find(|(k, _)| *k == key)
                        .unwrap_or_else(|| panic!("Secret {secret_name} has no {key}"));
                    let f = real.join(path);
                    std::fs::write(&f, content).expect("write secret");
                    chown(&f, 0, fs_group);
                    chmod(&f, mode);
                    std::os::unix::fs::symlink(Path::new("..data").join(path), dir.join(path))
                        .expect("key symlink");
                }
                chown(&real, 0, fs_group);
                chmod(&real, 0o2755);
            } else {
                panic!("a volume type this emulation does not know: {v}");
            }
        }
        this
    }

    /// The ConfigMap's `latchkey.toml` as the kubelet writes it (0644).
    fn write_config(&self, text: &str) {
        let v = list(&self.pod, "/volumes")
            .iter()
            .find(|v| v.get("configMap").is_some())
            .expect("a ConfigMap volume");
        let f = self.volume_dir(string(v, "/name")).join("latchkey.toml");
        std::fs::write(&f, text).expect("write config");
        chown(&f, 0, self.fs_group);
        chmod(&f, 0o644);
    }

    fn image_path(&self, p: &str) -> PathBuf {
        self.tmp
            .path()
            .join("image")
            .join(p.trim_start_matches('/'))
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join("volumes").join(name)
    }

    fn container(&self, name: &str) -> &Value {
        container(&self.pod, name)
    }

    /// Where `path`, as container `c` sees it, is on this machine.
    fn host_path(&self, c: &Value, path: &str) -> PathBuf {
        if path == IMAGE_BINARY {
            return self.image_path(path);
        }
        let (vol, mount_path, _) = mount_of(c, path);
        let rest = Path::new(path)
            .strip_prefix(&mount_path)
            .expect("under its mount");
        self.volume_dir(&vol).join(rest)
    }

    /// `argv` run in container `c` (see the module docs) with `env` (the
    /// image's and the container's, paths already mapped), then `extra`.
    fn command(
        &self,
        c: &Value,
        argv: &[String],
        env: &[(String, String)],
        extra: &[(&str, &str)],
    ) -> Command {
        let mut script = String::from("set -e\n");
        for mnt in list(c, "/volumeMounts") {
            let host = self.volume_dir(string(mnt, "/name"));
            let host = quote(&host.to_string_lossy());
            script.push_str(&format!("mount --bind {host} {host}\n"));
            if mnt["readOnly"] == true {
                script.push_str(&format!("mount -o remount,bind,ro {host}\n"));
            }
        }
        script.push_str("mount -o remount,bind,ro /\n");
        let workdir = match mount_of_opt(c, &self.workdir) {
            Some(_) => self.host_path(c, &self.workdir),
            None => self.image_path(&self.workdir),
        };
        script.push_str(&format!("cd {}\n", quote(&workdir.to_string_lossy())));
        script.push_str(&format!(
            "exec setpriv --reuid={} --regid={} --groups={} --inh-caps=-all \
             --bounding-set=-all --no-new-privs -- \"$@\"\n",
            self.uid, self.gid, self.fs_group
        ));
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .arg("container")
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/");
        for (k, v) in env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// The container's own `env`: literal values (paths mapped) and
    /// values from `secrets` (`valueFrom.secretKeyRef`, as the kubelet
    /// resolves them; an absent optional one is left out).
    fn container_env(&self, c: &Value, secrets: &Secrets<'_>) -> Vec<(String, String)> {
        list(c, "/env")
            .iter()
            .filter_map(|e| {
                let name = string(e, "/name").to_string();
                if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                    let (secret, key) = (string(r, "/name"), string(r, "/key"));
                    let value = secrets
                        .iter()
                        .find(|(n, _)| *n == secret)
                        .and_then(|(_, files)| files.iter().find(|(k, _)| *k == key));
                    return match value {
                        Some((_, v)) => Some((name, String::from_utf8(v.clone()).expect("utf8"))),
                        None if r["optional"] == true => None,
                        None => panic!("{name}: Secret {secret} has no {key}"),
                    };
                }
                let v = e["value"].as_str()?;
                let v = if v.starts_with('/') && mount_of_opt(c, v).is_some() {
                    self.host_path(c, v).to_string_lossy().into_owned()
                } else {
                    v.to_string()
                };
                Some((name, v))
            })
            .collect()
    }

    /// The image's environment with paths mapped for container `c`.
    fn mapped_image_env(&self, c: &Value) -> Vec<(String, String)> {
        self.image_env
            .iter()
            .map(|(k, v)| {
                let v = if v.starts_with('/') && mount_of_opt(c, v).is_some() {
                    self.host_path(c, v).to_string_lossy().into_owned()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// [`mount_of`] without the panic.
fn mount_of_opt(c: &Value, path: &str) -> Option<String> {
    list(c, "/volumeMounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .find(|mp| Path::new(path).starts_with(mp))
        .map(str::to_string)
}

/// A process started in the emulated pod; killed on drop.
struct Running {
    child: Child,
    stderr: PathBuf,
}

impl Running {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn curl(port: u16, path: &str) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "10",
        "-H",
        KUBELET_HOST,
        "-w",
        "\n%{http_code}",
    ])
    .arg(format!("http://127.0.0.1:{port}{path}"));
    let out = run_cmd(c, b"");
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_binary_serves_as_the_deployment_runs_it_in_the_image() {
    assert!(
        is_root(),
        "this test makes a mount namespace and switches users to emulate the container: \
         run it as root (CI does)"
    );
    let m = Manifests::load();
    let mut cfg = latchkey_toml(&m);
    // The shared store the ConfigMap names: a real PostgreSQL database,
    // its URL (no password) and password from the Secret, as the
    // Deployment's environment takes them.
    let pg = PgServer::shared();
    let db = pg.database();
    // The port is the manifest's address with a free port (the listener
    // stays on the pod-style wildcard address).
    cfg["server"]["listen"] = toml::Value::from("0.0.0.0:0");

    // The master key, as `latchkey keygen` makes it for the Secret.
    let keygen = run_cmd(
        {
            let mut c = Command::new(latchkey_bin());
            c.arg("keygen");
            c
        },
        b"",
    );
    assert!(keygen.status.success(), "keygen: {}", keygen.stderr);
    let secrets = [
        (
            "latchkey-master-key",
            vec![("master.key", keygen.stdout.clone().into_bytes())],
        ),
        (
            "latchkey-postgres",
            vec![
                ("url", db.url_without_password().into_bytes()),
                ("password", PG_PASSWORD.as_bytes().to_vec()),
            ],
        ),
    ];

    let key_file = cfg["vault"]["key_file"]
        .as_str()
        .expect("vault.key_file")
        .to_string();

    // Without the init container's copy, the Secret's own file (0440 under
    // fsGroup) is refused as the master key: why the copy exists.
    {
        let pod = Pod::new(&m, &secrets);
        let init = pod.container("master-key");
        let secret_path = list(init, "/command")
            .iter()
            .rev()
            .nth(1)
            .and_then(Value::as_str)
            .expect("install's source");
        let mut direct = cfg.clone();
        direct["vault"]["key_file"] =
            toml::Value::from(pod.host_path(init, secret_path).to_string_lossy().as_ref());
        pod.write_config(&toml::to_string(&direct).expect("toml"));
        let server = pod.container("latchkey");
        let env = [
            pod.mapped_image_env(server),
            pod.container_env(server, &secrets),
        ]
        .concat();
        let bin = pod.image_path(IMAGE_BINARY).to_string_lossy().into_owned();
        let mut c = pod.command(server, &[bin], &env, &[]);
        c.arg("serve");
        let out = run_cmd(c, b"");
        assert_eq!(
            out.status.code(),
            Some(1),
            "served with a group-readable key: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("readable by group or others (mode 440)"),
            "{}",
            out.stderr
        );
    }

    let pod = Pod::new(&m, &secrets);
    let server_spec = pod.container("latchkey").clone();
    cfg["vault"]["key_file"] = toml::Value::from(
        pod.host_path(&server_spec, &key_file)
            .to_string_lossy()
            .as_ref(),
    );
    pod.write_config(&toml::to_string(&cfg).expect("toml"));

    // The init container: `install -m 0400` as the pod's user.
    let init = pod.container("master-key");
    let argv: Vec<String> = list(init, "/command")
        .iter()
        .map(|a| {
            let a = a.as_str().expect("argument");
            if a.starts_with('/') && mount_of_opt(init, a).is_some() {
                pod.host_path(init, a).to_string_lossy().into_owned()
            } else {
                a.to_string()
            }
        })
        .collect();
    let out = run_cmd(
        pod.command(init, &argv, &pod.mapped_image_env(init), &[]),
        b"",
    );
    assert!(out.status.success(), "init container: {}", out.stderr);
    let key = pod.host_path(&server_spec, &key_file);
    let meta = std::fs::metadata(&key).expect("the key copy");
    assert_eq!(meta.mode() & 0o777, 0o400);
    assert_eq!((meta.uid(), meta.gid()), (pod.uid, pod.fs_group));
    assert_eq!(std::fs::read_to_string(&key).expect("key"), keygen.stdout);

    // The server container.
    let server = pod.container("latchkey");
    let env = [
        pod.mapped_image_env(server),
        pod.container_env(server, &secrets),
    ]
    .concat();
    let mut argv = vec![pod.image_path(IMAGE_BINARY).to_string_lossy().into_owned()];
    argv.extend(
        list(server, "/args")
            .iter()
            .map(|a| a.as_str().expect("arg").to_string()),
    );
    let stdout = pod.tmp.path().join("serve.stdout");
    let stderr = pod.tmp.path().join("serve.stderr");
    let mut c = pod.command(server, &argv, &env, &[]);
    c.stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("stdout file"))
        .stderr(File::create(&stderr).expect("stderr file"));
    let mut running = Running {
        child: c.spawn().expect("spawn the server"),
        stderr,
    };
    let data_dir = PathBuf::from(
        &env.iter()
            .rev()
            .find(|(k, _)| k == "LATCHKEY_DATA_DIR")
            .expect("LATCHKEY_DATA_DIR")
            .1,
    );
    let port = wait_for_port(&mut running, &data_dir);

    // The kubelet's probes: plain HTTP, the pod's address as Host.
    let (status, body) = curl(port, string(server, "/livenessProbe/httpGet/path"));
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = curl(port, string(server, "/readinessProbe/httpGet/path"));
    assert_eq!(status, 200, "/ready: {body}\n{}", running.stderr());
    let ready: Value = serde_json::from_str(&body).expect("/ready JSON");
    assert_eq!(ready["status"], "ready");

    // The data directory: made by latchkey, 0700, the pod user's, inside
    // the 2777 emptyDir.
    let meta = std::fs::metadata(&data_dir).expect("data dir");
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), pod.uid);
    // On PostgreSQL it holds the lock and the admin token, nothing else.
    let mut held: Vec<String> = std::fs::read_dir(&data_dir)
        .expect("read data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    held.sort();
    assert_eq!(held, ["admin.token", "latchkey.lock"], "{held:?}");

    // `kubectl exec … latchkey setup`: the first owner through this
    // replica's server (its admin token, on loopback inside the pod).
    let exec_env = env.clone();
    let out = run_cmd_for(
        {
            let mut c = pod.command(server, &argv[..1], &exec_env, &[]);
            c.args(["setup", "--username", "owner", "--password-stdin", "--json"]);
            c
        },
        format!("{PASSWORD}\n").as_bytes(),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "setup via the server: {}", out.stderr);
    let setup: Value = serde_json::from_str(&out.stdout).expect("setup JSON");
    assert_eq!(setup["username"], "owner");
    // The owner is in the shared database.
    assert_eq!(
        pg.psql(
            &db.name,
            "SELECT count(*) FROM latchkey_kv WHERE tbl = 'users'"
        )
        .trim(),
        "1"
    );

    // SIGTERM (after preStop) ends it cleanly within the grace period.
    let grace = int(
        at(m.one("Deployment"), "/spec/template/spec"),
        "/terminationGracePeriodSeconds",
    );
    let pid = running.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(u64::try_from(grace).expect("grace"));
    let status = loop {
        if let Some(s) = running.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "not stopped within {grace} s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status}: {}", running.stderr());
    // The Secret and the image are untouched (the root was read-only; the
    // Secret's volume too).
    let secret_file = pod.volume_dir("master-key-secret").join("master.key");
    assert_eq!(
        std::fs::read_to_string(secret_file).expect("secret"),
        keygen.stdout
    );
}

/// Waits (30 s at most) for the server's lock file to name its API URL
/// and returns the port.
fn wait_for_port(running: &mut Running, data_dir: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = running.child.try_wait().expect("wait") {
            panic!("the server exited ({status}):\n{}", running.stderr());
        }
        let url = std::fs::read_to_string(data_dir.join("latchkey.lock"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["api_url"].as_str().map(str::to_string));
        if let Some(url) = url {
            assert!(url.starts_with("http://127.0.0.1:"), "api_url {url}");
            return url
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("a port in api_url");
        }
        assert!(
            Instant::now() < deadline,
            "no api_url within 30 s:\n{}",
            running.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
