//! Deploy from an OCI registry: Debian's `docker-registry` (the CNCF
//! distribution registry) on loopback, components pushed in the layout
//! `wkg oci push` uses, `sockgate deploy NAME oci://…` by tag, by digest
//! and through an index, with htpasswd credentials from a Docker
//! configuration (`auths` and a credential helper); and what is refused —
//! a tampered or missing blob, an unknown tag, a malformed reference —
//! leaves the running version serving.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use sockgate_testkit::net::free_port;
use sockgate_testkit::output::Running;
use tokio::net::TcpStream;

use crate::deploy::{app_addr, ls, start_admin, version_of};
use crate::support::{ScratchDir, ask, guest};

/// The account of the registry with credentials, and its htpasswd line
/// (bcrypt, cost 4, made once with Python's
/// `crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))`).
const USER: &str = "deployer";
const PASSWORD: &str = "s3cret-pw";
const HTPASSWD: &str = "deployer:$2b$04$RoDDQipe4jpm//dmOHQ60uj4zHp1IzSVlg3WpKmNhb5/gz88rTkn.";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `docker-registry` serving from a scratch directory, killed when
/// dropped.
struct Registry {
    _process: Running,
    addr: SocketAddr,
    storage: PathBuf,
    /// `Authorization` for pushing, when it has credentials.
    authorization: Option<String>,
}

impl Registry {
    /// Starts the registry in `dir`, with htpasswd authentication if
    /// `with_credentials`; returns once it listens.
    fn start(dir: &Path, with_credentials: bool) -> Self {
        let binary = "docker-registry";
        if !Command::new(binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            panic!(
                "Debian's docker-registry is needed for this test: apt-get install \
                 docker-registry (`./dev deps` installs it)"
            );
        }
        let storage = dir.join("registry");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: sockgate-test-secret\n",
            storage.display()
        );
        if with_credentials {
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{HTPASSWD}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: sockgate-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.join("registry.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(binary);
        command.arg("serve").arg(&config_path);
        let process = Running::spawn(command, None).expect("cannot start docker-registry");
        let listening = format!("listening on {addr}");
        assert!(
            process
                .stderr
                .wait_for(Duration::from_secs(30), |text| text.contains(&listening)),
            "docker-registry did not listen on {addr}:\n{}",
            process.stderr.text()
        );
        let authorization = with_credentials.then(|| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
            )
        });
        Self {
            _process: process,
            addr,
            storage,
            authorization,
        }
    }

    /// `oci://ADDR/REPOSITORY` followed by `suffix` (`:tag`, `@sha256:…`).
    fn reference(&self, repository: &str, suffix: &str) -> String {
        format!("oci://{}/{repository}{suffix}", self.addr)
    }

    /// One request to the registry.
    async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .header("content-type", content_type)
            .header("content-length", body.len());
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    /// Uploads a blob (monolithic: POST for an upload, PUT its bytes);
    /// returns its digest.
    async fn push_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", sha256(bytes));
        let (status, headers, body) = self
            .request(
                Method::POST,
                &format!("/v2/{repository}/blobs/uploads/"),
                "application/octet-stream",
                Vec::new(),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
        let location = headers["location"].to_str().unwrap();
        let path = match location.find("/v2/") {
            Some(start) => &location[start..],
            None => panic!("upload location {location}"),
        };
        let separator = if path.contains('?') { '&' } else { '?' };
        let (status, _, body) = self
            .request(
                Method::PUT,
                &format!("{path}{separator}digest={digest}"),
                "application/octet-stream",
                bytes.to_vec(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body:?}");
        digest
    }

    /// Puts a manifest (or index) under `tag`; returns its digest.
    async fn push_manifest(
        &self,
        repository: &str,
        tag: &str,
        media_type: &str,
        manifest: &serde_json::Value,
    ) -> String {
        let bytes = serde_json::to_vec(manifest).unwrap();
        let (status, _, body) = self
            .request(
                Method::PUT,
                &format!("/v2/{repository}/manifests/{tag}"),
                media_type,
                bytes.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body:?}");
        format!("sha256:{}", sha256(&bytes))
    }

    /// Pushes `component` as `wkg oci push` does (config
    /// `application/vnd.wasm.config.v0+json`, one `application/wasm`
    /// layer); returns the manifest's digest.
    async fn push_component(&self, repository: &str, tag: &str, component: &Path) -> String {
        let bytes = std::fs::read(component).unwrap();
        let layer = self.push_blob(repository, &bytes).await;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer],
        }))
        .unwrap();
        let config_digest = self.push_blob(repository, &config).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.wasm.config.v0+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/wasm",
                "digest": layer,
                "size": bytes.len(),
            }],
        });
        self.push_manifest(repository, tag, OCI_MANIFEST, &manifest)
            .await
    }

    /// The size of the manifest `tag` names.
    async fn manifest_len(&self, repository: &str, tag: &str) -> usize {
        let (status, _, body) = self
            .request(
                Method::GET,
                &format!("/v2/{repository}/manifests/{tag}"),
                OCI_MANIFEST,
                Vec::new(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        body.len()
    }

    /// Where the registry keeps the bytes of blob `hex`.
    fn blob_file(&self, hex: &str) -> PathBuf {
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// Runs the CLI against `admin` with the Docker configuration directory
/// `docker_config` (never the user's own) and `path_first` ahead on PATH;
/// returns exit code, stdout, stderr.
fn sockgate(
    admin: SocketAddr,
    state: &Path,
    docker_config: &Path,
    path_first: Option<&Path>,
    args: &[&str],
) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command
        .args(args)
        .env("SOCKGATE_ADMIN", admin.to_string())
        .env("SOCKGATE_STATE_DIR", state)
        .env("DOCKER_CONFIG", docker_config)
        .stdin(Stdio::null());
    if let Some(dir) = path_first {
        let mut path = OsString::from(dir);
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        command.env("PATH", path);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The digest `sockgate ls` shows for `name`.
fn digest_of(admin: SocketAddr, state: &Path, name: &str) -> String {
    ls(admin, state)
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no app {name}"))["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Where app `name`'s serving version came from, as `ls --json` says.
fn origin_of(admin: SocketAddr, state: &Path, name: &str) -> Option<String> {
    ls(admin, state)
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no app {name}"))["origin"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn deploys_from_a_registry_by_tag_digest_and_index_and_refuses_what_it_cannot_verify() {
    let dir = ScratchDir::new("oci-deploy");
    let registry = Registry::start(&dir.0, false);
    let docker_config = dir.0.join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    let (echo, hostile) = (guest("echo"), guest("hostile"));
    let echo_hex = sha256(&std::fs::read(&echo).unwrap());
    let v1 = registry.push_component("apps/svc", "v1", &echo).await;
    let v2 = registry.push_component("apps/svc", "v2", &hostile).await;
    // An index as multi-platform publishing makes: the wasm entry is the
    // one to deploy.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": v2,
             "size": registry.manifest_len("apps/svc", "v2").await,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": v1,
             "size": registry.manifest_len("apps/svc", "v1").await,
             "platform": {"architecture": "wasm", "os": "wasip2"}},
        ],
    });
    let multi = registry
        .push_manifest("apps/svc", "multi", OCI_INDEX, &index)
        .await;

    let state = dir.0.join("state");
    let (gateway, admin) = start_admin(&state, None);
    let run = |args: &[&str]| sockgate(admin, &state, &docker_config, None, args);

    // By tag: pulled over plain HTTP (a loopback registry), verified,
    // deployed, served; the version's digest is the layer's.
    let by_tag = registry.reference("apps/svc", ":v1");
    let (code, stdout, stderr) = run(&["deploy", "svc", &by_tag, "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "pulled {by_tag} (manifest {v1}, component sha256:{echo_hex})"
        )),
        "{stdout}"
    );
    assert_eq!(digest_of(admin, &state, "svc"), echo_hex);
    // The version remembers its origin, pinned to the manifest pulled.
    assert_eq!(
        origin_of(admin, &state, "svc"),
        Some(format!("{by_tag}@{v1}"))
    );
    let addr = app_addr(admin, &state, "svc");
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert_eq!(version_of(&mut first).await, "echo");

    // By digest, with --json: where the version came from is in the answer.
    let by_digest = registry.reference("apps/svc", &format!("@{v2}"));
    let (code, stdout, stderr) = run(&["deploy", "svc", &by_digest, "--json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["pulled"]["reference"], by_digest.as_str());
    assert_eq!(answer["pulled"]["manifest_digest"], v2.as_str());
    assert_eq!(
        answer["pulled"]["layer_digest"],
        format!("sha256:{}", answer["digest"].as_str().unwrap())
    );
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(version_of(&mut second).await, "hostile");
    assert_eq!(origin_of(admin, &state, "svc"), Some(by_digest.clone()));

    // Through the index: its wasm entry (v1, echo).
    let (code, stdout, stderr) = run(&["deploy", "svc", &registry.reference("apps/svc", ":multi")]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("manifest {multi}")), "{stdout}");
    assert_eq!(digest_of(admin, &state, "svc"), echo_hex);
    // And back to v2 by digest: the version the refusals below must leave.
    let (code, stdout, stderr) = run(&["deploy", "svc", &by_digest]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let serving = digest_of(admin, &state, "svc");

    // Refused, each with its reason; nothing changes.
    let refused = |args: &[&str], exit: i32, why: &str| {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, exit, "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(why), "{args:?}: wanted {why:?} in {stderr}");
    };
    refused(
        &["deploy", "svc", &registry.reference("apps/svc", ":v9")],
        6,
        "no manifest `v9` in repository `apps/svc`",
    );
    let absent = format!("sha256:{}", sha256(b"not pushed"));
    refused(
        &[
            "deploy",
            "svc",
            &registry.reference("apps/svc", &format!("@{absent}")),
        ],
        6,
        &format!("no manifest `{absent}`"),
    );
    refused(
        &["deploy", "svc", &registry.reference("apps/svc", "")],
        2,
        "names neither a tag nor a digest",
    );
    refused(
        &["deploy", "svc", &registry.reference("Apps/svc", ":v1")],
        2,
        "lowercase",
    );
    refused(
        &[
            "deploy",
            "svc",
            &registry.reference("apps/svc", "@sha256:12ab"),
        ],
        2,
        "64 hexadecimal digits",
    );
    // A byte of the echo component changed in the registry's storage.
    let blob = registry.blob_file(&echo_hex);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    refused(&["deploy", "svc", &by_tag], 6, "does not match its digest");
    // The blob gone from the registry.
    std::fs::remove_file(&blob).unwrap();
    refused(
        &["deploy", "svc", &by_tag],
        6,
        &format!("sha256:{echo_hex}"),
    );

    assert_eq!(digest_of(admin, &state, "svc"), serving);
    let mut after = TcpStream::connect(addr).await.unwrap();
    assert_eq!(version_of(&mut after).await, "hostile");

    // A version deployed from a file has no origin; `ls` shows both.
    let file = echo.to_str().unwrap();
    let (code, stdout, stderr) = run(&["deploy", "local", file, "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(origin_of(admin, &state, "local"), None);
    let (code, table, stderr) = run(&["ls"]);
    assert_eq!(code, 0, "{table}{stderr}");
    assert!(table.lines().next().unwrap().ends_with("ORIGIN"), "{table}");
    let row = |name: &str| {
        table
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row {name} in {table}"))
            .to_owned()
    };
    assert!(row("svc").ends_with(&by_digest), "{table}");
    assert!(row("local").ends_with(" -"), "{table}");
    // Rolled back to v1 (through the index): that version's origin.
    let (code, stdout, stderr) = run(&["rollback", "svc"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        origin_of(admin, &state, "svc"),
        Some(format!(
            "{}@{multi}",
            registry.reference("apps/svc", ":multi")
        ))
    );
    drop(gateway);
}

#[tokio::test]
async fn a_registry_with_credentials_is_pulled_from_with_the_docker_configuration() {
    let dir = ScratchDir::new("oci-auth");
    let registry = Registry::start(&dir.0, true);
    registry
        .push_component("team/echo", "v1", &guest("echo"))
        .await;
    let state = dir.0.join("state");
    let (gateway, admin) = start_admin(&state, None);
    let reference = registry.reference("team/echo", ":v1");
    let deploy = [
        "deploy",
        "auth",
        reference.as_str(),
        "--listen",
        "127.0.0.1:0",
    ];
    let name = registry.addr.to_string();
    let docker_config = |label: &str, config: serde_json::Value| {
        let path = dir.0.join(label);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("config.json"), config.to_string()).unwrap();
        path
    };
    let auth = |user: &str, password: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    };

    // No credentials for this registry: the message says how to log in.
    let none = docker_config(
        "none",
        serde_json::json!({"auths": {"other.example:5000": {"auth": auth(USER, PASSWORD)}}}),
    );
    let (code, stdout, stderr) = sockgate(admin, &state, &none, None, &deploy);
    assert_eq!(code, 6, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("the registry {name} needs credentials"))
            && stderr.contains(&format!("docker login {name}")),
        "{stderr}"
    );

    // A wrong password: refused, naming the registry.
    let wrong = docker_config(
        "wrong",
        serde_json::json!({"auths": {name.clone(): {"auth": auth(USER, "guess")}}}),
    );
    let (code, stdout, stderr) = sockgate(admin, &state, &wrong, None, &deploy);
    assert_eq!(code, 6, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("the registry {name} refused the credentials")),
        "{stderr}"
    );
    assert!(ls(admin, &state).is_empty(), "a refused pull deployed");

    // `docker login`'s entry (`auths`, keyed as Docker writes it).
    let right = docker_config(
        "right",
        serde_json::json!({"auths": {format!("http://{name}"): {"auth": auth(USER, PASSWORD)}}}),
    );
    let (code, stdout, stderr) = sockgate(admin, &state, &right, None, &deploy);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let addr = app_addr(admin, &state, "auth");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut stream, "with auths").await, "with auths");

    // A credential helper (`credHelpers`), as `docker login` with a
    // keyring configures: `docker-credential-NAME get`, the server on its
    // stdin.
    let helpers = dir.0.join("bin");
    std::fs::create_dir_all(&helpers).unwrap();
    let helper = helpers.join("docker-credential-sockgate-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\nif [ \"$server\" = \"{name}\" ]; then\n  \
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \
             \"$server\"\nelse\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n"
        ),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&helper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&helper, permissions).unwrap();
    let with_helper = docker_config(
        "helper",
        serde_json::json!({"credHelpers": {name.clone(): "sockgate-test"}}),
    );
    let redeploy = ["deploy", "auth", reference.as_str()];
    let (code, stdout, stderr) = sockgate(admin, &state, &with_helper, Some(&helpers), &redeploy);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("version 2"), "{stdout}");
    let mut again = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut again, "with a helper").await, "with a helper");
    drop(gateway);
}
