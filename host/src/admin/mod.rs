//! The admin listener: a JSON API to deploy and operate apps, a dashboard
//! page, and Prometheus metrics. Everything on it requires the bearer token
//! from the state directory (`Authorization: Bearer …`, or the cookie the
//! dashboard's login sets), and it listens on loopback unless configured
//! otherwise: it deploys code.
//!
//! - [`api`] serves the `/v1/…` endpoints,
//! - [`dashboard`] the HTML page at `/`,
//! - [`metrics`] the Prometheus text at `/metrics`.

pub mod api;
pub mod dashboard;
pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::gateway::Gateway;

/// A response body: whole, or streamed (log following).
pub type Body = BoxBody<Bytes, Infallible>;

/// The admin listener's shared state.
struct Admin {
    gateway: Gateway,
    token: String,
}

/// Binds the admin API on `addr` and serves it in the background; returns
/// the bound address.
pub async fn start(gateway: Gateway, addr: SocketAddr) -> Result<SocketAddr> {
    let token = gateway
        .admin_token()
        .context("the admin API needs a state directory")??;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the admin API (gateway.admin)"))?;
    let bound = listener.local_addr()?;
    gateway.set_admin_port(bound.port());
    let admin = Arc::new(Admin { gateway, token });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

impl Admin {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        if path == "/login" {
            return self.login(&request);
        }
        if !self.authorized(&request) {
            return if path == "/" {
                dashboard::login_page()
            } else {
                error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong admin token: send `Authorization: Bearer <token>` with the \
                     token from the state directory's admin-token file",
                )
            };
        }
        match path.as_str() {
            "/" => dashboard::page(&self.gateway).await,
            "/metrics" => metrics::render(&self.gateway).await,
            _ if path.starts_with("/v1/") => api::handle(&self.gateway, request).await,
            _ => error(StatusCode::NOT_FOUND, "no such page"),
        }
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let headers = request.headers();
        let bearer = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("sockgate_token="));
        [bearer, cookie]
            .into_iter()
            .flatten()
            .any(|given| constant_time_eq(given.trim().as_bytes(), self.token.as_bytes()))
    }

    /// `GET /login?token=…`: sets the dashboard's cookie and goes to `/`.
    fn login(&self, request: &Request<Incoming>) -> Response<Body> {
        let token = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .unwrap_or("");
        if !constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
            return dashboard::login_page();
        }
        Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(hyper::header::LOCATION, "/")
            .header(
                hyper::header::SET_COOKIE,
                format!("sockgate_token={token}; HttpOnly; SameSite=Strict; Path=/"),
            )
            .body(full(""))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
    }
}

/// One served TLS name and its certificate's expiry (Unix seconds), if it
/// has a certificate now: what the dashboard and the metrics report.
pub fn certificate_status(
    gateway: &Gateway,
    apps: &[crate::gateway::AppStatus],
) -> Vec<(String, String, Option<u64>)> {
    let Some(https) = gateway.https() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for app in apps {
        for name in https.names_of(&app.config) {
            let expiry = https
                .certificates()
                .certificate_for(&name)
                .and_then(|key| key.cert.first().cloned())
                .and_then(|der| crate::certs::validity_of(&der).ok())
                .and_then(|v| v.not_after.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            rows.push((app.name.clone(), name, expiry));
        }
    }
    rows
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A whole body.
pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// A response with a content type.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

/// A JSON error: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message });
    respond(
        status,
        "application/json",
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}
