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

use common::{build_guest, has_taskset, pin, process_cpu, root};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MESSAGE: usize = 64;

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
        let native = Server::native(pinned);
        let native_result = measure(&native, connections, duration);
        drop(native);
        let gateway = Server::sockgate(&echo, &cache, pinned);
        let gateway_result = measure(&gateway, connections, duration);
        drop(gateway);
        rows.push((connections, gateway_result, native_result));
    }
    report(&rows, duration, pinned);
}

/// Round trips per second and server CPU microseconds per round trip.
#[derive(Debug, Clone, Copy)]
struct Measured {
    round_trips_per_sec: f64,
    server_cpu_us_per_round_trip: f64,
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

/// Drives `connections` ping-pong connections against `server` for
/// `duration` (after a warm-up) and measures.
fn measure(server: &Server, connections: usize, duration: Duration) -> Measured {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let stream = TcpStream::connect(server.addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (count, stop) = (count.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut stream = stream;
                let message = [7u8; MESSAGE];
                let mut back = [0u8; MESSAGE];
                while !stop.load(Ordering::Relaxed) {
                    stream.write_all(&message).await.unwrap();
                    stream.read_exact(&mut back).await.unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // warm-up
        let cpu_before = process_cpu(server.pid());
        let count_before = count.load(Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(duration).await;
        let round_trips = count.load(Ordering::Relaxed) - count_before;
        let elapsed = started.elapsed();
        let cpu = process_cpu(server.pid()) - cpu_before;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
        Measured {
            round_trips_per_sec: round_trips as f64 / elapsed.as_secs_f64(),
            server_cpu_us_per_round_trip: cpu.as_secs_f64() * 1e6 / round_trips as f64,
        }
    })
}

/// A server process under test.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn native(pinned: bool) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut command = Command::new(exe);
        command.arg("native-echo-server");
        Self::spawn(command, pinned, "native echo listening on ")
    }

    fn sockgate(component: &Path, cache: &Path, pinned: bool) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
        command
            .arg("run")
            .arg(component)
            .args(["--listen", "127.0.0.1:0", "--cache-dir"])
            .arg(cache)
            .env("RUST_LOG", "warn");
        Self::spawn(command, pinned, "app echo listening on tcp ")
    }

    fn spawn(mut command: Command, pinned: bool, ready_prefix: &str) -> Self {
        command
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("cannot start server");
        if pinned {
            pin(child.id(), "1");
        }
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before it was ready")
                .unwrap();
            if let Some(rest) = line.strip_prefix(ready_prefix) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
