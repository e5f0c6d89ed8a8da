//! QUIC: sockgate serving the Rust echo guests of the stream worlds
//! (`echo`, WASI 0.3; `sync-echo`, WASI 0.2) and of the event world
//! (`events-echo`) over QUIC, next to a plain
//! quinn echo server (the same quinn version, the same certificate and
//! transport limits, no WebAssembly) measured in the same run with the
//! same quinn client.
//!
//! - Single-stream throughput: one stream sends a payload while reading the
//!   echo back; MB/s counts the payload in one direction, with server CPU
//!   per GB.
//! - Streams per second: 32 tasks on one QUIC connection each loop: open a
//!   stream, send 64 bytes, finish, read the echo to its end. Each stream
//!   is one guest `handle` call in sockgate.
//!
//! `SOCKGATE_BENCH_STREAM_CLIENTS=N` changes the number of concurrent
//! stream tasks (default 32), to see how latency, not CPU, bounds the rate.
//! `SOCKGATE_BENCH_ONLY=TEXT` measures only the servers whose row names
//! contain TEXT (`quinn`, `conn-events`, …), prints what the client's
//! connection counted (datagrams and frames: does a server pack its
//! answers as well as quinn?) and publishes nothing: to profile one server
//! (`perf record -C 1` while it runs, the servers being on CPU 1).
//!
//! When `taskset` is available the servers are pinned to CPU 1 and the
//! load generator to CPU 0. The baseline server is this benchmark binary
//! itself, started again with `--quinn-echo-server`.
//!
//! Each server is measured twice (quinn, conn-handler, conn-handler-sync,
//! conn-events, then the same backwards) and each figure is the mean of
//! the two.
//!
//! Run: `cargo bench --bench quic_echo` (5 s per row, 512 MiB) or
//! `SOCKGATE_BENCH_QUICK=1 cargo bench --bench quic_echo` (1 s, 16 MiB).
//! Results are printed and written to `target/bench-results/quic_echo.{md,json}`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, TransportConfig, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sockgate_testkit::bench::{publish, quick};
use sockgate_testkit::guests::guest;
use sockgate_testkit::os::{has_taskset, pin, process_cpu};
use sockgate_testkit::paths::{root, sockgate_binary};
use sockgate_testkit::server::{Server, write_bench_config};
use sockgate_testkit::tls::{make_test_chain, tls_files_table, unverified_client_config};

const SERVER_NAME: &str = "echo.bench.test";
const ALPN: &str = "sockgate";
const STREAM_CLIENTS: usize = 32;
const CHUNK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--quinn-echo-server") {
        quinn_echo_server(Path::new(&args[at + 1]), Path::new(&args[at + 2]));
        return;
    }
    let quick = quick();
    let duration = Duration::from_secs(if quick { 1 } else { 5 });
    let bulk_bytes: u64 = if quick { 16 << 20 } else { 512 << 20 };
    let pinned = has_taskset();
    if pinned {
        pin(std::process::id(), "0");
    }
    let dir = root().join("target/bench-quic");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = make_test_chain(&dir, SERVER_NAME);
    let echo = guest("echo");
    let events_echo = guest("events-echo");
    let sync_echo = guest("sync-echo");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Each server is measured twice, in the order quinn, conn-handler,
    // conn-handler-sync, conn-events, then backwards, each on a fresh
    // server, and each figure is the mean of its two: single runs on
    // loopback drift by a third from one to the next, and whichever
    // server ran first or last would otherwise carry the drift.
    let servers: [(&'static str, Option<&Path>); 4] = [
        ("plain quinn echo", None),
        ("sockgate + echo guest (conn-handler)", Some(&echo)),
        (
            "sockgate + sync-echo guest (conn-handler-sync)",
            Some(&sync_echo),
        ),
        (
            "sockgate + events-echo guest (conn-events)",
            Some(&events_echo),
        ),
    ];
    let only = std::env::var("SOCKGATE_BENCH_ONLY").ok();
    let mut runs: Vec<Vec<Row>> = servers.iter().map(|_| Vec::new()).collect();
    for which in [0, 1, 2, 3, 3, 2, 1, 0] {
        let (name, guest) = servers[which];
        if only.as_deref().is_some_and(|only| !name.contains(only)) {
            continue;
        }
        let server = match guest {
            Some(guest) => sockgate(&dir, guest, &cert, &key, pinned),
            None => quinn(&cert, &key, pinned),
        };
        runs[which].push(runtime.block_on(Row::measure(name, &server, duration, bulk_bytes)));
    }
    if only.is_some() {
        for row in runs.iter().filter(|two| !two.is_empty()) {
            let row = Row::mean(row);
            println!(
                "{}: {:.0} MB/s single-stream ({:.0} ms CPU/GB), {:.0} streams/s ({:.1} µs \
                 CPU/stream)",
                row.server,
                row.bulk_mb_per_s,
                row.bulk_cpu_ms_per_gb,
                row.streams_per_s,
                row.stream_cpu_us
            );
        }
        return;
    }
    let mut rows: Vec<Row> = runs.iter().map(|two| Row::mean(two)).collect();
    // The table lists the sockgate rows first.
    rows.rotate_left(1);
    report(&rows, duration, bulk_bytes, pinned);
}

/// sockgate serving the echo guest over QUIC (and TLS) with `cert`.
fn sockgate(dir: &Path, echo: &Path, cert: &Path, key: &Path, pinned: bool) -> Server {
    let config = write_bench_config(
        "quic_echo",
        &format!("state_dir = {:?}", dir.join("state").display().to_string()),
        &format!(
            "{}\n[quic]\nlisten = \"127.0.0.1:0\"\n\n\
             [[app]]\nname = \"echo\"\ncomponent = {:?}\nlisten = \"127.0.0.1:0\"\n",
            tls_files_table("bench.test", cert, key),
            echo.display().to_string(),
        ),
    );
    let mut command = Command::new(sockgate_binary());
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn");
    Server::spawn(command, pinned, "quic listening on ")
}

/// The baseline: this binary as a plain quinn echo server.
fn quinn(cert: &Path, key: &Path, pinned: bool) -> Server {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.arg("--quinn-echo-server").arg(cert).arg(key);
    Server::spawn(command, pinned, "listening on ")
}

/// One server's figures.
#[derive(Clone, Copy)]
struct Row {
    server: &'static str,
    bulk_mb_per_s: f64,
    bulk_cpu_ms_per_gb: f64,
    streams_per_s: f64,
    stream_cpu_us: f64,
}

impl Row {
    /// The mean of a server's runs.
    fn mean(runs: &[Row]) -> Row {
        let n = runs.len() as f64;
        let mean = |figure: fn(&Row) -> f64| runs.iter().map(figure).sum::<f64>() / n;
        Row {
            server: runs[0].server,
            bulk_mb_per_s: mean(|r| r.bulk_mb_per_s),
            bulk_cpu_ms_per_gb: mean(|r| r.bulk_cpu_ms_per_gb),
            streams_per_s: mean(|r| r.streams_per_s),
            stream_cpu_us: mean(|r| r.stream_cpu_us),
        }
    }

    async fn measure(
        server: &'static str,
        under_test: &Server,
        duration: Duration,
        bulk: u64,
    ) -> Self {
        let client = client_endpoint();
        let conn = client
            .connect(under_test.addr, SERVER_NAME)
            .unwrap()
            .await
            .expect("QUIC handshake failed");
        let pid = [under_test.pid()];
        let (bulk_mb_per_s, bulk_cpu_ms_per_gb) = bulk_echo(&conn, &pid, bulk).await;
        let before = conn.stats();
        let (streams_per_s, stream_cpu_us) = streams(&conn, &pid, duration).await;
        if std::env::var_os("SOCKGATE_BENCH_ONLY").is_some() {
            let after = conn.stats();
            println!(
                "{server}: the client received {} datagrams, {} ACK frames, {} MAX_STREAMS \
                 frames, {} STREAM frames; sent {} datagrams, {} ACK frames",
                after.udp_rx.datagrams - before.udp_rx.datagrams,
                after.frame_rx.acks - before.frame_rx.acks,
                after.frame_rx.max_streams_bidi - before.frame_rx.max_streams_bidi,
                after.frame_rx.stream - before.frame_rx.stream,
                after.udp_tx.datagrams - before.udp_tx.datagrams,
                after.frame_tx.acks - before.frame_tx.acks,
            );
        }
        conn.close(VarInt::from_u32(0), b"done");
        client.wait_idle().await;
        Row {
            server,
            bulk_mb_per_s,
            bulk_cpu_ms_per_gb,
            streams_per_s,
            stream_cpu_us,
        }
    }
}

/// The quinn client: no certificate verification, ALPN `sockgate`.
fn client_endpoint() -> Endpoint {
    let tls = Arc::unwrap_or_clone(unverified_client_config(&[ALPN]));
    let crypto = QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    let mut endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// Transport limits as sockgate's defaults (1 MiB per stream, 1 MiB per
/// connection each way, 100 streams), for both the baseline and the client.
fn transport() -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(100))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(1 << 20))
        .receive_window(VarInt::from_u32(1 << 20))
        .send_window(1 << 20);
    transport
}

/// Single-stream echo of `bytes`: MB/s and server CPU ms per GB.
async fn bulk_echo(conn: &quinn::Connection, pid: &[u32], bytes: u64) -> (f64, f64) {
    let cpu_before = cpu(pid);
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            send.write_all(&chunk[..n]).await.unwrap();
            left -= n as u64;
        }
        send.finish().unwrap();
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while let Some(n) = recv.read(&mut buf).await.unwrap() {
        got += n as u64;
    }
    writer.await.unwrap();
    assert_eq!(got, bytes, "the echo ended early");
    let elapsed = started.elapsed();
    let cpu_used = cpu(pid) - cpu_before;
    (
        bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        cpu_used.as_secs_f64() * 1e3 / (bytes as f64 / 1e9),
    )
}

/// Short streams for `duration`: streams per second and server CPU µs per
/// stream.
async fn streams(conn: &quinn::Connection, pid: &[u32], duration: Duration) -> (f64, f64) {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = std::env::var("SOCKGATE_BENCH_STREAM_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(STREAM_CLIENTS);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (conn, count, stop) = (conn.clone(), count.clone(), stop.clone());
            tokio::spawn(async move {
                let message = [0x42u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let (mut send, mut recv) = conn.open_bi().await.unwrap();
                    send.write_all(&message).await.unwrap();
                    send.finish().unwrap();
                    let back = recv.read_to_end(1024).await.unwrap();
                    assert_eq!(back.len(), message.len());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await; // warm-up
    let cpu_before = cpu(pid);
    let before = count.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let done = (count.load(Ordering::Relaxed) - before) as f64;
    let elapsed = started.elapsed();
    let cpu_used = cpu(pid) - cpu_before;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    (
        done / elapsed.as_secs_f64(),
        cpu_used.as_secs_f64() * 1e6 / done.max(1.0),
    )
}

fn cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|&pid| process_cpu(pid)).sum()
}

fn report(rows: &[Row], duration: Duration, bulk_bytes: u64, pinned: bool) {
    let mut md = format!(
        "QUIC echo; one stream echoing {} MiB; {STREAM_CLIENTS} concurrent 64-byte streams on \
         one connection for {} s; {}; each figure the mean of two runs on fresh servers, in the \
         order quinn, conn-handler, conn-handler-sync, conn-events, then backwards\n\n",
        bulk_bytes >> 20,
        duration.as_secs(),
        if pinned {
            "servers pinned to CPU 1, load generator to CPU 0"
        } else {
            "not pinned (taskset missing)"
        }
    );
    md.push_str(
        "| server | single-stream MB/s | server CPU ms/GB | streams/s | server CPU µs/stream |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let mut json = Vec::new();
    for row in rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            row.server,
            row.bulk_mb_per_s,
            row.bulk_cpu_ms_per_gb,
            row.streams_per_s,
            row.stream_cpu_us
        ));
        json.push(format!(
            "{{\"server\":{:?},\"bulk_mb_per_s\":{:.1},\"bulk_cpu_ms_per_gb\":{:.1},\
             \"streams_per_s\":{:.1},\"cpu_us_per_stream\":{:.2}}}",
            row.server,
            row.bulk_mb_per_s,
            row.bulk_cpu_ms_per_gb,
            row.streams_per_s,
            row.stream_cpu_us
        ));
    }
    if let [streams, sync, events, quinn] = rows {
        for (world, row) in [
            ("conn-handler", streams),
            ("conn-handler-sync", sync),
            ("conn-events", events),
        ] {
            md.push_str(&format!(
                "\nsockgate (`{world}`) / quinn: {:.2}× single-stream throughput, {:.2}× streams \
                 per second\n",
                row.bulk_mb_per_s / quinn.bulk_mb_per_s,
                row.streams_per_s / quinn.streams_per_s
            ));
        }
    }
    publish("quic_echo", &md, &json);
}

/// The baseline: a quinn echo server on one thread, printing
/// `listening on ADDR`, serving until killed.
fn quinn_echo_server(cert: &Path, key: &Path) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tls.alpn_protocols = vec![ALPN.as_bytes().to_vec()];
    let crypto = QuicServerConfig::try_from(Arc::new(tls)).unwrap();
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let endpoint = Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        println!("listening on {}", endpoint.local_addr().unwrap());
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if tokio::io::copy(&mut recv, &mut send).await.is_ok() {
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
}
