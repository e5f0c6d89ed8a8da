//! QUIC: apps served over quinn with the TLS listener's certificates, each
//! bidirectional stream a guest connection. Clients: quinn (here) and
//! aioquic (an independent implementation, from a Python script).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, Endpoint, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::support::{ScratchDir, TestApp};
use crate::tls_support::{TlsGateway, WAIT, client_config, connect, dev_ca_root};

/// The ALPN protocol of apps that declare none.
pub const DEFAULT_ALPN: &str = "sockgate";
/// Stream error code of a stream the gateway refused (a limit).
const STREAM_REFUSED: u32 = 0x5301;

/// A dev-CA gateway on loopback with QUIC, serving `apps`.
fn quic_gateway(state: &ScratchDir, quic_table: &str, apps: &[TestApp<'_>]) -> TlsGateway {
    let gw = TlsGateway::start(
        &state.0,
        &format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"localhost\"\ncertificates = \"dev-ca\"\n\n\
             [http]\nenabled = false\n\n[quic]\nlisten = \"127.0.0.1:0\"\n{quic_table}\n"
        ),
        apps,
    );
    assert!(gw.quic.is_some(), "no QUIC endpoint printed");
    gw
}

/// A quinn client endpoint trusting `roots` and offering `alpn`.
pub fn quic_client(roots: &[CertificateDer<'static>], alpn: &[&str]) -> Endpoint {
    let tls = Arc::unwrap_or_clone(client_config(roots, alpn));
    let crypto = QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// Connects to `addr` asking for `sni`.
pub async fn connect_quic(
    endpoint: &Endpoint,
    addr: SocketAddr,
    sni: &str,
) -> Result<quinn::Connection, ConnectionError> {
    let connecting = endpoint.connect(addr, sni).unwrap();
    tokio::time::timeout(WAIT, connecting)
        .await
        .expect("QUIC handshake timed out")
}

/// Sends `data` on a new stream, finishes it, and returns what came back
/// before the server's FIN.
pub async fn echo_stream(conn: &quinn::Connection, data: Vec<u8>) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let writer = tokio::spawn(async move {
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
    });
    let back = tokio::time::timeout(WAIT, recv.read_to_end(usize::MAX))
        .await
        .expect("echo over QUIC timed out")
        .unwrap();
    writer.await.unwrap();
    back
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

fn echo_app() -> TestApp<'static> {
    TestApp {
        name: "echo",
        guest: "echo",
        extra: "",
    }
}

#[tokio::test]
async fn echo_over_quic_16_mib_on_one_stream() {
    let state = ScratchDir::new("quic-state");
    let gw = quic_gateway(&state, "", &[echo_app()]);
    let client = quic_client(&[dev_ca_root(&state.0)], &[DEFAULT_ALPN]);
    let conn = connect_quic(&client, gw.quic.unwrap(), "echo.localhost")
        .await
        .unwrap();
    let data = pattern(7, 16 << 20);
    let back = echo_stream(&conn, data.clone()).await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "16 MiB echoed over QUIC differ");
}

#[tokio::test]
async fn echo_over_quic_100_concurrent_streams_on_20_connections() {
    let state = ScratchDir::new("quic-state");
    let gw = quic_gateway(&state, "", &[echo_app()]);
    let client = quic_client(&[dev_ca_root(&state.0)], &[DEFAULT_ALPN]);
    let addr = gw.quic.unwrap();
    let mut connections = Vec::new();
    for c in 0..20u32 {
        let conn = connect_quic(&client, addr, "echo.localhost").await.unwrap();
        // Connection 0 carries 100 concurrent streams; the others 5 each.
        let streams = if c == 0 { 100 } else { 5 };
        connections.push(tokio::spawn(async move {
            let tasks: Vec<_> = (0..streams)
                .map(|s| {
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        let data = pattern(c * 1000 + s, 20_000 + s as usize * 97);
                        let back = echo_stream(&conn, data.clone()).await;
                        assert!(back == data, "stream {s} of connection {c} differs");
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            conn
        }));
    }
    for task in connections {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn the_guest_sees_each_stream_with_its_quic_connection() {
    let state = ScratchDir::new("quic-state");
    let gw = quic_gateway(
        &state,
        "",
        &[TestApp {
            name: "hostile",
            guest: "hostile",
            extra: "alpn = [\"x-test\"]",
        }],
    );
    let client = quic_client(&[dev_ca_root(&state.0)], &["x-test"]);
    let conn = connect_quic(&client, gw.quic.unwrap(), "hostile.localhost")
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let back = echo_stream(&conn, b"info\n".to_vec()).await;
        seen.push(String::from_utf8(back).unwrap());
    }
    let quic_of = |line: &str| -> (u64, u64) {
        let (_, ids) = line
            .trim_end()
            .split_once(" quic=")
            .unwrap_or_else(|| panic!("no quic info in {line:?}"));
        let (c, s) = ids.split_once('/').unwrap();
        (c.parse().unwrap(), s.parse().unwrap())
    };
    for line in &seen {
        assert!(
            line.starts_with(
                "info transport=Transport::Quic server-name=hostile.localhost alpn=x-test quic="
            ),
            "{line:?}"
        );
    }
    let (first, second) = (quic_of(&seen[0]), quic_of(&seen[1]));
    assert_eq!(first.0, second.0, "streams of one connection share its id");
    // Client-initiated bidirectional streams: ids 0, 4, 8, ...
    assert_eq!((first.1, second.1), (0, 4));
    // Another connection has another id.
    let other = connect_quic(&client, gw.quic.unwrap(), "hostile.localhost")
        .await
        .unwrap();
    let line = String::from_utf8(echo_stream(&other, b"info\n".to_vec()).await).unwrap();
    assert_ne!(quic_of(&line).0, first.0);
}

#[tokio::test]
async fn chat_across_tcp_tls_and_quic_is_one_room_and_shows_a_reset() {
    chat_across_tcp_tls_and_quic("chat").await
}

/// The same chat in the event world (`conn-events`).
#[tokio::test]
async fn event_world_chat_across_tcp_tls_and_quic_is_one_room_and_shows_a_reset() {
    chat_across_tcp_tls_and_quic("events-chat").await
}

async fn chat_across_tcp_tls_and_quic(guest: &str) {
    let state = ScratchDir::new("quic-state");
    let gw = quic_gateway(
        &state,
        "",
        &[TestApp {
            name: "chat",
            guest,
            extra: "instances = 1",
        }],
    );
    let root = dev_ca_root(&state.0);
    // Joins in turn, reading each welcome so that all three are in the
    // room before anyone speaks.
    let tcp = tokio::net::TcpStream::connect(gw.gateway.addr("chat"))
        .await
        .unwrap();
    let (tcp_rd, mut tcp_wr) = tcp.into_split();
    let mut tcp_rd = BufReader::new(tcp_rd).lines();
    let welcome = next_line(&mut tcp_rd).await;
    assert!(welcome.starts_with("* welcome"), "{welcome}");

    let tls = connect(
        gw.tls,
        "chat.localhost",
        client_config(std::slice::from_ref(&root), &[]),
    )
    .await
    .unwrap();
    let (tls_rd, mut tls_wr) = tokio::io::split(tls);
    let mut tls_rd = BufReader::new(tls_rd).lines();
    assert!(next_line(&mut tls_rd).await.contains("2 in the room"));

    let client = quic_client(&[root], &[DEFAULT_ALPN]);
    let conn = connect_quic(&client, gw.quic.unwrap(), "chat.localhost")
        .await
        .unwrap();
    let (mut quic_wr, quic_rd) = conn.open_bi().await.unwrap();
    // The stream reaches the gateway (and the guest) with its first bytes.
    quic_wr.write_all(b"hello from quic\n").await.unwrap();
    let mut quic_rd = BufReader::new(quic_rd).lines();
    assert!(next_line(&mut quic_rd).await.contains("3 in the room"));
    for line in [next_line(&mut tcp_rd).await, next_line(&mut tls_rd).await] {
        assert!(line.ends_with(": hello from quic"), "{line}");
    }

    tcp_wr.write_all(b"hello from tcp\n").await.unwrap();
    for line in [next_line(&mut tls_rd).await, next_line(&mut quic_rd).await] {
        assert!(line.ends_with(": hello from tcp"), "{line}");
    }
    tls_wr.write_all(b"hello from tls\n").await.unwrap();
    for line in [next_line(&mut tcp_rd).await, next_line(&mut quic_rd).await] {
        assert!(line.ends_with(": hello from tls"), "{line}");
    }

    // The QUIC client resets its sending side: the guest learns why its
    // input ended (connection.receive-error) and tells the room.
    quic_wr.reset(VarInt::from_u32(7)).unwrap();
    for line in [next_line(&mut tcp_rd).await, next_line(&mut tls_rd).await] {
        assert!(line.ends_with("left: stream reset, code 7"), "{line}");
    }
}

async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("no line in time")
        .unwrap()
        .expect("connection closed")
}

/// The TLS alert a refused QUIC handshake carried (CRYPTO_ERROR 0x100 +
/// alert), and the reason the server gave.
fn crypto_alert(err: &ConnectionError) -> Option<(u8, String)> {
    match err {
        ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            (0x100..0x200).contains(&code).then(|| {
                (
                    (code - 0x100) as u8,
                    String::from_utf8_lossy(&close.reason).into_owned(),
                )
            })
        }
        _ => None,
    }
}

#[tokio::test]
async fn unknown_names_and_foreign_protocols_are_refused_with_tls_alerts() {
    let state = ScratchDir::new("quic-state");
    let gw = quic_gateway(
        &state,
        "",
        &[
            echo_app(),
            TestApp {
                name: "hostile",
                guest: "hostile",
                extra: "alpn = [\"x-test\"]",
            },
        ],
    );
    let root = dev_ca_root(&state.0);
    let addr = gw.quic.unwrap();
    let client = quic_client(std::slice::from_ref(&root), &[DEFAULT_ALPN]);

    // Unknown name: unrecognized_name (112), no certificate shown.
    let err = connect_quic(&client, addr, "nope.localhost")
        .await
        .unwrap_err();
    let (alert, reason) = crypto_alert(&err).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(alert, 112, "{reason}");
    assert!(reason.contains("nope.localhost"), "{reason}");

    // An app that speaks `x-test`, asked with the default protocol only:
    // no_application_protocol (120), naming what the app speaks.
    let err = connect_quic(&client, addr, "hostile.localhost")
        .await
        .unwrap_err();
    let (alert, reason) = crypto_alert(&err).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(alert, 120, "{reason}");
    assert!(reason.contains("x-test"), "{reason}");

    // A protocol no app speaks.
    let stranger = quic_client(std::slice::from_ref(&root), &["h3"]);
    let err = connect_quic(&stranger, addr, "echo.localhost")
        .await
        .unwrap_err();
    assert_eq!(crypto_alert(&err).map(|(a, _)| a), Some(120), "{err}");

    // The gateway is unaffected: the right client is served.
    let conn = connect_quic(&client, addr, "echo.localhost").await.unwrap();
    assert_eq!(
        echo_stream(&conn, b"still here".to_vec()).await,
        b"still here"
    );
    // Datagrams are not offered. Unidirectional streams are allowed (HTTP/3
    // needs 3), but a raw app's connection that opens one is closed.
    assert_eq!(conn.max_datagram_size(), None, "datagrams were offered");
    let mut uni = tokio::time::timeout(WAIT, conn.open_uni())
        .await
        .expect("no unidirectional stream credit")
        .unwrap();
    let _ = uni.write_all(b"a stream no guest would see").await;
    let _ = uni.finish();
    let closed = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("the connection was not closed");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(0x5313),
                "{close:?}"
            )
        }
        other => panic!("closed otherwise: {other}"),
    }
}

#[tokio::test]
async fn streams_count_against_the_apps_connection_limits() {
    let state = ScratchDir::new("quic-state");
    let gw = quic_gateway(
        &state,
        "",
        &[TestApp {
            name: "echo",
            guest: "echo",
            extra: "[app.limits]\nmax_connections = 2",
        }],
    );
    let client = quic_client(&[dev_ca_root(&state.0)], &[DEFAULT_ALPN]);
    let conn = connect_quic(&client, gw.quic.unwrap(), "echo.localhost")
        .await
        .unwrap();
    // Two streams held open (each echoed once, not finished) ...
    let mut held = Vec::new();
    for i in 0..2u8 {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[i]).await.unwrap();
        let mut one = [0u8; 1];
        tokio::time::timeout(WAIT, recv.read_exact(&mut one))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(one, [i]);
        held.push((send, recv));
    }
    // ... so a third is refused: reset with the gateway's code.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"x").await.unwrap();
    let err = tokio::time::timeout(WAIT, recv.read_to_end(1024))
        .await
        .unwrap()
        .unwrap_err();
    match err {
        quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) => {
            assert_eq!(code, VarInt::from_u32(STREAM_REFUSED));
        }
        other => panic!("expected a reset, got {other}"),
    }
    // Closing one held stream makes room again.
    let (mut send, mut recv) = held.pop().unwrap();
    send.finish().unwrap();
    tokio::time::timeout(WAIT, recv.read_to_end(1024))
        .await
        .unwrap()
        .unwrap();
    drop((send, recv));
    // The slot is released once the guest has dropped both ends, which
    // follows the client's FIN and the echo's; a new stream then succeeds
    // (the gateway may still be releasing it: retry on a refusal only).
    let mut served = false;
    for _ in 0..50 {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"again").await.unwrap();
        send.finish().unwrap();
        match tokio::time::timeout(WAIT, recv.read_to_end(1024))
            .await
            .unwrap()
        {
            Ok(back) => {
                assert_eq!(back, b"again");
                served = true;
                break;
            }
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)))
                if code == VarInt::from_u32(STREAM_REFUSED) =>
            {
                tokio::task::yield_now().await;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(served, "no room after a stream closed");
}

/// Builds `count` valid QUIC Initial packets (each a new connection
/// attempt for `sni`) with quinn-proto, never to be continued: what a
/// spoofed flood looks like to the server.
fn initial_packets(
    count: usize,
    server: SocketAddr,
    root: CertificateDer<'static>,
) -> Vec<Vec<u8>> {
    let tls = Arc::unwrap_or_clone(client_config(&[root], &[DEFAULT_ALPN]));
    let crypto = Arc::new(QuicClientConfig::try_from(tls).unwrap());
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let now = std::time::Instant::now();
    (0..count)
        .map(|_| {
            let config = quinn_proto::ClientConfig::new(crypto.clone());
            let (_, mut conn) = endpoint
                .connect(now, config, server, "echo.localhost")
                .unwrap();
            let mut buf = Vec::new();
            let transmit = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
            buf.truncate(transmit.size);
            buf
        })
        .collect()
}

#[tokio::test]
async fn a_flood_of_initials_from_one_address_gets_retries_and_the_gateway_serves_on() {
    let state = ScratchDir::new("quic-state");
    let gw = quic_gateway(&state, "retry_above = 8", &[echo_app()]);
    let addr = gw.quic.unwrap();
    let root = dev_ca_root(&state.0);
    let packets = initial_packets(2000, addr, root.clone());
    let flood = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    flood.connect(addr).await.unwrap();
    // Sent in small batches, each answered before the next, so that the
    // loopback buffers do not simply drop the flood. The answers tell what
    // the server did: a Retry (long header, type 3: first byte 0b1111_xxxx)
    // costs it no state; an Initial (type 0: 0b1100_xxxx) back to a client
    // means it started a handshake for that client (connection id).
    let mut retries = 0usize;
    let mut handshakes = std::collections::HashSet::new();
    let mut buf = vec![0u8; 2048];
    for batch in packets.chunks(16) {
        for packet in batch {
            flood.send(packet).await.unwrap();
        }
        let mut answered = 0;
        while answered < batch.len() {
            let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), flood.recv(&mut buf)).await
            else {
                break; // lost on the way: the next batch goes on
            };
            answered += 1;
            match buf[..n] {
                [first, ..] if first & 0xf0 == 0xf0 => retries += 1,
                // Long header Initial: version (4), DCID length, DCID.
                [first, _, _, _, _, len, ref rest @ ..] if first & 0xf0 == 0xc0 => {
                    if let Some(dcid) = rest.get(..len as usize) {
                        handshakes.insert(dcid.to_vec());
                    }
                }
                _ => {}
            }
        }
    }
    assert!(
        retries >= 1500,
        "only {retries} of 2000 unvalidated Initials were answered with a Retry"
    );
    assert!(
        handshakes.len() <= 8,
        "the gateway started {} handshakes for unvalidated clients (retry_above = 8)",
        handshakes.len()
    );
    // During the flood's aftermath a real client still gets through (it
    // answers the Retry, which quinn does transparently).
    let client = quic_client(&[root], &[DEFAULT_ALPN]);
    let conn = connect_quic(&client, addr, "echo.localhost").await.unwrap();
    assert_eq!(
        echo_stream(&conn, b"after the flood".to_vec()).await,
        b"after the flood"
    );
    // TCP and TLS were never affected; the TCP port still echoes.
    let mut tcp = tokio::net::TcpStream::connect(gw.gateway.addr("echo"))
        .await
        .unwrap();
    tcp.write_all(b"tcp too").await.unwrap();
    let mut back = [0u8; 7];
    tcp.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"tcp too");
}

/// The Python interpreter path with aioquic importable: the tools
/// directory `./dev` installs it into.
fn aioquic_python() -> Command {
    let tools = crate::support::root().join("target/pytools");
    assert!(
        tools.join("aioquic").is_dir(),
        "aioquic is not installed in {}: run ./dev test (it installs it)",
        tools.display()
    );
    let mut command = Command::new("python3");
    command.env("PYTHONPATH", tools);
    command
}

#[tokio::test]
async fn an_aioquic_client_gets_the_same_bytes_back() {
    let state = ScratchDir::new("quic-state");
    let gw = quic_gateway(&state, "", &[echo_app()]);
    let root = state.0.join("dev-ca/root.pem");
    let addr = gw.quic.unwrap();
    let output = tokio::task::spawn_blocking(move || {
        aioquic_python()
            .arg(crate::support::root().join("tests/quic/aioquic_echo.py"))
            .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--server-name", "echo.localhost", "--alpn", DEFAULT_ALPN])
            .arg("--ca")
            .arg(&root)
            .args(["--bytes", "1048576", "--streams", "4"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "aioquic client failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("stream ok"))
            .count(),
        4,
        "{stdout}\n{stderr}"
    );
}
