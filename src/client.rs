//! The operator commands (`deploy`, `ls`, `logs`, `events`, `rm`,
//! `rollback`; `reload` in reload.rs): clients of a running gateway's admin API.
//!
//! Exit codes scripts can rely on: 0 done; 1 the gateway refused (bad
//! component, bad settings, conflict); 2 usage error; 3 the admin API could
//! not be reached; 4 authentication failed; 5 no such app; 6 the registry
//! of an `oci://` deploy did not give the component (unreachable, refused
//! the credentials, no such tag, a blob that does not match its digest).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::terminal::printable;
use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sockgate_host::admin::api::{DeploySettings, EventJson, LogLineJson};
use sockgate_host::config::Instances;
use sockgate_host::limits::AppLimits;
use tokio::net::TcpStream;

/// Where the admin API is and how to authenticate.
#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// Admin API address.
    #[arg(
        long,
        env = "SOCKGATE_ADMIN",
        default_value = "127.0.0.1:9900",
        global = true
    )]
    pub admin: SocketAddr,
    /// Admin token; default: read from the state directory.
    #[arg(long, env = "SOCKGATE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The gateway's state directory (to find the token).
    #[arg(long, env = "SOCKGATE_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Settings of `sockgate deploy`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeployArgs {
    /// App name (a DNS label).
    pub name: String,
    /// The component to deploy: a `.wasm` file, or a component in an OCI
    /// registry, `oci://REGISTRY/REPOSITORY:TAG` or
    /// `oci://REGISTRY/REPOSITORY@sha256:DIGEST`, pulled by this command
    /// (credentials from the Docker configuration: `$DOCKER_CONFIG` or
    /// `~/.docker/config.json`; HTTPS, plain HTTP for a registry on
    /// localhost) and checked against its digests.
    #[arg(value_name = "COMPONENT|oci://REGISTRY/REPOSITORY:TAG")]
    pub component: PathBuf,
    /// Reach the `oci://` registry over plain HTTP even if it is not on
    /// this machine (a registry on a trusted private network).
    #[arg(long)]
    pub plain_http: bool,
    /// TCP port of its own to serve on, on all addresses (0.0.0.0).
    /// Without `--port` or `--listen`, an app keeps the port it has; a new
    /// app gets none and is served by name only, at `NAME.<base domain>`
    /// on the gateway's shared TLS and QUIC listeners (the gateway needs
    /// `[tls]`), which the command prints.
    #[arg(long, conflicts_with_all = ["listen", "no_port"])]
    pub port: Option<u16>,
    /// TCP address of its own to serve on (default: the app's current one,
    /// or none for a new app).
    #[arg(long, conflicts_with = "no_port")]
    pub listen: Option<SocketAddr>,
    /// Drop the app's own TCP port: serve it by name only, on the shared
    /// TLS and QUIC listeners (its connections on the old port drain).
    #[arg(long)]
    pub no_port: bool,
    /// Instances serving the app: a number, or `auto` for one per core
    /// (default 1: every connection shares the instance's state; with
    /// several, each instance has its own).
    #[arg(long, value_name = "N|auto")]
    pub instances: Option<Instances>,
    /// Outbound rule `host:port` the guest may reach (repeatable).
    #[arg(long)]
    pub outbound: Vec<String>,
    /// A custom domain to serve the app at over TLS (repeatable).
    #[arg(long = "domain")]
    pub domains: Vec<String>,
    /// An ALPN protocol the app speaks (repeatable).
    #[arg(long)]
    pub alpn: Vec<String>,
    /// limits.cpu_budget_ms
    #[arg(long)]
    pub cpu_budget_ms: Option<u64>,
    /// limits.wall_budget_ms
    #[arg(long)]
    pub wall_budget_ms: Option<u64>,
    /// limits.memory_limit_mb
    #[arg(long)]
    pub memory_limit_mb: Option<u64>,
    /// limits.max_connections
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// limits.max_connections_per_ip
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// limits.idle_timeout_secs
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
    /// limits.http_request_timeout_ms (HTTP apps: no response head in time
    /// is `504`)
    #[arg(long)]
    pub http_request_timeout_ms: Option<u64>,
    /// limits.http_max_body_kb (HTTP apps: larger request bodies are `413`)
    #[arg(long)]
    pub http_max_body_kb: Option<u64>,
    /// limits.hibernate_after_secs: drop the app's instances (their
    /// memory) after this long without a connection or pending guest work;
    /// the next connection wakes a fresh one (0: never; default for a
    /// deployed app: 600). Instance state is lost, as on a trap.
    #[arg(long, value_name = "SECS")]
    pub hibernate_after_secs: Option<u64>,
}

/// A failed operation, with the exit code that says what kind.
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    fn new(code: u8, error: anyhow::Error) -> Self {
        Self { code, error }
    }

    /// Prints the error and returns the exit code.
    pub fn report(self) -> ExitCode {
        eprintln!("error: {}", self.error);
        for cause in self.error.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        ExitCode::from(self.code)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::new(1, error)
    }
}

/// A connected admin API client.
pub struct Client {
    args: AdminArgs,
    token: String,
}

impl Client {
    /// Resolves the token and checks nothing else yet.
    pub fn new(args: AdminArgs) -> Result<Self, Failure> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let dir = args.state_dir.clone().unwrap_or_else(|| {
                    let mut config = sockgate_host::Config::default();
                    config.gateway.state_dir = None;
                    config.state_dir()
                });
                let path = dir.join("admin-token");
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_owned())
                    .with_context(|| {
                        format!(
                            "cannot read the admin token from {} (pass --token or \
                             --state-dir)",
                            path.display()
                        )
                    })
                    .map_err(|e| Failure::new(4, e))?
            }
        };
        Ok(Self { args, token })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failure> {
        let addr = self.args.admin;
        let stream = TcpStream::connect(addr).await.map_err(|err| {
            Failure::new(
                3,
                anyhow!("cannot reach the admin API at {addr}: {err} (is the gateway running with gateway.admin set?)"),
            )
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| Failure::new(3, anyhow!("admin API handshake failed: {err}")))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {}", self.token));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(body)
            .map_err(|err| Failure::new(2, anyhow!("bad request: {err}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| Failure::new(3, anyhow!("admin API request failed: {err}")))?;
        match response.status() {
            status if status.is_success() => Ok(response),
            status => {
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let message = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                let code = match status {
                    StatusCode::UNAUTHORIZED => 4,
                    StatusCode::NOT_FOUND => 5,
                    StatusCode::CONFLICT => 7,
                    StatusCode::SERVICE_UNAVAILABLE => 8,
                    _ => 1,
                };
                Err(Failure::new(code, anyhow!("{message}")))
            }
        }
    }

    /// `POST path` with no body; the answer's JSON.
    pub async fn post_json(&self, path: &str) -> Result<Value, Failure> {
        let response = self.send(Method::POST, path, &[], empty()).await?;
        read_json(response).await
    }

    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.args.json
    }

    async fn get_json(&self, path: &str) -> Result<Value, Failure> {
        let response = self.send(Method::GET, path, &[], empty()).await?;
        read_json(response).await
    }

    /// `sockgate ls`.
    pub async fn ls(&self) -> Result<(), Failure> {
        let apps = self.get_json("/v1/apps").await?;
        if self.args.json {
            return print_json(&apps);
        }
        let mut rows = vec![
            [
                "NAME",
                "VERSION",
                "SOURCE",
                "STATE",
                "WORLD",
                "ADDRESS",
                "INSTANCES",
                "OPEN",
                "ACCEPTED",
                "REFUSED",
                "DIGEST",
            ]
            .map(String::from)
            .to_vec(),
        ];
        // Where versions came from, only if one of them says.
        let origins = apps
            .as_array()
            .into_iter()
            .flatten()
            .any(|app| app["origin"].is_string());
        if origins {
            rows[0].push("ORIGIN".to_owned());
        }
        let mut failures = Vec::new();
        for app in apps.as_array().into_iter().flatten() {
            if app["state"] == "failed" {
                failures.push(format!(
                    "app {} not started: {}",
                    text(&app["name"]),
                    text(&app["error"])
                ));
            }
            rows.push(vec![
                text(&app["name"]),
                text(&app["version"]),
                text(&app["source"]),
                match app["hibernation"].as_str() {
                    Some(sleeping @ ("hibernated" | "dormant")) => sleeping.to_owned(),
                    _ => text(&app["state"]),
                },
                text(&app["load"]["world"]),
                text(&app["tcp"]),
                text(&app["instances"]),
                text(&app["active_connections"]),
                text(&app["accepted"]),
                text(&app["refused"]),
                text(&app["digest"]).chars().take(12).collect(),
            ]);
            if origins {
                let origin = app["origin"].as_str().unwrap_or("-").to_owned();
                rows.last_mut().expect("just pushed").push(origin);
            }
        }
        print_table(&rows);
        for failure in failures {
            println!("{}", printable(&failure));
        }
        // A cluster node: the nodes, and which version of each app each
        // serves (a gateway in no cluster answers 404).
        if let Ok(cluster) = self.get_json("/v1/cluster").await {
            print_cluster(&cluster);
        }
        Ok(())
    }

    /// `sockgate deploy`.
    pub async fn deploy(&self, args: DeployArgs) -> Result<(), Failure> {
        sockgate_host::base::names::check_app_name(&args.name).map_err(|e| Failure::new(2, e))?;
        // A registry reference is checked whole before anything else; a
        // file is read at once, a registry pulled once the settings are.
        let from_registry = match args.component.to_str() {
            Some(text) if text.starts_with(crate::oci::SCHEME) => {
                Some(crate::oci::Reference::parse(text).map_err(|e| Failure::new(2, e))?)
            }
            _ => None,
        };
        let file = match from_registry {
            Some(_) => None,
            None => Some(
                std::fs::read(&args.component)
                    .with_context(|| format!("cannot read {}", args.component.display()))
                    .map_err(|e| Failure::new(1, e))?,
            ),
        };
        let listen = match (args.listen, args.port) {
            (Some(addr), _) => Some(addr),
            (None, Some(port)) => Some(SocketAddr::from(([0, 0, 0, 0], port))),
            (None, None) if args.no_port => None,
            // The app's current port, if it has one; a new app: none.
            (None, None) => match self.get_json(&format!("/v1/apps/{}", args.name)).await {
                Ok(app) => match &app["tcp"] {
                    Value::Null => None,
                    tcp => Some(text(tcp).parse().map_err(|_| {
                        Failure::new(1, anyhow!("cannot read the app's current address"))
                    })?),
                },
                Err(_) => None,
            },
        };
        let mut limits = AppLimits::default();
        set(&mut limits.cpu_budget_ms, args.cpu_budget_ms);
        set(&mut limits.wall_budget_ms, args.wall_budget_ms);
        set(&mut limits.memory_limit_mb, args.memory_limit_mb);
        set(&mut limits.max_connections, args.max_connections);
        set(
            &mut limits.max_connections_per_ip,
            args.max_connections_per_ip,
        );
        set(&mut limits.idle_timeout_secs, args.idle_timeout_secs);
        set(
            &mut limits.http_request_timeout_ms,
            args.http_request_timeout_ms,
        );
        set(&mut limits.http_max_body_kb, args.http_max_body_kb);
        limits.hibernate_after_secs = args.hibernate_after_secs;
        let (bytes, pulled) = match (file, from_registry) {
            (Some(bytes), _) => (bytes, None),
            (None, Some(reference)) => {
                let mut pulled = self.pull(&reference, args.plain_http).await?;
                let component = std::mem::take(&mut pulled.component);
                (component, Some((reference, pulled)))
            }
            (None, None) => unreachable!("a deploy reads a file or pulls a reference"),
        };
        // The version remembers where it came from, pinned to the manifest
        // pulled (a tag may move).
        let origin = pulled
            .as_ref()
            .map(|(reference, pulled)| match reference.digest {
                Some(_) => reference.to_string(),
                None => format!("{reference}@{}", pulled.manifest),
            });
        let settings = DeploySettings {
            listen,
            instances: args.instances,
            outbound: args.outbound,
            limits,
            domains: args.domains,
            alpn: args.alpn,
            origin,
        };
        let settings = serde_json::to_string(&settings).map_err(|e| Failure::new(2, e.into()))?;
        let total = bytes.len();
        let progress = Progress::new(total, !self.args.json);
        let chunks: Vec<Bytes> = Bytes::from(bytes)
            .chunks(256 * 1024)
            .map(Bytes::copy_from_slice)
            .collect();
        let body = StreamBody::new(futures::stream::iter(chunks).map(move |chunk| {
            progress.advance(chunk.len());
            Ok::<_, std::io::Error>(Frame::data(chunk))
        }));
        let response = self
            .send(
                Method::PUT,
                &format!("/v1/apps/{}", args.name),
                &[
                    ("sockgate-settings", settings),
                    ("content-length", total.to_string()),
                ],
                BodyExt::boxed(body),
            )
            .await?;
        let mut app = read_json(response).await?;
        if let Some((reference, pulled)) = &pulled {
            // Where this version came from, next to the gateway's answer
            // (whose `digest` is the layer's).
            app["pulled"] = serde_json::json!({
                "reference": reference.to_string(),
                "manifest_digest": pulled.manifest.to_string(),
                "layer_digest": pulled.layer.to_string(),
            });
        }
        if self.args.json {
            return print_json(&app);
        }
        if let Some((reference, pulled)) = &pulled {
            println!(
                "pulled {reference} (manifest {}, component {})",
                pulled.manifest, pulled.layer
            );
        }
        println!(
            "deployed {} version {} ({}, world {}) {} — {}",
            text(&app["name"]),
            text(&app["version"]),
            text(&app["digest"]).chars().take(12).collect::<String>(),
            text(&app["load"]["world"]),
            match &app["tcp"] {
                Value::Null => "without a port of its own".to_owned(),
                tcp => format!("on tcp {}", text(tcp)),
            },
            if app["load"]["shared"].as_bool() == Some(true) {
                "compiled code shared with an app of the same component".to_owned()
            } else if app["load"]["cache_hit"].as_bool() == Some(true) {
                format!(
                    "compiled code from cache in {} ms",
                    text(&app["load"]["load_ms"])
                )
            } else {
                format!("compiled in {} ms", text(&app["load"]["load_ms"]))
            }
        );
        for endpoint in app["endpoints"].as_array().into_iter().flatten() {
            println!("  reachable at {}", printable(&text(endpoint)));
        }
        Ok(())
    }

    /// Pulls the component `reference` names (exit code 6 when the
    /// registry does not give it).
    async fn pull(
        &self,
        reference: &crate::oci::Reference,
        plain_http: bool,
    ) -> Result<crate::oci::Pulled, Failure> {
        if !self.args.json {
            eprintln!("pulling {reference}");
        }
        crate::oci::pull(
            reference,
            plain_http,
            sockgate_host::gateway::MAX_COMPONENT_BYTES,
        )
        .await
        .map_err(|e| Failure::new(6, e))
    }

    /// `sockgate rm`.
    pub async fn rm(&self, name: &str) -> Result<(), Failure> {
        let response = self
            .send(Method::DELETE, &format!("/v1/apps/{name}"), &[], empty())
            .await?;
        let value = read_json(response).await?;
        if self.args.json {
            return print_json(&value);
        }
        println!("removed {name}; its open connections drain");
        Ok(())
    }

    /// `sockgate rollback`.
    pub async fn rollback(&self, name: &str) -> Result<(), Failure> {
        let response = self
            .send(
                Method::POST,
                &format!("/v1/apps/{name}/rollback"),
                &[],
                empty(),
            )
            .await?;
        let app = read_json(response).await?;
        if self.args.json {
            return print_json(&app);
        }
        println!("{name} is back at version {}", text(&app["version"]));
        Ok(())
    }

    /// `sockgate events [NAME]`: an app's events, or without a name the
    /// gateway's own (reloads).
    pub async fn events(&self, name: Option<&str>) -> Result<(), Failure> {
        let path = match name {
            Some(name) => format!("/v1/apps/{name}/events"),
            None => "/v1/events".to_owned(),
        };
        let value = self.get_json(&path).await?;
        if self.args.json {
            return print_json(&value);
        }
        let events: Vec<EventJson> =
            serde_json::from_value(value).map_err(|e| Failure::new(1, e.into()))?;
        for event in events {
            let instance = event
                .instance
                .map(|i| format!("instance {i}"))
                .unwrap_or_else(|| if name.is_some() { "app" } else { "gateway" }.into());
            println!(
                "{}  {instance:<10}  {}",
                clock(event.at_ms),
                printable(&event.text)
            );
        }
        Ok(())
    }

    /// `sockgate logs [-f]`.
    pub async fn logs(&self, name: &str, follow: bool) -> Result<(), Failure> {
        let path = format!(
            "/v1/apps/{name}/logs{}",
            if follow { "?follow=true" } else { "" }
        );
        let response = self.send(Method::GET, &path, &[], empty()).await?;
        let mut body = response.into_body();
        let mut pending = Vec::new();
        let stdout = std::io::stdout();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::new(3, anyhow!("log stream broke: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let mut out = stdout.lock();
                if self.args.json {
                    let _ = out.write_all(&line);
                } else if let Ok(entry) = serde_json::from_slice::<LogLineJson>(&line) {
                    let _ = writeln!(
                        out,
                        "{}  [{}] {:<6} {}",
                        clock(entry.at_ms),
                        entry.instance,
                        printable(&entry.stream),
                        printable(&entry.text)
                    );
                }
                let _ = out.flush();
            }
        }
        Ok(())
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

fn empty() -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    BodyExt::boxed(Empty::<Bytes>::new().map_err(|never| match never {}))
}

async fn read_json(response: hyper::Response<hyper::body::Incoming>) -> Result<Value, Failure> {
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::new(3, anyhow!("reading the response failed: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| Failure::new(1, anyhow!("invalid JSON reply: {e}")))
}

fn print_json(value: &Value) -> Result<(), Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
    Ok(())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_table(rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// `HH:MM:SS.mmm` (UTC) of Unix milliseconds.
fn clock(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        at_ms % 1000
    )
}

/// Upload progress on stderr: redrawn in place on a terminal, in quarters
/// otherwise; then "compiling…" until the gateway answers.
struct Progress {
    total: usize,
    sent: std::sync::atomic::AtomicUsize,
    enabled: bool,
    tty: bool,
}

impl Progress {
    fn new(total: usize, enabled: bool) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            total,
            sent: std::sync::atomic::AtomicUsize::new(0),
            enabled,
            tty: std::io::stderr().is_terminal(),
        })
    }
}

impl Progress {
    fn advance(&self, n: usize) {
        if !self.enabled {
            return;
        }
        let before = self.sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let after = before + n;
        let percent = |x: usize| (x * 100).checked_div(self.total).unwrap_or(100);
        let done = after >= self.total;
        if self.tty {
            eprint!(
                "\ruploading {} KiB: {:3}%{}",
                self.total / 1024,
                percent(after),
                if done { ", compiling…\n" } else { "" }
            );
        } else if percent(before) / 25 != percent(after) / 25 || done {
            eprintln!("uploading {} KiB: {}%", self.total / 1024, percent(after));
            if done {
                eprintln!("compiling…");
            }
        }
    }
}

/// The cluster section of `sockgate ls`: one row per live node, with the
/// version of each cluster app it serves.
fn print_cluster(cluster: &Value) {
    println!();
    println!(
        "cluster: this is node {}; etcd at {} is {}",
        printable(&text(&cluster["node"])),
        printable(
            &cluster["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect::<Vec<_>>()
                .join(",")
        ),
        printable(&text(&cluster["etcd"]))
    );
    let mut rows = vec![
        [
            "NODE",
            "PEER",
            "HEALTH",
            "SOCKGATE",
            "APPS (VERSION SERVED)",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for node in cluster["nodes"].as_array().into_iter().flatten() {
        let apps = node["apps"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, version)| format!("{name}@{}", text(version)))
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            text(&node["name"]),
            text(&node["peer_url"]),
            text(&node["health"]),
            text(&node["sockgate"]),
            if apps.is_empty() {
                "-".to_owned()
            } else {
                apps
            },
        ]);
    }
    print_table(&rows);
}
