//! The JSON API.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /v1/apps` | list apps (`state`: `running`, or `failed` with an `error` for a persisted app that could not start) |
//! | `GET /v1/apps/{name}` | inspect one |
//! | `PUT /v1/apps/{name}` | deploy: body = the component, header `sockgate-settings` = JSON settings |
//! | `DELETE /v1/apps/{name}` | remove (connections drain) |
//! | `POST /v1/apps/{name}/rollback` | back to the previous version |
//! | `GET /v1/apps/{name}/logs[?follow=true]` | log lines as JSON lines, following if asked |
//! | `GET /v1/apps/{name}/events` | events as JSON |
//! | `POST /v1/reload` | re-read the configuration file ([`Reloaded`](crate::gateway::Reloaded) as JSON; 400 when the file is refused, 409 when the gateway has none) |
//! | `GET /v1/events` | the gateway's own events (reloads) as JSON |
//!
//! Errors are `{"error": "..."}` with 400 (bad input: the message names
//! the setting and the bound), 401, 403 (a change by a dashboard session
//! without its CSRF header), 404, 409 (an app owned by the configuration
//! file), 413 (too large), 408 (an upload slower than [`UPLOAD_TIMEOUT`]).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::{Body, error, json};
use crate::base::names::{AppName, DnsName};
use crate::cluster::ClusterError;
use crate::config::AppConfig;
use crate::gateway::{DeployError, Gateway, MAX_COMPONENT_BYTES, ReloadError};
use crate::limits::AppLimits;
use crate::tenant::logs::{Event, LogLine, Stream};

/// An upload must arrive whole within this time. Threat: a client
/// trickling a 64 MiB body to hold a connection (and its buffer) for
/// hours.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// The settings a deploy carries (everything of an app but its name and
/// component), as JSON in the `sockgate-settings` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySettings {
    /// TCP address to serve on; absent: no port of its own, served by name
    /// on the gateway's TLS and QUIC listeners (see [`AppConfig::listen`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Instances (default 1; a number or `"auto"`).
    #[serde(default)]
    pub instances: Option<crate::config::Instances>,
    /// Outbound rules.
    #[serde(default)]
    pub outbound: Vec<String>,
    /// Limits.
    #[serde(default)]
    pub limits: AppLimits,
    /// Custom domains served over TLS, besides `<name>.<base domain>`.
    #[serde(default)]
    pub domains: Vec<String>,
    /// ALPN protocols the app speaks.
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Where the client got the component, kept with the version and shown
    /// by `ls` and the dashboard: `sockgate deploy NAME oci://…` sends the
    /// registry reference pinned to the manifest it pulled
    /// (`oci://REGISTRY/REPO:TAG@sha256:…`). Printable ASCII, at most
    /// [`MAX_ORIGIN_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// The longest `origin` a deploy may carry. Threat: an origin as large as
/// the header allows, kept in every version record and shown on every
/// listing.
pub const MAX_ORIGIN_BYTES: usize = 512;

/// A deploy's `origin`, checked: printable ASCII (no spaces or control
/// characters, which would garble a listing or a log line), at most
/// [`MAX_ORIGIN_BYTES`].
fn check_origin(origin: &str) -> Result<(), String> {
    if origin.is_empty() || origin.len() > MAX_ORIGIN_BYTES {
        return Err(format!(
            "invalid sockgate-settings: origin must be 1 to {MAX_ORIGIN_BYTES} bytes, not {}",
            origin.len()
        ));
    }
    if !origin.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "invalid sockgate-settings: origin must be printable ASCII without spaces \
             (e.g. oci://registry/repo:tag@sha256:…)"
                .to_owned(),
        );
    }
    Ok(())
}

/// A log line as the API returns it.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogLineJson {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Instance index.
    pub instance: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line.
    pub text: String,
}

/// An event as the API returns it.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventJson {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Instance index, when it concerns one.
    pub instance: Option<u32>,
    /// What happened.
    pub text: String,
}

pub(super) async fn handle(gateway: &Gateway, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path
        .trim_start_matches("/v1/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = request.method().clone();
    // An app's name is parsed once, here, for every route under `apps/`.
    let app_name = match segments
        .get(1)
        .filter(|_| segments.first() == Some(&"apps"))
    {
        Some(name) => match AppName::parse(name) {
            Ok(name) => Some(name),
            Err(err) => return error(StatusCode::BAD_REQUEST, &format!("{err:#}")),
        },
        None => None,
    };
    match (method, segments.as_slice()) {
        (Method::GET, ["apps"]) => {
            let mut apps: Vec<serde_json::Value> = Vec::new();
            for app in gateway.apps().await {
                apps.push(serde_json::to_value(&app).unwrap_or_default());
            }
            for app in gateway.failed_apps() {
                apps.push(serde_json::to_value(&app).unwrap_or_default());
            }
            apps.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            json(StatusCode::OK, &apps)
        }
        (Method::GET, ["apps", name]) => match gateway.status(name).await {
            Some(status) => json(StatusCode::OK, &status),
            None => match gateway.failed_apps().into_iter().find(|a| a.name == *name) {
                Some(failed) => json(StatusCode::OK, &failed),
                None => not_found(name),
            },
        },
        (Method::PUT, ["apps", _]) => match app_name {
            Some(name) => deploy(gateway, name, request).await,
            None => error(StatusCode::NOT_FOUND, "no such route"),
        },
        (Method::DELETE, ["apps", name]) => match gateway.remove(name).await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "removed": name })),
            Err(err) => refusal(err),
        },
        (Method::POST, ["apps", name, "rollback"]) => match gateway.rollback(name).await {
            Ok(status) => json(StatusCode::OK, &status),
            Err(err) => refusal(err),
        },
        (Method::GET, ["apps", name, "logs"]) => {
            let follow = request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "follow=true" || p == "follow=1"));
            logs(gateway, name, follow)
        }
        (Method::POST, ["reload"]) => match gateway.reload().await {
            Ok(reloaded) => json(StatusCode::OK, &reloaded),
            Err(err) => {
                let status = match &err {
                    ReloadError::NoConfigFile => StatusCode::CONFLICT,
                    ReloadError::Refused(_) => StatusCode::BAD_REQUEST,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                error(status, &err.to_string())
            }
        },
        (Method::GET, ["cluster"]) => match gateway.cluster_status().await {
            Some(cluster) => json(StatusCode::OK, &cluster),
            None => error(
                StatusCode::NOT_FOUND,
                "this gateway is in no cluster (no [cluster] section)",
            ),
        },
        (Method::GET, ["events"]) => {
            let events: Vec<EventJson> = gateway.events().events().iter().map(event_json).collect();
            json(StatusCode::OK, &events)
        }
        (Method::GET, ["apps", name, "events"]) => match gateway.log_of(name) {
            Some(log) => {
                let events: Vec<EventJson> = log.events().iter().map(event_json).collect();
                json(StatusCode::OK, &events)
            }
            None => not_found(name),
        },
        _ => error(StatusCode::NOT_FOUND, &format!("no endpoint {path}")),
    }
}

async fn deploy(gateway: &Gateway, name: AppName, request: Request<Incoming>) -> Response<Body> {
    let (config, origin) = match deploy_config(name, request.headers().get("sockgate-settings")) {
        Ok(parsed) => parsed,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    // Bound the upload before reading it, so a huge body costs nothing.
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_COMPONENT_BYTES) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the component is larger than {} MiB",
                MAX_COMPONENT_BYTES >> 20
            ),
        );
    }
    let upload = tokio::time::timeout(
        UPLOAD_TIMEOUT,
        Limited::new(request.into_body(), MAX_COMPONENT_BYTES).collect(),
    )
    .await;
    let body = match upload {
        Ok(Ok(body)) => body.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the upload did not arrive within {} s",
                    UPLOAD_TIMEOUT.as_secs()
                ),
            );
        }
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the component is larger than {} MiB",
                    MAX_COMPONENT_BYTES >> 20
                ),
            );
        }
    };
    // Every setting is checked by the gateway (`AppConfig::check`, with
    // the operator's ceilings) before anything is compiled or stored.
    match gateway.deploy(config, body.to_vec(), origin).await {
        Ok(status) => json(StatusCode::OK, &status),
        Err(err) => refusal(err),
    }
}

/// The app a deploy of `name` describes, from its `sockgate-settings`
/// header (JSON [`DeploySettings`]): parsed, its domains parsed as names,
/// with the version's origin if the client gave one; or what was wrong (a
/// `400`). Its limits and ceilings are checked by the gateway.
/// (Crate-visible for the fuzz target over it.)
pub(crate) fn deploy_config(
    name: AppName,
    header: Option<&hyper::header::HeaderValue>,
) -> Result<(AppConfig, Option<String>), String> {
    let text = header
        .ok_or("missing `sockgate-settings` header (JSON: listen, instances, outbound, limits, domains)")?
        .to_str()
        .map_err(|_| "sockgate-settings is not ASCII")?;
    let settings = serde_json::from_str::<DeploySettings>(text)
        .map_err(|err| format!("invalid sockgate-settings: {err}"))?;
    let mut config = AppConfig::new(name, Default::default(), settings.listen);
    config.instances = settings.instances;
    config.outbound = settings.outbound;
    config.limits = settings.limits;
    config.domains = settings
        .domains
        .iter()
        .map(|domain| DnsName::parse(domain))
        .collect::<anyhow::Result<_>>()
        .map_err(|err| {
            format!(
                "{:#}",
                err.context(format!("app `{}`: domains", config.name))
            )
        })?;
    config.alpn = settings.alpn;
    if let Some(origin) = &settings.origin {
        check_origin(origin)?;
    }
    Ok((config, settings.origin))
}

fn logs(gateway: &Gateway, name: &str, follow: bool) -> Response<Body> {
    let Some(log) = gateway.log_of(name) else {
        return not_found(name);
    };
    // Subscribe before reading the backlog, so no line falls in between.
    let live = follow.then(|| log.follow());
    let mut backlog = String::new();
    for line in log.lines() {
        backlog.push_str(&line_json(&line));
    }
    let body: Body = match live {
        None => super::full(backlog),
        Some(receiver) => {
            let backlog = futures::stream::once(async move { Bytes::from(backlog) });
            let lines = tokio_stream_from(receiver).map(|line| Bytes::from(line_json(&line)));
            let frames = backlog
                .chain(lines)
                .map(|bytes| Ok::<_, std::convert::Infallible>(Frame::data(bytes)));
            BodyExt::boxed(StreamBody::new(frames))
        }
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// The lines of a broadcast receiver as a stream; lagging skips lines.
fn tokio_stream_from(
    receiver: tokio::sync::broadcast::Receiver<LogLine>,
) -> impl futures::Stream<Item = LogLine> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(line) => return Some((line, receiver)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

fn line_json(line: &LogLine) -> String {
    let value = LogLineJson {
        at_ms: millis(line.at),
        instance: line.instance,
        stream: match line.stream {
            Stream::Stdout => "stdout".into(),
            Stream::Stderr => "stderr".into(),
            Stream::Access => "access".into(),
        },
        text: line.text.clone(),
    };
    let mut text = serde_json::to_string(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// An event in its JSON form.
pub fn event_json(event: &Event) -> EventJson {
    EventJson {
        at_ms: millis(event.at),
        instance: event.instance,
        text: event.kind.to_string(),
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn not_found(name: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, &format!("no app `{name}`"))
}

/// Maps a refused change to its status, by kind: an app owned by the
/// configuration file is a conflict, an unknown app not found, a component
/// over the limit too large, anything else bad input. Every variant is
/// named, so a new one needs a decision here (the CLI's exit codes rest on
/// these codes: 404 is exit code 5, 409 is 7, 503 is 8, the others 1).
fn refusal(err: DeployError) -> Response<Body> {
    let status = match &err {
        DeployError::NoSuchApp { .. } | DeployError::NotDeployed { .. } => StatusCode::NOT_FOUND,
        DeployError::OwnedByConfig { .. } | DeployError::Cluster(ClusterError::Conflict { .. }) => {
            StatusCode::CONFLICT
        }
        DeployError::Cluster(
            ClusterError::Unavailable { .. } | ClusterError::TooFewHolders { .. },
        ) => StatusCode::SERVICE_UNAVAILABLE,
        DeployError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        DeployError::InvalidSettings(_)
        | DeployError::InvalidComponent { .. }
        | DeployError::Bind(_)
        | DeployError::Tls(_)
        | DeployError::NoStateDirectory { .. }
        | DeployError::NoPreviousVersion { .. }
        | DeployError::State(_)
        | DeployError::Internal(_) => StatusCode::BAD_REQUEST,
    };
    // The whole chain, as the operator needs it.
    error(status, &format!("{:#}", anyhow::Error::new(err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(origin: &str) -> hyper::header::HeaderValue {
        let json = serde_json::json!({"listen": "127.0.0.1:0", "origin": origin});
        hyper::header::HeaderValue::from_str(&json.to_string()).unwrap()
    }

    #[test]
    fn a_deploys_origin_is_kept_only_if_printable_and_short() {
        let name = || AppName::parse("svc").unwrap();
        let pinned = "oci://127.0.0.1:5000/apps/svc:v1@sha256:0123";
        let (_, origin) = deploy_config(name(), Some(&settings(pinned))).unwrap();
        assert_eq!(origin.as_deref(), Some(pinned));
        let header = hyper::header::HeaderValue::from_static(r#"{"listen":"127.0.0.1:0"}"#);
        assert_eq!(deploy_config(name(), Some(&header)).unwrap().1, None);
        for bad in [
            "",
            "oci://a b",
            "oci://a\tb",
            &"x".repeat(MAX_ORIGIN_BYTES + 1),
        ] {
            let why = deploy_config(name(), Some(&settings(bad))).unwrap_err();
            assert!(why.contains("origin"), "{bad:?}: {why}");
        }
    }
}
