//! The protocol side end to end without sockets: a real hyper client and
//! the gateway's hyper server over an in-memory pipe, an origin written in
//! Rust behind it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{ALT_SVC, CONTENT_LENGTH, HOST};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::body::BodyTooLarge;
use super::request::CLIENT_ADDR_HEADER;
use super::server::{self, Mode};
use super::{
    Body, BoxError, ConnMeta, Exchange, Front, HttpLimits, Origin, Protocol, Refusal, Served,
    answer,
};
use crate::base::locks::lock;

/// Serves `api.example.org` and its custom domain: echoes what it saw as
/// text, `/slow` sleeps a second, `/read` reads the whole body first.
#[derive(Default)]
struct Echo {
    exchanges: Mutex<Vec<Exchange>>,
}

impl Origin for Echo {
    fn serves_host(&self, host: &str) -> bool {
        matches!(host, "api.example.org" | "api.acme.test")
    }

    fn serve(&self, request: http::Request<Body>) -> BoxFuture<'static, Result<Served, Refusal>> {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            match parts.uri.path() {
                "/slow" => tokio::time::sleep(Duration::from_secs(1)).await,
                "/busy" => return Err(Refusal::Busy("every instance is full".into())),
                "/trap" => return Err(Refusal::Failed("wasm trap: unreachable".into())),
                _ => {}
            }
            let read = match body.collect().await {
                Ok(collected) => format!("{} bytes", collected.to_bytes().len()),
                Err(err) => match err.downcast_ref::<BodyTooLarge>() {
                    Some(too_large) => format!("cut at {}", too_large.limit),
                    None => format!("body error: {err}"),
                },
            };
            let text = format!(
                "{} {} client={} body={read}",
                parts.method,
                parts.uri,
                parts
                    .headers
                    .get(CLIENT_ADDR_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
            );
            Ok(answer::text(http::StatusCode::OK, &text))
        })
    }

    fn record(&self, exchange: &Exchange) {
        lock(&self.exchanges).push(exchange.clone());
    }
}

fn limits() -> HttpLimits {
    HttpLimits {
        max_body_kb: 1,
        request_timeout_ms: 200,
        ..HttpLimits::default()
    }
}

/// A connection to `origin` as the TLS listener would make it for
/// `api.example.org` (or, `server_name` `None`, the app's cleartext port).
fn connect(origin: Arc<Echo>, mode: Mode, server_name: Option<&str>) -> tokio::io::DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let conn = ConnMeta {
        peer: "203.0.113.7:51234".parse().unwrap(),
        local: "192.0.2.1:443".parse().unwrap(),
        server_name: server_name.map(str::to_owned),
        protocol: if mode == Mode::Http2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        },
    };
    let front = Front::new(origin, limits(), conn, Some(answer::alt_svc(443)));
    tokio::spawn(server::serve(server, mode, front, std::future::pending()));
    client
}

async fn h1_client(io: tokio::io::DuplexStream) -> hyper::client::conn::http1::SendRequest<Body> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn h2_client(io: tokio::io::DuplexStream) -> hyper::client::conn::http2::SendRequest<Body> {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

fn body(bytes: &'static [u8]) -> Body {
    answer::full(Bytes::from_static(bytes))
}

async fn text(response: http::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The exchanges recorded so far, once `n` are there (a record is made
/// when the response body ends, which the client may see first).
async fn recorded(origin: &Echo, n: usize) -> Vec<Exchange> {
    for _ in 0..200 {
        let exchanges = lock(&origin.exchanges).clone();
        if exchanges.len() >= n {
            return exchanges;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} exchanges were never recorded");
}

#[tokio::test]
async fn an_http1_request_arrives_normalised_and_its_answer_advertises_h3() {
    let origin = Arc::new(Echo::default());
    let mut client = h1_client(connect(
        origin.clone(),
        Mode::Http1,
        Some("api.example.org"),
    ))
    .await;
    let request = http::Request::get("/x?y=1")
        .header(HOST, "api.example.org")
        .header(CLIENT_ADDR_HEADER, "10.0.0.1:1")
        .body(body(b"hello"))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.headers()[ALT_SVC], "h3=\":443\"; ma=86400");
    assert_eq!(
        text(response).await,
        (
            200,
            "GET https://api.example.org/x?y=1 client=203.0.113.7:51234 body=5 bytes\n".into()
        )
    );
    let exchange = &recorded(&origin, 1).await[0];
    assert_eq!(
        (exchange.status, exchange.protocol, exchange.path.as_str()),
        (200, Protocol::Http1, "/x?y=1")
    );
    assert!(
        exchange.bytes > 0 && exchange.note.is_none(),
        "{exchange:?}"
    );
}

#[tokio::test]
async fn http2_gets_421_for_another_apps_authority_and_serves_its_own() {
    let origin = Arc::new(Echo::default());
    let mut client = h2_client(connect(
        origin.clone(),
        Mode::Http2,
        Some("api.example.org"),
    ))
    .await;
    let foreign = http::Request::get("https://other.example.org/")
        .body(body(b""))
        .unwrap();
    let (status, _) = text(client.send_request(foreign).await.unwrap()).await;
    assert_eq!(status, 421);
    // The same connection goes on serving the app's own names.
    let custom = http::Request::get("https://api.acme.test/z")
        .body(body(b""))
        .unwrap();
    let (status, seen) = text(client.send_request(custom).await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(seen.starts_with("GET https://api.acme.test/z "), "{seen}");
    let exchanges = recorded(&origin, 2).await;
    assert_eq!(exchanges[0].protocol, Protocol::Http2);
    assert!(
        exchanges[0]
            .note
            .as_deref()
            .unwrap()
            .contains("misdirected"),
        "{:?}",
        exchanges[0]
    );
}

#[tokio::test]
async fn the_gateway_answers_for_slow_busy_and_failed_origins() {
    let origin = Arc::new(Echo::default());
    let mut client = h2_client(connect(
        origin.clone(),
        Mode::Http2,
        Some("api.example.org"),
    ))
    .await;
    for (path, status, note) in [
        ("/slow", 504, "limits.http_request_timeout_ms"),
        ("/busy", 503, "every instance is full"),
        ("/trap", 500, "unreachable"),
    ] {
        let request = http::Request::get(format!("https://api.example.org{path}"))
            .body(body(b""))
            .unwrap();
        let (got, seen) = text(client.send_request(request).await.unwrap()).await;
        assert_eq!(got, status, "{path}: {seen}");
        assert!(
            !seen.contains(note),
            "{path}: the client must not see {note:?}"
        );
    }
    let exchanges = recorded(&origin, 3).await;
    for (exchange, note) in exchanges.iter().zip([
        "limits.http_request_timeout_ms",
        "every instance is full",
        "unreachable",
    ]) {
        assert!(
            exchange.note.as_deref().unwrap_or("").contains(note),
            "{exchange:?}"
        );
    }
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused_or_cut() {
    let origin = Arc::new(Echo::default());
    let mut client = h1_client(connect(
        origin.clone(),
        Mode::Http1,
        Some("api.example.org"),
    ))
    .await;
    let declared = http::Request::post("/up")
        .header(HOST, "api.example.org")
        .header(CONTENT_LENGTH, "2048")
        .body(answer::full(Bytes::from(vec![b'x'; 2048])))
        .unwrap();
    assert_eq!(
        text(client.send_request(declared).await.unwrap()).await.0,
        413
    );

    // A streamed body of unknown length is cut at the cap.
    let mut client = h1_client(connect(
        origin.clone(),
        Mode::Http1,
        Some("api.example.org"),
    ))
    .await;
    let chunks = futures::stream::iter(
        (0..4).map(|_| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(vec![b'y'; 512])))),
    );
    let streamed = http::Request::post("/up")
        .header(HOST, "api.example.org")
        .body(StreamBody::new(chunks).boxed_unsync())
        .unwrap();
    let (status, seen) = text(client.send_request(streamed).await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(seen.contains("body=cut at 1024"), "{seen}");
}

#[tokio::test]
async fn a_cleartext_port_serves_http1_and_h2c_with_plain_uris() {
    let origin = Arc::new(Echo::default());
    let mut h1 = h1_client(connect(origin.clone(), Mode::Sniff, None)).await;
    let request = http::Request::get("/a")
        .header(HOST, "localhost:8080")
        .body(body(b""))
        .unwrap();
    let (status, seen) = text(h1.send_request(request).await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(seen.starts_with("GET http://localhost:8080/a "), "{seen}");

    let mut h2 = h2_client(connect(origin.clone(), Mode::Sniff, None)).await;
    let request = http::Request::get("http://anything.test/b")
        .body(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap();
    let (status, seen) = text(h2.send_request(request).await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(seen.starts_with("GET http://anything.test/b "), "{seen}");
    assert_eq!(recorded(&origin, 2).await[1].protocol, Protocol::Http2);
}
