//! The admin listener: a JSON API to deploy and operate apps, a dashboard
//! page, and Prometheus metrics. It deploys code, so everything on it
//! requires the bearer token from the state directory (`Authorization:
//! Bearer …`, what the CLI sends) or a dashboard session ([`session`]),
//! and it listens on loopback unless the operator allows otherwise
//! (`gateway.allow_remote_admin`).
//!
//! - [`api`] serves the `/v1/…` endpoints,
//! - [`dashboard`] the overview page at `/` (with [`cluster_panel`] on a
//!   cluster node), [`app_page`] each app's page at `/apps/NAME`,
//! - [`live`] the charts' live streams (`/live/…`) and the static files
//!   (`/assets/…`), fed by [`timeline`], the one sampler of the last hour,
//! - [`metrics`] the Prometheus text at `/metrics`,
//! - [`session`] the dashboard's sessions.
//!
//! The dashboard logs in with a form posted to `/login` (the token in the
//! body, never in a URL); the cookie it gets holds a session id. A request
//! authenticated by that cookie may read; one that changes something (any
//! method but GET and HEAD) must also send the session's `X-Sockgate-Csrf`
//! header and come from this listener's own origin (`Origin`,
//! `Sec-Fetch-Site`). Threat: a page of any app on the same host name (the
//! cookie reaches it: cookies ignore ports) making the operator's browser
//! roll back or remove apps with a plain form.
//!
//! The listener itself is bounded: [`MAX_CONNECTIONS`] connections, of
//! which one client holds at most [`CONNECTIONS_PER_CLIENT`]; a first byte
//! within [`FIRST_BYTE_TIMEOUT`]; a request head of at most
//! [`MAX_REQUEST_HEAD`] bytes within [`HEADER_READ_TIMEOUT`] (idle
//! keep-alive connections included); uploads within
//! [`api::UPLOAD_TIMEOUT`]. Threat: half-sent requests (300 of them took
//! the gateway from 15 to 131 MB and stayed open) or a connection flood
//! keeping the operator out.

pub mod api;
pub(crate) mod app_page;
pub(crate) mod cluster_panel;
pub(crate) mod dashboard;
pub(crate) mod html;
pub(crate) mod live;
pub(crate) mod metrics;
pub(crate) mod session;
pub(crate) mod timeline;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::listen::accept::{ClientSlots, FIRST_BYTE_TIMEOUT, accept_loop, first_byte};
use session::Sessions;

/// Connections to the admin API at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections one client (an IPv4 address, an IPv6 /64) may hold, so a
/// flood from one address leaves room for the operator.
pub const CONNECTIONS_PER_CLIENT: usize = 32;
/// A request head must arrive within this time; a connection waiting for
/// its next request is closed after it too.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (hyper's read buffer); larger heads get 431.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// The largest login form body.
const MAX_LOGIN_BODY: usize = 4096;
/// The header carrying a session's CSRF token.
pub const CSRF_HEADER: &str = "x-sockgate-csrf";

/// A response body: whole, or streamed (log following).
pub type Body = BoxBody<Bytes, Infallible>;

/// The admin listener's shared state.
pub(crate) struct Admin {
    gateway: Gateway,
    token: String,
    sessions: Sessions,
    timeline: Arc<timeline::Timeline>,
}

/// Who a request is, as far as the admin API is concerned.
enum Caller {
    /// The bearer token: anything.
    Token,
    /// A dashboard session: reads; changes only with its CSRF token from
    /// this origin.
    Session(session::Valid),
    /// Nobody.
    Anonymous,
    /// An `Authorization` header with a wrong token (never tried as a
    /// session).
    WrongToken,
}

/// Binds the admin API's address, before the gateway starts its apps (so
/// that its port is known, and protected from guests, from the first app
/// on). Serve it with [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| {
        anyhow::anyhow!(
            "cannot listen on {addr} for the admin API (gateway.admin): {err}; {}",
            crate::listen::tcp::bind_hint(&err)
        )
    })
}

/// Serves the admin API on `listener` in the background; returns its
/// address.
pub fn serve(gateway: Gateway, listener: TcpListener) -> Result<SocketAddr> {
    let token = gateway
        .admin_token()
        .context("the admin API needs a state directory")??;
    let bound = listener.local_addr()?;
    gateway.set_admin_port(bound.port());
    if !bound.ip().is_loopback() {
        tracing::warn!(
            "the admin API listens on {bound}, which is not a loopback address \
             (gateway.allow_remote_admin): it speaks plain HTTP, so the admin token and the \
             dashboard's session cross the network in clear text. Put a TLS-terminating proxy \
             in front of it, or listen on 127.0.0.1"
        );
    }
    let admin = Admin::new(gateway, token);
    // The one sampler behind the dashboard's charts.
    tokio::spawn(admin.timeline.clone().run(admin.gateway.clone()));
    let slots = ClientSlots::new(MAX_CONNECTIONS, CONNECTIONS_PER_CLIENT);
    tokio::spawn(async move {
        accept_loop(&listener, "admin", |stream, peer| {
            let slot = match slots.take(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    tracing::debug!("admin: {peer}: no connection slot ({why:?}); closed");
                    return;
                }
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                if let Err(err) = first_byte(&stream, FIRST_BYTE_TIMEOUT).await {
                    tracing::debug!("admin: {peer}: {err}");
                    return;
                }
                serve_connection(admin, stream, peer, false).await;
                drop(slot);
            });
        })
        .await
    });
    Ok(bound)
}

/// Binds the admin API on `addr` and serves it in the background; returns
/// the bound address. ([`bind`] then [`serve`].)
pub async fn start(gateway: Gateway, addr: SocketAddr) -> Result<SocketAddr> {
    serve(gateway, bind(addr).await?)
}

/// Serves the admin API's HTTP/1.1 on one accepted connection (`io`, from
/// `peer`) until it closes. `half_close`: whether requests already
/// received are still answered once the client has shut its sending side
/// (hyper's `half_close`; off for the listener, as hyper's default; on for
/// the fuzz target, which sends its requests and then its end of stream).
pub(crate) async fn serve_connection<I>(
    admin: Arc<Admin>,
    io: I,
    peer: SocketAddr,
    half_close: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.handle(request, peer.ip()).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .half_close(half_close)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(err) = served {
        tracing::debug!("admin: {peer}: {err}");
    }
}

impl Admin {
    /// The admin API of `gateway`, which requires `token`, with an empty
    /// timeline (whoever serves it starts the sampler: see [`serve`]).
    pub(crate) fn new(gateway: Gateway, token: String) -> Arc<Self> {
        Arc::new(Admin {
            gateway,
            token,
            sessions: Sessions::default(),
            timeline: timeline::Timeline::new(),
        })
    }

    async fn handle(&self, request: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        let mut response = self.route(request, peer).await;
        harden(response.headers_mut());
        response
    }

    async fn route(&self, request: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        let path = request.uri().path().to_owned();
        match (request.method(), path.as_str()) {
            (&Method::POST, "/login") => return self.login(request, peer).await,
            (_, "/login") => return dashboard::login_page(StatusCode::OK, None),
            (&Method::POST, "/logout") => return self.logout(&request, peer),
            _ => {}
        }
        let caller = self.caller(&request, peer);
        match &caller {
            Caller::WrongToken => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "wrong admin token: send `Authorization: Bearer <token>` with the token \
                     from the state directory's admin-token file",
                );
            }
            Caller::Anonymous if path == "/" => {
                return dashboard::login_page(StatusCode::UNAUTHORIZED, None);
            }
            Caller::Anonymous => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong admin token: send `Authorization: Bearer <token>` with the \
                     token from the state directory's admin-token file",
                );
            }
            Caller::Session(valid) if !is_safe(request.method()) => {
                if let Err(why) = same_origin_with_csrf(&request, &valid.csrf) {
                    return error(StatusCode::FORBIDDEN, &why);
                }
            }
            _ => {}
        }
        let csrf = match &caller {
            Caller::Session(valid) => Some(valid.csrf.as_str()),
            _ => None,
        };
        match path.as_str() {
            "/" => dashboard::page(&self.gateway, csrf).await,
            "/metrics" => metrics::render(&self.gateway).await,
            "/live/gateway" => live::stream(&self.timeline, live::Subject::Gateway),
            _ if path.starts_with("/v1/") => api::handle(&self.gateway, request).await,
            _ if path.starts_with("/assets/") => {
                live::asset(&path).unwrap_or_else(|| error(StatusCode::NOT_FOUND, "no such file"))
            }
            _ => {
                if let Some(name) = path.strip_prefix("/apps/") {
                    return app_page::page(&self.gateway, name, csrf).await;
                }
                if let Some(name) = path.strip_prefix("/live/apps/") {
                    if self.gateway.app(name).is_none() {
                        return error(StatusCode::NOT_FOUND, &format!("no running app `{name}`"));
                    }
                    return live::stream(&self.timeline, live::Subject::App(name.to_owned()));
                }
                error(StatusCode::NOT_FOUND, "no such page")
            }
        }
    }

    /// The caller of `request`: the bearer token when the request carries
    /// an `Authorization` header (a wrong one is refused, not tried as a
    /// session), else the session its cookie names.
    fn caller(&self, request: &Request<Incoming>, peer: IpAddr) -> Caller {
        let headers = request.headers();
        if let Some(value) = headers.get(hyper::header::AUTHORIZATION) {
            let given = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            return if constant_time_eq(given.trim().as_bytes(), self.token.as_bytes()) {
                Caller::Token
            } else {
                Caller::WrongToken
            };
        }
        session_id(request)
            .and_then(|id| self.sessions.check(id, peer))
            .map_or(Caller::Anonymous, Caller::Session)
    }

    /// `POST /login` with the form field `token`: starts a session and goes
    /// to `/`.
    async fn login(&self, request: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        let body = tokio::time::timeout(
            HEADER_READ_TIMEOUT,
            Limited::new(request.into_body(), MAX_LOGIN_BODY).collect(),
        )
        .await;
        let Ok(Ok(body)) = body else {
            return error(
                StatusCode::BAD_REQUEST,
                "the login form must be sent whole, at most 4 KiB, within 10 s",
            );
        };
        let body = body.to_bytes();
        let token = form_field(&body, "token").unwrap_or_default();
        if !constant_time_eq(token.trim().as_bytes(), self.token.as_bytes()) {
            return dashboard::login_page(
                StatusCode::UNAUTHORIZED,
                Some("That is not the admin token."),
            );
        }
        let (id, csrf) = match self.sessions.create(peer) {
            Ok(created) => created,
            Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err:#}")),
        };
        Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(hyper::header::LOCATION, "/")
            .header(
                hyper::header::SET_COOKIE,
                session_cookie(&id, session::LIFETIME.as_secs()),
            )
            .header(CSRF_HEADER, csrf)
            .body(full(""))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
    }

    /// `POST /logout` from this origin: ends the cookie's session.
    fn logout(&self, request: &Request<Incoming>, peer: IpAddr) -> Response<Body> {
        if let Err(why) = same_origin(request) {
            return error(StatusCode::FORBIDDEN, &why);
        }
        if let Some(id) = session_id(request)
            && self.sessions.check(id, peer).is_some()
        {
            self.sessions.revoke(id);
        }
        Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(hyper::header::LOCATION, "/")
            .header(hyper::header::SET_COOKIE, session_cookie("", 0))
            .body(full(""))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
    }
}

/// The session id of the dashboard's cookie, if the request has one.
fn session_id(request: &Request<Incoming>) -> Option<&str> {
    request
        .headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(session::COOKIE)
                .and_then(|rest| rest.strip_prefix('='))
        })
}

/// Whether a method only reads.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// Checks that a request comes from this listener's own origin: its
/// `Origin` is `http://<Host>` and its `Sec-Fetch-Site` (when the browser
/// sends one) `same-origin`. The error says what was wrong.
fn same_origin(request: &Request<Incoming>) -> Result<(), String> {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text(HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
    {
        return Err(format!(
            "refused: the request comes from another site (Sec-Fetch-Site: {site})"
        ));
    }
    let host = text(hyper::header::HOST).unwrap_or("");
    match text(hyper::header::ORIGIN) {
        Some(origin) if !host.is_empty() && origin == format!("http://{host}") => Ok(()),
        Some(origin) => Err(format!(
            "refused: the request comes from origin {origin}, not from this admin API \
             (http://{host})"
        )),
        None => Err(
            "refused: a request authenticated by the dashboard's cookie must say where it \
             comes from (Origin)"
                .to_owned(),
        ),
    }
}

/// [`same_origin`], and the session's CSRF token in [`CSRF_HEADER`].
fn same_origin_with_csrf(request: &Request<Incoming>, csrf: &str) -> Result<(), String> {
    let given = request
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), csrf.as_bytes()) {
        return Err(format!(
            "refused: a change authenticated by the dashboard's cookie needs the session's \
             `{CSRF_HEADER}` header (scripts and the CLI send `Authorization: Bearer <token>` \
             instead)"
        ));
    }
    same_origin(request)
}

/// The value of form field `name` in an `application/x-www-form-urlencoded`
/// body, decoded.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes.get(i + 1..i + 3) {
                Some(&[hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                    let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                    out.push(digit(hi) << 4 | digit(lo));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Headers every admin response carries: no caching (unless the response
/// chose its own, as the versioned static files do), no framing by other
/// pages (clickjacking), no referrer, no sniffing; the dashboard runs only
/// its own scripts from this listener (no inline script, nothing from
/// elsewhere) and connects only to it (the live streams).
fn harden(headers: &mut hyper::HeaderMap) {
    if !headers.contains_key(hyper::header::CACHE_CONTROL) {
        headers.insert(
            hyper::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
    }
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; connect-src 'self'; \
             style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
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

/// The `Set-Cookie` value carrying session `value` for `max_age_secs`
/// (0 with an empty value ends it): HttpOnly so page scripts cannot read
/// it, SameSite=Strict so other sites' pages cannot send it.
fn session_cookie(value: &str, max_age_secs: u64) -> String {
    format!(
        "{}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}",
        session::COOKIE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(
            form_field(b"a=1&token=ab%20cd+e%0A", "token").as_deref(),
            Some("ab cd e\n")
        );
        assert_eq!(
            form_field(b"token=%zz%4", "token").as_deref(),
            Some("%zz%4")
        );
        assert_eq!(form_field(b"other=1", "token"), None);
    }
}
