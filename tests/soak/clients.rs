//! The healthy clients: echo over TCP, TLS and QUIC (the `conn-handler`
//! and `conn-events` worlds), a chat room over TCP and TLS, HTTP/1.1,
//! HTTP/2 and HTTP/3 to a `wasi:http` app, and the neighbour whose round
//! trips measure what the chaos costs the others. Each checks every byte
//! it gets back; a failure is a violation unless a restart excuses it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::world::{Soak, Tally};
use sockgate_testkit::tls::{client_config, connect};

/// How long one exchange may take before the client calls it lost.
const EXCHANGE: Duration = Duration::from_secs(15);

/// Pause after a failed attempt, so that a broken gateway is not hammered
/// in a tight loop (a rate, not a synchronisation).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Exchanges per connection before the client reconnects (so connection
/// set-up is exercised all along).
const EXCHANGES_PER_CONNECTION: usize = 40;

/// The neighbour's round trip above which a tenant was starved. The
/// fairness test bounds it at 100 ms on a machine doing nothing else;
/// here floods, compiles, restarts and the soak's own clients share the
/// same two cores.
pub const NEIGHBOUR_BOUND: Duration = Duration::from_millis(250);

/// The page `wasi-http-hello-p3` serves, byte for byte.
const PAGE: &str = "<!doctype html>\n<html><head><title>Hello from sockgate</title></head>\
<body><h1>Hello from sockgate</h1><p>Served by a WebAssembly component.</p></body></html>\n";

/// A small deterministic generator of payloads.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// How an echo client reaches its app.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    /// Plain TCP on the app's own port.
    Tcp,
    /// TLS on the shared listener, by SNI.
    Tls,
    /// QUIC streams on the shared endpoint, by SNI.
    Quic,
}

/// Reports a failed exchange: excused across a restart, else a violation.
fn failed(soak: &Soak, epoch: u64, what: String) {
    if !soak.excused(epoch) {
        soak.violation(what);
    }
}

/// Echoes random payloads through `app` over `transport` until the run
/// ends, reconnecting every few exchanges.
pub async fn echo(soak: Arc<Soak>, app: &'static str, transport: Transport, seed: u64) {
    let mut rng = Rng::new(seed);
    let quic = match transport {
        Transport::Quic => Some(quic_endpoint(&soak, "sockgate")),
        _ => None,
    };
    while !soak.stopping() {
        let epoch = soak.serving().await;
        let result = match (&quic, transport) {
            (Some(endpoint), _) => echo_quic(&soak, endpoint, app, &mut rng).await,
            (None, Transport::Tcp) => match TcpStream::connect(soak.tcp[app]).await {
                Ok(stream) => echo_stream(&soak, stream, &mut rng).await,
                Err(err) => Err(format!("connect: {err}")),
            },
            (None, _) => {
                let config = client_config(&soak.roots, &[]);
                match connect(soak.tls, &Soak::server_name(app), config).await {
                    Ok(stream) => echo_stream(&soak, stream, &mut rng).await,
                    Err(err) => Err(format!("connect: {err}")),
                }
            }
        };
        if let Err(err) = result {
            failed(
                &soak,
                epoch,
                format!("echo {app} over {transport:?}: {err}"),
            );
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Random payloads of 1 byte to 32 KiB through one connection.
async fn echo_stream(
    soak: &Soak,
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    rng: &mut Rng,
) -> Result<(), String> {
    Tally::add(&soak.tally.connections, 1);
    for _ in 0..EXCHANGES_PER_CONNECTION {
        if soak.stopping() {
            break;
        }
        let len = 1 + rng.below(32 * 1024) as usize;
        let sent = rng.bytes(len);
        let mut back = vec![0; sent.len()];
        let exchange = async {
            let (mut reader, mut writer) = tokio::io::split(&mut stream);
            let write = async {
                writer.write_all(&sent).await?;
                writer.flush().await
            };
            let (wrote, read) = tokio::join!(write, reader.read_exact(&mut back));
            wrote.and(read.map(drop))
        };
        match tokio::time::timeout(EXCHANGE, exchange).await {
            Err(_) => {
                return Err(format!(
                    "no echo of {} bytes within {EXCHANGE:?}",
                    sent.len()
                ));
            }
            Ok(Err(err)) => return Err(format!("{err}")),
            Ok(Ok(())) if back != sent => {
                // Never excused: a wrong byte is wrong across restarts too.
                soak.violation(format!(
                    "echo returned different bytes ({} sent)",
                    sent.len()
                ));
                return Ok(());
            }
            Ok(Ok(())) => Tally::add(&soak.tally.bytes_verified, sent.len() as u64),
        }
    }
    Ok(())
}

/// Random payloads, each on a stream of its own (each stream is one
/// connection to the app), over one QUIC connection.
async fn echo_quic(
    soak: &Soak,
    endpoint: &quinn::Endpoint,
    app: &str,
    rng: &mut Rng,
) -> Result<(), String> {
    let connecting = endpoint
        .connect(soak.quic, &Soak::server_name(app))
        .map_err(|err| format!("connect: {err}"))?;
    let conn = tokio::time::timeout(EXCHANGE, connecting)
        .await
        .map_err(|_| "QUIC handshake timed out".to_owned())?
        .map_err(|err| format!("QUIC handshake: {err}"))?;
    for _ in 0..EXCHANGES_PER_CONNECTION {
        if soak.stopping() {
            break;
        }
        Tally::add(&soak.tally.connections, 1);
        let len = 1 + rng.below(32 * 1024) as usize;
        let sent = rng.bytes(len);
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let write = async {
                send.write_all(&sent).await.map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())
            };
            let read = async { recv.read_to_end(1 << 20).await.map_err(|e| e.to_string()) };
            let (wrote, read) = tokio::join!(write, read);
            wrote.and(read)
        };
        match tokio::time::timeout(EXCHANGE, exchange).await {
            Err(_) => return Err(format!("no QUIC echo of {} bytes", sent.len())),
            Ok(Err(err)) => return Err(err),
            Ok(Ok(back)) if back != sent => {
                soak.violation(format!(
                    "QUIC echo returned different bytes ({} sent)",
                    sent.len()
                ));
                return Ok(());
            }
            Ok(Ok(_)) => Tally::add(&soak.tally.bytes_verified, sent.len() as u64),
        }
    }
    conn.close(0u32.into(), b"done");
    Ok(())
}

/// A quinn client trusting the soak's CA and offering `alpn`.
fn quic_endpoint(soak: &Soak, alpn: &str) -> quinn::Endpoint {
    let tls = Arc::unwrap_or_clone(client_config(&soak.roots, &[alpn]));
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// Three members of the chat room (two over TCP, one over TLS): one speaks
/// numbered lines, the others must hear each one, in order.
pub async fn chat(soak: Arc<Soak>, group: u64) {
    while !soak.stopping() {
        let epoch = soak.serving().await;
        if let Err(err) = chat_session(&soak, group).await {
            failed(&soak, epoch, format!("chat group {group}: {err}"));
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// One session of a chat group, until the run ends or something fails.
async fn chat_session(soak: &Soak, group: u64) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let speaker = TcpStream::connect(soak.tcp["chat"]).await.map_err(io)?;
    let tcp = TcpStream::connect(soak.tcp["chat"]).await.map_err(io)?;
    let config = client_config(&soak.roots, &[]);
    let tls = connect(soak.tls, &Soak::server_name("chat"), config)
        .await
        .map_err(io)?;
    Tally::add(&soak.tally.connections, 3);
    let mut speaker = BufReader::new(speaker);
    let mut listeners: Vec<Box<dyn AsyncBufReadUnpin>> =
        vec![Box::new(BufReader::new(tcp)), Box::new(BufReader::new(tls))];
    // Joined once greeted: lines sent before that would not reach them.
    next_line(&mut speaker, "* welcome").await?;
    for listener in &mut listeners {
        next_line(listener, "* welcome").await?;
    }
    let tag = format!("soak-{group}-");
    for n in 0u64.. {
        if soak.stopping() {
            return Ok(());
        }
        let line = format!("{tag}{n}\n");
        speaker.write_all(line.as_bytes()).await.map_err(io)?;
        for listener in &mut listeners {
            let heard = next_line(listener, &tag).await?;
            if !heard.ends_with(&format!("{tag}{n}")) {
                soak.violation(format!(
                    "chat group {group}: expected line {n}, heard {heard:?}"
                ));
                return Ok(());
            }
            Tally::add(&soak.tally.chat_lines, 1);
            Tally::add(&soak.tally.bytes_verified, heard.len() as u64);
        }
    }
    Ok(())
}

/// What a chat member reads from: a buffered TCP or TLS stream.
trait AsyncBufReadUnpin: tokio::io::AsyncBufRead + AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncBufRead + AsyncWrite + Unpin + Send> AsyncBufReadUnpin for T {}

/// The next line holding `needle` (other groups share the room).
async fn next_line(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    needle: &str,
) -> Result<String, String> {
    let deadline = Instant::now() + EXCHANGE;
    loop {
        let mut line = String::new();
        match tokio::time::timeout_at(deadline.into(), reader.read_line(&mut line)).await {
            Err(_) => return Err(format!("no line with {needle:?} within {EXCHANGE:?}")),
            Ok(Err(err)) => return Err(err.to_string()),
            Ok(Ok(0)) => return Err(format!("closed while waiting for {needle:?}")),
            Ok(Ok(_)) if line.contains(needle) => return Ok(line.trim_end().to_owned()),
            Ok(Ok(_)) => {}
        }
    }
}

/// How an HTTP client reaches the `web` app.
#[derive(Clone, Copy, Debug)]
pub enum HttpVersion {
    /// HTTP/1.1 over plain TCP on the app's own port.
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`).
    Http2,
    /// HTTP/3 over QUIC.
    Http3,
}

/// Requests the hello page over `version` until the run ends.
pub async fn http(soak: Arc<Soak>, version: HttpVersion) {
    let h3 = matches!(version, HttpVersion::Http3).then(|| quic_endpoint(&soak, "h3"));
    while !soak.stopping() {
        let epoch = soak.serving().await;
        let result = match (&h3, version) {
            (Some(endpoint), _) => http3_session(&soak, endpoint).await,
            (None, HttpVersion::Http1) => http1_session(&soak).await,
            (None, _) => http2_session(&soak).await,
        };
        if let Err(err) = result {
            failed(&soak, epoch, format!("{version:?}: {err}"));
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// The request for the page at `authority`.
fn page_request(authority: &str) -> http::Request<Empty<bytes::Bytes>> {
    http::Request::get(format!("https://{authority}/"))
        .header("host", authority)
        .body(Empty::new())
        .unwrap()
}

/// Checks one answer.
fn check_page(soak: &Soak, status: u16, body: &[u8]) -> Result<(), String> {
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(body)
        ));
    }
    if body != PAGE.as_bytes() {
        soak.violation(format!(
            "the page differs: {:?}",
            String::from_utf8_lossy(body)
        ));
    }
    Tally::add(&soak.tally.requests, 1);
    Tally::add(&soak.tally.bytes_verified, body.len() as u64);
    Ok(())
}

/// Keep-alive HTTP/1.1 requests on one connection.
async fn http1_session(soak: &Soak) -> Result<(), String> {
    let stream = TcpStream::connect(soak.tcp["web"])
        .await
        .map_err(|e| e.to_string())?;
    Tally::add(&soak.tally.connections, 1);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driving = tokio::spawn(conn);
    let authority = soak.tcp["web"].to_string();
    for _ in 0..EXCHANGES_PER_CONNECTION {
        if soak.stopping() {
            break;
        }
        let answer = async {
            let response = sender.send_request(page_request(&authority)).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(EXCHANGE, answer)
            .await
            .map_err(|_| "no HTTP/1.1 answer".to_owned())?
            .map_err(|e| e.to_string())?;
        check_page(soak, status, &body)?;
    }
    driving.abort();
    Ok(())
}

/// Concurrent HTTP/2 requests on one TLS connection.
async fn http2_session(soak: &Soak) -> Result<(), String> {
    let config = client_config(&soak.roots, &["h2"]);
    let server = Soak::server_name("web");
    let stream = connect(soak.tls, &server, config)
        .await
        .map_err(|e| e.to_string())?;
    Tally::add(&soak.tally.connections, 1);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let driving = tokio::spawn(conn);
    for _ in 0..EXCHANGES_PER_CONNECTION / 4 {
        if soak.stopping() {
            break;
        }
        let requests = (0..4).map(|_| {
            let mut sender = sender.clone();
            let request = page_request(&server);
            async move {
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            }
        });
        let answers = tokio::time::timeout(EXCHANGE, futures::future::join_all(requests))
            .await
            .map_err(|_| "no HTTP/2 answers".to_owned())?;
        for answer in answers {
            let (status, body) = answer.map_err(|e| e.to_string())?;
            check_page(soak, status, &body)?;
        }
    }
    driving.abort();
    Ok(())
}

/// HTTP/3 requests on one QUIC connection.
async fn http3_session(soak: &Soak, endpoint: &quinn::Endpoint) -> Result<(), String> {
    let server = Soak::server_name("web");
    let connecting = endpoint
        .connect(soak.quic, &server)
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(EXCHANGE, connecting)
        .await
        .map_err(|_| "QUIC handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Tally::add(&soak.tally.connections, 1);
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| e.to_string())?;
    let driving = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    for _ in 0..EXCHANGES_PER_CONNECTION {
        if soak.stopping() {
            break;
        }
        let answer = async {
            let request = http::Request::get(format!("https://{server}/"))
                .body(())
                .unwrap();
            let mut stream = send
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            // RFC 9114 §4.1.2: a server may answer before the request
            // ends and stop it with H3_NO_ERROR; the response stands.
            match stream.finish().await {
                Err(h3::error::StreamError::RemoteTerminate { code, .. })
                    if code == h3::error::Code::H3_NO_ERROR => {}
                other => other.map_err(|e| e.to_string())?,
            }
            let response = stream.recv_response().await.map_err(|e| e.to_string())?;
            let mut body = Vec::new();
            while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
                body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
            }
            Ok::<_, String>((response.status().as_u16(), body))
        };
        let (status, body) = tokio::time::timeout(EXCHANGE, answer)
            .await
            .map_err(|_| "no HTTP/3 answer".to_owned())??;
        check_page(soak, status, &body)?;
    }
    driving.abort();
    Ok(())
}

/// A 64-byte round trip with `echo` every 2 ms for the whole run; the
/// worst one outside restarts is the fairness figure.
pub async fn neighbour(soak: Arc<Soak>) {
    let payload = [b'n'; 63].iter().chain(b"\n").copied().collect::<Vec<u8>>();
    while !soak.stopping() {
        let epoch = soak.serving().await;
        let mut stream = match TcpStream::connect(soak.tcp["echo"]).await {
            Ok(stream) => stream,
            Err(err) => {
                failed(&soak, epoch, format!("neighbour connect: {err}"));
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut back = vec![0; payload.len()];
        let mut ticks = tokio::time::interval(Duration::from_millis(2));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !soak.stopping() {
            ticks.tick().await;
            let started = Instant::now();
            let round = async {
                stream.write_all(&payload).await?;
                stream.read_exact(&mut back).await
            };
            match tokio::time::timeout(EXCHANGE, round).await {
                Ok(Ok(_)) if back == payload => {
                    let rtt = started.elapsed();
                    if soak.epoch() == epoch {
                        Tally::add(&soak.tally.neighbour_round_trips, 1);
                        soak.tally.neighbour_worst_us.fetch_max(
                            rtt.as_micros() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        if rtt > NEIGHBOUR_BOUND {
                            soak.violation(format!(
                                "the neighbour waited {rtt:?} for a round trip"
                            ));
                        }
                    }
                }
                Ok(Ok(_)) => soak.violation("the neighbour's echo differs".to_owned()),
                Ok(Err(err)) => {
                    failed(&soak, epoch, format!("neighbour: {err}"));
                    break;
                }
                Err(_) => {
                    failed(&soak, epoch, "neighbour: no echo".to_owned());
                    break;
                }
            }
        }
    }
}
