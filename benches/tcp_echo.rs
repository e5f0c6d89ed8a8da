//! TCP echo round trips: sockgate serving the Rust `echo` guest next to a
//! native tokio echo server, measured in the same run with the same load
//! generator.
//!
//! Each of N connections sends a 64-byte message and waits for it to come
//! back, as fast as it can. Both servers run as separate processes; when
//! `taskset` is available the server is pinned to CPU 1 and the load
//! generator to CPU 0, so the figures compare one server core each. Server
//! CPU per round trip comes from the server's /proc/<pid>/stat.
//!
//! Run: `cargo bench --bench tcp_echo` (full: 5 s per row) or
//! `SOCKGATE_BENCH_QUICK=1 cargo bench --bench tcp_echo` (1 s per row).
//! Results are printed and written to `target/bench-results/tcp_echo.{md,json}`.

#[path = "common/mod.rs"]
mod common;

use common::{MESSAGE, Measured, Server, build_guest, has_taskset, measure, pin, root};

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Starts the native tokio echo server (this executable, as a child).
fn native_server(pinned: bool) -> Server {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    command.arg("native-echo-server");
    Server::spawn(command, pinned, "native echo listening on ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("native-echo-server") {
        native_echo_server();
        return;
    }
    let quick = std::env::var_os("SOCKGATE_BENCH_QUICK").is_some();
    let duration = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let connection_counts: &[usize] = &[1, 50, 500];
    let pinned = has_taskset();
    if pinned {
        pin(std::process::id(), "0");
    }

    let echo = build_guest("echo");
    let cache = root().join("target/bench-cache");
    let mut rows = Vec::new();
    for &connections in connection_counts {
        let native = native_server(pinned);
        let native_result = measure(&native, connections, duration);
        drop(native);
        let gateway = Server::sockgate(&echo, &cache, pinned);
        let gateway_result = measure(&gateway, connections, duration);
        drop(gateway);
        rows.push((connections, gateway_result, native_result));
    }
    report(&rows, duration, pinned);
}

fn report(rows: &[(usize, Measured, Measured)], duration: Duration, pinned: bool) {
    let mut md = String::new();
    md.push_str(&format!(
        "TCP echo, {MESSAGE}-byte messages, {} s per row, {}\n\n",
        duration.as_secs(),
        if pinned {
            "server pinned to CPU 1, load generator to CPU 0"
        } else {
            "not pinned (taskset missing)"
        }
    ));
    md.push_str("| connections | sockgate rt/s | native tokio rt/s | ratio | sockgate CPU µs/rt | native CPU µs/rt |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|\n");
    let mut json = Vec::new();
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
            "{{\"connections\":{connections},\"sockgate_rt_per_s\":{:.1},\"native_rt_per_s\":{:.1},\
             \"sockgate_cpu_us_per_rt\":{:.3},\"native_cpu_us_per_rt\":{:.3}}}",
            gateway.round_trips_per_sec,
            native.round_trips_per_sec,
            gateway.server_cpu_us_per_round_trip,
            native.server_cpu_us_per_round_trip,
        ));
    }
    common::publish("tcp_echo", &md, &json);
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
            "native echo listening on {}",
            listener.local_addr().unwrap()
        );
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
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
