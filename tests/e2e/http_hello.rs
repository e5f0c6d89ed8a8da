//! The http-hello guest, driven by a real HTTP client library (hyper) over
//! keep-alive connections.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::support::{Gateway, TestApp};

const CONNECTIONS: usize = 10;
const REQUESTS_PER_CONNECTION: usize = 100;

#[tokio::test]
async fn a_thousand_keep_alive_requests_over_ten_connections() {
    a_thousand_keep_alive_requests("http-hello").await
}

/// The same HTTP/1.1 guest in the event world (`conn-events`).
#[tokio::test]
async fn a_thousand_keep_alive_requests_to_the_event_world_guest() {
    a_thousand_keep_alive_requests("events-http-hello").await
}

/// The same again, the event-world guest written in C.
#[tokio::test]
async fn a_thousand_keep_alive_requests_to_the_c_event_world_guest() {
    a_thousand_keep_alive_requests("c/events-http-hello").await
}

async fn a_thousand_keep_alive_requests(guest: &str) {
    let gateway = Gateway::start(&[TestApp {
        name: "http-hello",
        guest,
        extra: "",
    }]);
    let addr = gateway.addr("http-hello");
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                let driver = tokio::spawn(connection);
                let mut ok = 0;
                for i in 0..REQUESTS_PER_CONNECTION {
                    let request = Request::get(format!("/page/{i}"))
                        .header("host", "http-hello.test")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    // Every request goes over this one connection: hyper
                    // would fail the request if the guest closed it.
                    let response = sender.send_request(request).await.unwrap();
                    assert_eq!(response.status(), 200);
                    assert_eq!(response.headers()["connection"], "keep-alive");
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    assert!(
                        std::str::from_utf8(&body)
                            .unwrap()
                            .contains("<h1>Hello from sockgate</h1>"),
                        "unexpected body {body:?}"
                    );
                    ok += 1;
                }
                drop(sender);
                driver.await.unwrap().unwrap();
                ok
            })
        })
        .collect();
    let mut total = 0;
    for client in clients {
        total += tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("HTTP client timed out")
            .unwrap();
    }
    assert_eq!(total, CONNECTIONS * REQUESTS_PER_CONNECTION);
}
