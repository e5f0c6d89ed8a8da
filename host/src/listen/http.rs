//! The plain-HTTP port (80): answers ACME HTTP-01 challenges and sends
//! every other request to `https://` (308 Permanent Redirect, as Caddy
//! does), for names that select an app. One request per connection, read
//! with a deadline and a size cap; one client holds only a share of the
//! connections, and must send its first byte at once
//! ([`super::accept`]); nothing else is served here.
//! Its settings are [`crate::config::HttpSettings`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::accept::{ClientSlots, FIRST_BYTE_TIMEOUT, accept_loop, first_byte};
use crate::apps::route::Router;
use crate::base::names::DnsName;
use crate::certs::Certificates;

/// The longest request head accepted; real requests to this port are a few
/// hundred bytes. Bounds memory per connection.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client must send its request head within this time (slowloris).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; beyond it new ones are closed at once.
/// Bounds what a flood of idle connections can hold.
const MAX_CONNECTIONS: usize = 4096;
/// Connections one client (an IPv4 address, an IPv6 /64) may have open at
/// once. Threat: one client holding every connection slot, which blocks
/// ACME HTTP-01 validation for every app.
const CONNECTIONS_PER_CLIENT: usize = 64;
/// Headers parsed per request.
const MAX_HEADERS: usize = 64;
/// The path prefix of HTTP-01 challenges (RFC 8555, section 8.3).
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the plain-HTTP listener needs.
pub(crate) struct HttpContext {
    router: Arc<Router>,
    certs: Arc<Certificates>,
    /// The TLS port redirects point to (omitted from URLs when 443).
    https_port: u16,
    /// Whether the bare base domain lists the apps.
    list_apps: bool,
    connections: Arc<ClientSlots>,
}

impl HttpContext {
    /// The context for a listener redirecting to TLS port `https_port`.
    pub(crate) fn new(
        router: Arc<Router>,
        certs: Arc<Certificates>,
        https_port: u16,
        list_apps: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            router,
            certs,
            https_port,
            list_apps,
            connections: ClientSlots::new(MAX_CONNECTIONS, CONNECTIONS_PER_CLIENT),
        })
    }
}

/// Serves the plain-HTTP port forever.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<HttpContext>) {
    accept_loop(&listener, "http", |stream, peer| {
        let slot = match ctx.connections.take(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!("http: {peer}: no connection slot ({why:?}); closed");
                return;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let served = async {
                first_byte(&stream, FIRST_BYTE_TIMEOUT).await?;
                handle(&ctx, stream).await
            };
            if let Err(err) = served.await {
                tracing::debug!("http: {peer}: {err}");
            }
            drop(slot);
        });
    })
    .await
}

/// What the answers on this port read of the gateway: the listener's
/// context over the router and certificates, or a table (fuzzing).
pub(crate) trait Site {
    /// Whether the bare base domain lists the apps.
    fn list_apps(&self) -> bool;
    /// The TLS port redirects point to (omitted from URLs when 443).
    fn https_port(&self) -> u16;
    /// The base domains.
    fn domains(&self) -> Vec<String>;
    /// The names of the apps served, sorted.
    fn app_names(&self) -> Vec<String>;
    /// Whether `host` (a normalised name) selects a running app.
    fn serves(&self, host: &str) -> bool;
    /// The key authorization of the HTTP-01 challenge `token`, if one is
    /// under way.
    fn key_authorization(&self, token: &str) -> Option<String>;
}

impl Site for HttpContext {
    fn list_apps(&self) -> bool {
        self.list_apps
    }

    fn https_port(&self) -> u16 {
        self.https_port
    }

    fn domains(&self) -> Vec<String> {
        self.router.domains()
    }

    fn app_names(&self) -> Vec<String> {
        self.router.names()
    }

    fn serves(&self, host: &str) -> bool {
        self.router.app_for_server_name(host).is_some()
    }

    fn key_authorization(&self, token: &str) -> Option<String> {
        self.certs.http01_key_authorization(token)
    }
}

/// A response: status, extra headers, body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    status: u16,
    location: Option<String>,
    body: String,
    html: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            location: None,
            body: body.into(),
            html: false,
        }
    }

    /// The response as sent: status line, headers and (unless the request
    /// was `HEAD`) the body.
    pub(crate) fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            308 => "Permanent Redirect",
            400 => "Bad Request",
            404 => "Not Found",
            431 => "Request Header Fields Too Large",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            self.status,
            if self.html { "text/html" } else { "text/plain" },
            self.body.len()
        );
        if let Some(location) = &self.location {
            out.push_str(&format!("Location: {location}\r\n"));
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

async fn handle(ctx: &HttpContext, mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST_HEAD];
    let mut filled = 0;
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            if filled == buf.len() {
                return Ok::<_, std::io::Error>(Some(Response::text(
                    431,
                    "request head too large\n",
                )));
            }
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Ok(None);
            }
            filled += n;
            if let Some(response) = respond(ctx, &buf[..filled]) {
                return Ok(Some(response));
            }
        }
    })
    .await;
    let (response, head_only) = match read {
        Ok(Ok(Some(response))) => {
            let head_only = buf[..filled].starts_with(b"HEAD ");
            (response, head_only)
        }
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(err)) => return Err(err),
        Err(_) => return Err(std::io::Error::other("no request within the deadline")),
    };
    stream.write_all(&response.to_bytes(head_only)).await?;
    stream.shutdown().await
}

/// The response to a request head, or `None` if it is incomplete.
pub(crate) fn respond(ctx: &impl Site, head: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => return None,
        Ok(httparse::Status::Complete(_)) => {}
        Err(_) => return Some(Response::text(400, "bad request\n")),
    }
    let path = request.path.unwrap_or("/");
    let host = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::to_owned);
    // The bare base domain gets the public info page: which apps are
    // served here, and where.
    if ctx.list_apps()
        && let Some(domain) = host.as_deref().and_then(host_name)
        && ctx.domains().contains(&domain)
        && (path == "/" || path.starts_with("/?"))
    {
        return Some(Response {
            status: 200,
            location: None,
            body: info_page(&domain, &ctx.app_names(), ctx.https_port()),
            html: true,
        });
    }
    Some(route(
        path,
        host.as_deref(),
        |token| ctx.key_authorization(token),
        |host| ctx.serves(host),
        ctx.https_port(),
    ))
}

/// The public page of base domain `domain`: the apps served under it, with
/// their HTTPS addresses. Names and addresses only — logs, events and
/// settings stay on the authenticated admin dashboard.
fn info_page(domain: &str, apps: &[String], https_port: u16) -> String {
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let mut items = String::new();
    for app in apps {
        items.push_str(&format!(
            "<li><a href=\"https://{app}.{domain}{port}/\">{app}.{domain}</a></li>"
        ));
    }
    if items.is_empty() {
        items.push_str("<li>none yet</li>");
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{domain}</title></head>\
         <body style=\"font-family:system-ui,sans-serif;margin:2rem\"><h1>{domain}</h1>\
         <p>Apps served here by sockgate (TCP, TLS and QUIC on port {https_port}):</p>\
         <ul>{items}</ul></body></html>"
    )
}

/// Decides the response to a request for `path` at `host`.
fn route(
    path: &str,
    host: Option<&str>,
    key_authorization: impl Fn(&str) -> Option<String>,
    serves: impl Fn(&str) -> bool,
    https_port: u16,
) -> Response {
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        return match key_authorization(token) {
            Some(answer) => {
                tracing::info!(
                    "http: answered an http-01 challenge for {}",
                    host.unwrap_or("(no Host)")
                );
                Response::text(200, answer)
            }
            None => Response::text(404, "no such ACME challenge\n"),
        };
    }
    // Absolute-form targets (`http://host/path`) carry the path after the
    // authority.
    let path = match path.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    };
    if !path.starts_with('/') {
        return Response::text(400, "bad request target\n");
    }
    let Some(host) = host.and_then(host_name) else {
        return Response::text(400, "missing or invalid Host header\n");
    };
    if !serves(&host) {
        return Response::text(404, format!("no app is served at {host}\n"));
    }
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let location = format!("https://{host}{port}{path}");
    Response {
        status: 308,
        body: format!("moved to {location}\n"),
        location: Some(location),
        html: false,
    }
}

/// The DNS name of a Host header value (its port dropped), if it is one:
/// parsed as every name is ([`DnsName`]).
fn host_name(value: &str) -> Option<String> {
    let name = match value.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => value,
    };
    DnsName::parse(name).ok().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(path: &str, host: Option<&str>, port: u16) -> Response {
        route(
            path,
            host,
            |token| (token == "tok").then(|| "tok.thumbprint".to_owned()),
            |host| host == "echo.example.org",
            port,
        )
    }

    #[test]
    fn challenges_are_answered_for_known_tokens_only() {
        let ok = answer("/.well-known/acme-challenge/tok", Some("whatever"), 443);
        assert_eq!(ok, Response::text(200, "tok.thumbprint"));
        let unknown = answer(
            "/.well-known/acme-challenge/other",
            Some("echo.example.org"),
            443,
        );
        assert_eq!(unknown.status, 404);
    }

    #[test]
    fn requests_for_apps_are_redirected_to_https() {
        let r = answer("/a/b?c=d", Some("Echo.Example.org:80"), 443);
        assert_eq!(r.status, 308);
        assert_eq!(
            r.location.as_deref(),
            Some("https://echo.example.org/a/b?c=d")
        );
        let r = answer("/", Some("echo.example.org"), 8443);
        assert_eq!(
            r.location.as_deref(),
            Some("https://echo.example.org:8443/")
        );
        let r = answer("http://echo.example.org/x", Some("echo.example.org"), 443);
        assert_eq!(r.location.as_deref(), Some("https://echo.example.org/x"));
    }

    #[test]
    fn other_hosts_and_bad_requests_are_refused() {
        assert_eq!(answer("/", Some("other.example.org"), 443).status, 404);
        assert_eq!(answer("/", None, 443).status, 400);
        assert_eq!(answer("/", Some("evil.org/\r\nX: y"), 443).status, 400);
        assert_eq!(answer("*", Some("echo.example.org"), 443).status, 400);
    }

    #[test]
    fn responses_are_complete_http() {
        let r = answer("/", Some("echo.example.org"), 443);
        let text = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nLocation: https://echo.example.org/\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn the_bare_domain_lists_its_apps() {
        let page = info_page("example.org", &["chat".into(), "echo".into()], 8443);
        assert!(page.contains("<h1>example.org</h1>"));
        assert!(page.contains("href=\"https://chat.example.org:8443/\""));
        assert!(page.contains("echo.example.org"));
        assert!(info_page("example.org", &[], 443).contains("none yet"));
    }
}
