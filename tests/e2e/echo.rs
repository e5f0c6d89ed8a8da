//! The echo guest: exact bytes back at every size, many connections at
//! once, and half-close in both directions. The same tests run against the
//! echo guest of every language, and of both worlds: `rust_sync`,
//! `starlingmonkey` and `go_sync` are `conn-handler-sync` guests, served one
//! instance per connection; `rust_events`, `c_events`, `python_events` and
//! `js_events` are `conn-events` guests, called with batches of socket
//! events, and `rust_events_v2` one of the event world's 0.2.0 (a batch's
//! bytes in one buffer).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::languages::{Lang, language_tests};
use crate::support::{Gateway, TestApp};

const TIMEOUT: Duration = Duration::from_secs(60);

language_tests! {
    languages: [
        rust: Rust,
        python: Python,
        js: Js,
        c: C,
        rust_sync: RustSync,
        starlingmonkey: StarlingMonkey,
        zig: Zig,
        go: Go,
        go_sync: GoSync,
        ts: Ts,
        rust_events: RustEvents,
        rust_events_v2: RustEventsV2,
        c_events: CEvents,
        python_events: PythonEvents,
        js_events: JsEvents,
    ],
    tests: [
        echoes_exact_bytes_at_every_size,
        serves_200_concurrent_connections_each_with_its_own_data,
        client_half_close_ends_the_guests_stream_and_the_reply_completes,
    ],
}

fn echo_gateway(lang: Lang) -> Gateway {
    Gateway::start(&[TestApp {
        name: "echo",
        guest: &lang.guest("echo"),
        extra: "",
    }])
}

/// Deterministic bytes that differ per connection, so a mixed-up stream
/// cannot pass.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data`, closes the sending side, and returns everything received
/// until the gateway closes its side. Writing and reading run
/// concurrently, so payloads larger than the socket buffers cannot
/// deadlock.
pub(crate) async fn round_trip(addr: std::net::SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut received = Vec::new();
    rd.read_to_end(&mut received).await.unwrap();
    writer.await.unwrap();
    received
}

async fn echoes_exact_bytes_at_every_size(lang: Lang) {
    let gateway = echo_gateway(lang);
    for (seed, len) in [(1, 1), (2, 64 * 1024), (3, 16 * 1024 * 1024)] {
        let data = pattern(seed, len);
        let received =
            tokio::time::timeout(TIMEOUT, round_trip(gateway.addr("echo"), data.clone()))
                .await
                .expect("echo timed out");
        assert_eq!(received.len(), data.len(), "length for {len} bytes");
        assert!(received == data, "content differs for {len} bytes");
    }
}

async fn serves_200_concurrent_connections_each_with_its_own_data(lang: Lang) {
    let gateway = echo_gateway(lang);
    let addr = gateway.addr("echo");
    let clients: Vec<_> = (0..200u64)
        .map(|i| {
            tokio::spawn(async move {
                // Connect all first, then talk: all 200 are open at once.
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let data = pattern(100 + i, 4096 + i as usize);
                for chunk in data.chunks(1000) {
                    stream.write_all(chunk).await.unwrap();
                    let mut back = vec![0; chunk.len()];
                    stream.read_exact(&mut back).await.unwrap();
                    assert_eq!(back, chunk, "connection {i} got another's bytes");
                }
                stream
            })
        })
        .collect();
    let mut streams = Vec::new();
    for client in clients {
        streams.push(
            tokio::time::timeout(TIMEOUT, client)
                .await
                .expect("client timed out")
                .unwrap(),
        );
    }
    assert_eq!(streams.len(), 200);
}

async fn client_half_close_ends_the_guests_stream_and_the_reply_completes(lang: Lang) {
    let gateway = echo_gateway(lang);
    let mut stream = TcpStream::connect(gateway.addr("echo")).await.unwrap();
    stream.write_all(b"last words").await.unwrap();
    // Shut down our sending side only: the guest must see end of stream,
    // finish echoing, and close its side, while we can still read.
    stream.shutdown().await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut received))
        .await
        .expect("gateway did not close after the client's half-close")
        .unwrap();
    assert_eq!(received, b"last words");
}

#[tokio::test]
async fn guest_half_close_reaches_the_client_which_can_still_send() {
    let gateway = Gateway::start(&[TestApp {
        name: "hostile",
        guest: "hostile",
        extra: "instances = 1",
    }]);
    let mut stream = TcpStream::connect(gateway.addr("hostile")).await.unwrap();
    stream.write_all(b"close-write\n").await.unwrap();
    // The guest echoes the command, then closes its sending side: we see
    // end of stream...
    let mut received = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut received))
        .await
        .expect("guest's half-close did not reach the client")
        .unwrap();
    assert_eq!(received, b"close-write\n");
    // ...while our side stays open and the guest still reads it.
    stream.write_all(b"still here\n").await.unwrap();
    assert!(
        gateway.stderr.wait_for(TIMEOUT, |t| t
            .contains("received after close-write: still here")),
        "the guest did not receive data sent after its half-close:\n{}",
        gateway.stderr.text()
    );
}
