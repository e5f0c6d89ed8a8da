//! TCP echo: sockgate serving the Rust echo guests of two worlds — `echo`
//! (`conn-handler`, byte streams) and `events-echo` (`conn-events`, one call
//! per batch of socket events) — next to a native tokio echo server,
//! measured in the same run with the same load generator.
//!
//! - **Round trips**: each of N connections (1, 50, 500) sends a 64-byte
//!   message and waits for it to come back, as fast as it can.
//! - **Bulk**: one connection streams 1 GiB through the server and reads it
//!   back at the same time; throughput and server CPU per GiB.
//! - **Idle**: 10 000 connections opened (each echoes one byte, so the
//!   server has taken it on) and left idle; the server's RSS growth per
//!   connection.
//!
//! Each round-trip row and the bulk row measure every server twice
//! (native, conn-handler, conn-events, then backwards) and print the means.
//!
//! `SOCKGATE_BENCH_ONLY=round-trips|bulk|idle` runs that part alone and
//! publishes nothing (to profile or compare one part).
//!
//! Both servers run as separate processes; when `taskset` is available the
//! server is pinned to CPU 1 and the load generator to CPU 0, so the
//! figures compare one server core each. Server CPU and RSS come from the
//! server's /proc/<pid>.
//!
//! `SOCKGATE_BENCH_COMPARE_BIN=<another sockgate binary>` adds that build's
//! round trips to the table (before/after figures from the same run).
//!
//! Run: `cargo bench --bench tcp_echo` (full: 5 s per row, 1 GiB, 10 000
//! idle connections) or `SOCKGATE_BENCH_QUICK=1 cargo bench --bench
//! tcp_echo` (1 s per row, 64 MiB, 1 000 connections). Results are printed
//! and written to `target/bench-results/tcp_echo.{md,json}`.

use sockgate_testkit::bench::{MESSAGE, Measured, measure, publish, quick};
use sockgate_testkit::guests::guest;
use sockgate_testkit::os::{
    guest_memory_rss_kib, has_taskset, pin, process_cpu, process_rss_kib, raise_nofile,
};
use sockgate_testkit::paths::bench_cache_dir;
use sockgate_testkit::server::{Server, sockgate_serve};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GIB: f64 = (1u64 << 30) as f64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("native-echo-server") {
        native_echo_server();
        return;
    }
    let quick = quick();
    let (duration, bulk_bytes, idle_conns) = if quick {
        (Duration::from_secs(1), 64u64 << 20, 1_000)
    } else {
        (Duration::from_secs(5), 1u64 << 30, 10_000)
    };
    // Every idle connection is a descriptor in the load generator and one
    // in the server (which inherits the limit).
    let nofile = raise_nofile(idle_conns as u64 + 1_000);
    let idle_conns = idle_conns.min(nofile.saturating_sub(200) as usize);
    let pinned = has_taskset();
    if pinned {
        pin(std::process::id(), "0");
    }

    let echo = guest("echo");
    let events_echo = guest("events-echo");
    let cache = bench_cache_dir();
    let mut md = String::new();
    let mut json = Vec::new();

    let compare = std::env::var_os("SOCKGATE_BENCH_COMPARE_BIN").map(std::path::PathBuf::from);
    let only = std::env::var("SOCKGATE_BENCH_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|only| only == name);
    let mut rows = Vec::new();
    let mut event_rows = Vec::new();
    let mut compared = Vec::new();
    let connection_counts: &[usize] = if part("round-trips") {
        &[1, 50, 500]
    } else {
        &[]
    };
    // The servers compared: native (0), conn-handler (1), conn-events (2).
    let start = |which: usize| match which {
        0 => native_server(pinned),
        1 => Server::sockgate(&echo, &cache, pinned),
        _ => Server::sockgate(&events_echo, &cache, pinned),
    };
    for &connections in connection_counts {
        // Each server twice, in the order native, conn-handler,
        // conn-events, then backwards, each figure the mean of its two:
        // one run of a row drifts by a quarter from the next, and
        // whichever server ran first would otherwise carry the drift.
        let [native_result, gateway_result, events_result] =
            twice_each(&start, |server| measure(server, connections, duration))
                .map(|two| mean(&two[0], &two[1]));
        if let Some(binary) = &compare {
            // A-B-B-A: the compared build is measured twice between two
            // more measurements of this build, so neither build always
            // runs first (a warm cache or a busy neighbour favours one
            // order), and each side's figure is the mean of two.
            let other_first = measure_bin(binary, &echo, &cache, pinned, connections, duration);
            let other_second = measure_bin(binary, &echo, &cache, pinned, connections, duration);
            let gateway = Server::sockgate(&echo, &cache, pinned);
            let this_again = measure(&gateway, connections, duration);
            drop(gateway);
            compared.push((
                connections,
                mean(&gateway_result, &this_again),
                mean(&other_first, &other_second),
            ));
        }
        rows.push((connections, gateway_result, native_result));
        event_rows.push((connections, events_result, native_result));
    }
    report_round_trips(&rows, duration, pinned, &mut md, &mut json, "conn-handler");
    report_round_trips(
        &event_rows,
        duration,
        pinned,
        &mut md,
        &mut json,
        "conn-events",
    );
    if let Some(binary) = &compare {
        md.push_str(&format!(
            "\nThe same rows with `{}` (SOCKGATE_BENCH_COMPARE_BIN), measured in the same run \
             in the order this, compared, compared, this (each figure the mean of its two):\n\n\
             | connections | this build rt/s | compared build rt/s | this / compared | \
             this CPU µs/rt | compared CPU µs/rt |\n|---:|---:|---:|---:|---:|---:|\n",
            binary.display()
        ));
        for (connections, this, other) in &compared {
            md.push_str(&format!(
                "| {connections} | {:.0} | {:.0} | {:.2}× | {:.2} | {:.2} |\n",
                this.round_trips_per_sec,
                other.round_trips_per_sec,
                this.round_trips_per_sec / other.round_trips_per_sec,
                this.server_cpu_us_per_round_trip,
                other.server_cpu_us_per_round_trip,
            ));
        }
    }

    if part("bulk") {
        // Twice each, in the order native, conn-handler, conn-events, then
        // backwards, as the round trips.
        let [native_bulk, gateway_bulk, events_bulk] =
            twice_each(&start, |server| bulk(server, bulk_bytes))
                .map(|two| Bulk::mean(&two[0], &two[1]));
        report_bulk(
            bulk_bytes,
            &[("conn-handler", gateway_bulk), ("conn-events", events_bulk)],
            native_bulk,
            &mut md,
            &mut json,
        );
    }
    if !part("idle") {
        print!("{md}");
        return;
    }
    let native = native_server(pinned);
    let native_idle = idle(&native, idle_conns);
    drop(native);
    let gateway = idle_gateway(&echo, idle_conns, pinned);
    let gateway_idle = idle(&gateway, idle_conns);
    drop(gateway);
    let gateway = idle_gateway(&events_echo, idle_conns, pinned);
    let events_idle = idle(&gateway, idle_conns);
    drop(gateway);
    report_idle(
        idle_conns,
        &[("conn-handler", gateway_idle), ("conn-events", events_idle)],
        native_idle,
        &mut md,
        &mut json,
    );
    if only.is_some() {
        print!("{md}");
        return;
    }
    publish("tcp_echo", &md, &json);
}

/// One app, one instance, with caps high enough for every idle connection
/// from the one loopback address. The echo guest holds a 16 KiB read buffer
/// per connection (mostly untouched, so little of it is resident), which
/// for 10 000 connections is more address space than the default 128 MiB
/// memory limit: the limit is raised so the instance does not trap.
/// One round-trip measurement of another sockgate binary serving `guest`.
fn measure_bin(
    binary: &Path,
    guest: &Path,
    cache: &Path,
    pinned: bool,
    connections: usize,
    duration: Duration,
) -> Measured {
    let server = Server::sockgate_bin(binary, guest, cache, pinned);
    measure(&server, connections, duration)
}

/// Measures each of the three servers `start` gives twice, each on a fresh
/// server, in the order 0, 1, 2, then backwards: returns each server's two
/// results.
fn twice_each<T>(start: &impl Fn(usize) -> Server, run: impl Fn(&Server) -> T) -> [Vec<T>; 3] {
    let mut runs: [Vec<T>; 3] = Default::default();
    for which in [0, 1, 2, 2, 1, 0] {
        let server = start(which);
        runs[which].push(run(&server));
    }
    runs
}

/// The mean of two measurements of the same server.
fn mean(a: &Measured, b: &Measured) -> Measured {
    Measured {
        round_trips_per_sec: (a.round_trips_per_sec + b.round_trips_per_sec) / 2.0,
        server_cpu_us_per_round_trip: (a.server_cpu_us_per_round_trip
            + b.server_cpu_us_per_round_trip)
            / 2.0,
    }
}

fn idle_gateway(echo: &Path, connections: usize, pinned: bool) -> Server {
    let cap = connections + 100;
    let memory_mb = (64 + cap * 20 / 1024).max(128);
    sockgate_serve(
        "tcp_echo_idle",
        &format!(
            "name = \"echo\"\ncomponent = \"{}\"\nlisten = \"127.0.0.1:0\"\ninstances = 1\n\n\
             [app.limits]\nmax_connections = {cap}\nmax_connections_per_instance = {cap}\n\
             max_connections_per_ip = {cap}\nmemory_limit_mb = {memory_mb}\n",
            echo.display()
        ),
        pinned,
    )
}

fn native_server(pinned: bool) -> Server {
    let mut command = Command::new(std::env::current_exe().expect("no current exe"));
    command.arg("native-echo-server");
    Server::spawn(command, pinned, " listening on tcp ")
}

fn report_round_trips(
    rows: &[(usize, Measured, Measured)],
    duration: Duration,
    pinned: bool,
    md: &mut String,
    json: &mut Vec<String>,
    world: &str,
) {
    md.push_str(&format!(
        "TCP echo round trips, world `{world}`, {MESSAGE}-byte messages, {} s per run, each \
         figure the mean of two runs (native, conn-handler, conn-events, then backwards), {}\n\n",
        duration.as_secs(),
        if pinned {
            "server pinned to CPU 1, load generator to CPU 0"
        } else {
            "not pinned (taskset missing)"
        }
    ));
    md.push_str("| connections | sockgate rt/s | native tokio rt/s | ratio | sockgate CPU µs/rt | native CPU µs/rt |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|\n");
    for (connections, gateway, native) in rows {
        md.push_str(&format!(
            "| {connections} | {:.0} | {:.0} | {:.2}× | {:.2} | {:.2} |\n",
            gateway.round_trips_per_sec,
            native.round_trips_per_sec,
            gateway.round_trips_per_sec / native.round_trips_per_sec,
            gateway.server_cpu_us_per_round_trip,
            native.server_cpu_us_per_round_trip,
        ));
        json.push(format!(
            "{{\"kind\":\"round_trips\",\"world\":\"{world}\",\"connections\":{connections},\"sockgate_rt_per_s\":{:.1},\
             \"native_rt_per_s\":{:.1},\"sockgate_cpu_us_per_rt\":{:.3},\"native_cpu_us_per_rt\":{:.3}}}",
            gateway.round_trips_per_sec,
            native.round_trips_per_sec,
            gateway.server_cpu_us_per_round_trip,
            native.server_cpu_us_per_round_trip,
        ));
    }
}

/// Throughput and server CPU of one bulk transfer.
#[derive(Debug, Clone, Copy)]
struct Bulk {
    gib_per_sec: f64,
    server_cpu_s_per_gib: f64,
}

impl Bulk {
    /// The mean of two transfers through the same server.
    fn mean(a: &Bulk, b: &Bulk) -> Bulk {
        Bulk {
            gib_per_sec: (a.gib_per_sec + b.gib_per_sec) / 2.0,
            server_cpu_s_per_gib: (a.server_cpu_s_per_gib + b.server_cpu_s_per_gib) / 2.0,
        }
    }
}

/// Streams `bytes` through `server` on one connection, writing and reading
/// back concurrently.
fn bulk(server: &Server, bytes: u64) -> Bulk {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let cpu_before = process_cpu(server.pid());
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            let chunk = vec![0x5au8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                wr.write_all(&chunk[..n]).await.unwrap();
                left -= n as u64;
            }
            wr
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0u64;
        while received < bytes {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed after {received} of {bytes} bytes");
            received += n as u64;
        }
        let elapsed = started.elapsed();
        let cpu = process_cpu(server.pid()) - cpu_before;
        drop(writer.await.unwrap());
        let gib = bytes as f64 / GIB;
        Bulk {
            gib_per_sec: gib / elapsed.as_secs_f64(),
            server_cpu_s_per_gib: cpu.as_secs_f64() / gib,
        }
    })
}

fn report_bulk(
    bytes: u64,
    worlds: &[(&str, Bulk)],
    native: Bulk,
    md: &mut String,
    json: &mut Vec<String>,
) {
    md.push_str(&format!(
        "\nBulk stream: {} MiB echoed over one connection (written and read back concurrently), \
         each figure the mean of two runs (native, conn-handler, conn-events, then backwards)\n\n\
         | server | GiB/s | ratio | server CPU s/GiB |\n|---|---:|---:|---:|\n",
        bytes >> 20,
    ));
    for (world, gateway) in worlds {
        md.push_str(&format!(
            "| sockgate + echo guest (`{world}`) | {:.2} | {:.2}× | {:.2} |\n",
            gateway.gib_per_sec,
            gateway.gib_per_sec / native.gib_per_sec,
            gateway.server_cpu_s_per_gib,
        ));
        json.push(format!(
            "{{\"kind\":\"bulk\",\"world\":\"{world}\",\"bytes\":{bytes},\"sockgate_gib_per_s\":{:.3},\
             \"native_gib_per_s\":{:.3},\"sockgate_cpu_s_per_gib\":{:.3},\"native_cpu_s_per_gib\":{:.3}}}",
            gateway.gib_per_sec,
            native.gib_per_sec,
            gateway.server_cpu_s_per_gib,
            native.server_cpu_s_per_gib
        ));
    }
    md.push_str(&format!(
        "| native tokio | {:.2} | 1.00× | {:.2} |\n",
        native.gib_per_sec, native.server_cpu_s_per_gib,
    ));
}

/// Server RSS growth per idle connection, in bytes.
#[derive(Debug, Clone, Copy)]
struct Idle {
    base_kib: u64,
    bytes_per_conn: f64,
    /// Of which in the guest's linear memory.
    guest_bytes_per_conn: f64,
}

/// Opens `connections` connections to `server`, each echoing one byte (so
/// the server has taken it on), and measures the server's RSS growth while
/// they sit idle.
fn idle(server: &Server, connections: usize) -> Idle {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // One connection first, so lazily created state (thread pools,
        // the instance) is in the base figure.
        let mut warm = TcpStream::connect(server.addr).await.unwrap();
        ping(&mut warm).await;
        drop(warm);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let base_kib = process_rss_kib(server.pid());
        let base_guest_kib = guest_memory_rss_kib(server.pid());
        let mut open = Vec::with_capacity(connections);
        // In batches, so the accept backlog never overflows.
        for batch in (0..connections).collect::<Vec<_>>().chunks(100) {
            let streams = futures::future::join_all(batch.iter().map(|_| async {
                let mut stream = TcpStream::connect(server.addr).await.unwrap();
                ping(&mut stream).await;
                stream
            }))
            .await;
            open.extend(streams);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_kib = process_rss_kib(server.pid());
        let guest_kib = guest_memory_rss_kib(server.pid());
        drop(open);
        let per_conn = |after: u64, before: u64| {
            after.saturating_sub(before) as f64 * 1024.0 / connections as f64
        };
        Idle {
            base_kib,
            bytes_per_conn: per_conn(rss_kib, base_kib),
            guest_bytes_per_conn: per_conn(guest_kib, base_guest_kib),
        }
    })
}

async fn ping(stream: &mut TcpStream) {
    stream.write_all(b"!").await.unwrap();
    let mut back = [0u8; 1];
    stream.read_exact(&mut back).await.unwrap();
}

fn report_idle(
    connections: usize,
    worlds: &[(&str, Idle)],
    native: Idle,
    md: &mut String,
    json: &mut Vec<String>,
) {
    md.push_str(&format!(
        "\nIdle connections: {connections} open on one app (one instance), each after one \
         1-byte echo; server RSS growth / {connections}\n\n\
         | server | base RSS MiB | bytes per idle connection | of which in guest memory | ratio |\n\
         |---|---:|---:|---:|---:|\n"
    ));
    for (world, gateway) in worlds {
        md.push_str(&format!(
            "| sockgate + echo guest (`{world}`) | {:.1} | {:.0} | {:.0} | {:.2}× |\n",
            gateway.base_kib as f64 / 1024.0,
            gateway.bytes_per_conn,
            gateway.guest_bytes_per_conn,
            gateway.bytes_per_conn / native.bytes_per_conn,
        ));
        json.push(format!(
            "{{\"kind\":\"idle\",\"world\":\"{world}\",\"connections\":{connections},\
             \"sockgate_bytes_per_conn\":{:.0},\"sockgate_guest_bytes_per_conn\":{:.0},\
             \"native_bytes_per_conn\":{:.0},\"sockgate_base_kib\":{},\"native_base_kib\":{}}}",
            gateway.bytes_per_conn,
            gateway.guest_bytes_per_conn,
            native.bytes_per_conn,
            gateway.base_kib,
            native.base_kib
        ));
    }
    md.push_str(&format!(
        "| native tokio | {:.1} | {:.0} | | 1.00× |\n",
        native.base_kib as f64 / 1024.0,
        native.bytes_per_conn,
    ));
}

/// The baseline: the straightforward tokio echo server, default runtime.
fn native_echo_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!(
            "native echo listening on tcp {}",
            listener.local_addr().unwrap()
        );
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}
