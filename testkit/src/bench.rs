//! What every benchmark does around its measurement: quick or full runs,
//! criterion's settings, per-iteration samples, the one echo load
//! generator, and writing the result table next to the printed one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::os::process_cpu;
use crate::paths::root;
use crate::server::Server;

/// Whether the benchmarks run briefly (`SOCKGATE_BENCH_QUICK=1`, as CI
/// does) rather than long enough for real figures.
pub fn quick() -> bool {
    std::env::var_os("SOCKGATE_BENCH_QUICK").is_some()
}

/// Prints the markdown table and writes it, with the JSON rows, to
/// `target/bench-results/<bench>.{md,json}`.
pub fn publish(bench: &str, markdown: &str, json_rows: &[String]) {
    println!("\n{markdown}");
    let dir = root().join("target/bench-results");
    std::fs::create_dir_all(&dir).expect("cannot create target/bench-results");
    std::fs::write(dir.join(format!("{bench}.md")), markdown).expect("cannot write results");
    std::fs::write(
        dir.join(format!("{bench}.json")),
        format!("[{}]\n", json_rows.join(",\n")),
    )
    .expect("cannot write results");
}

/// Per-iteration times recorded from criterion's `iter_custom` samples, so
/// a benchmark can put its figure in a table next to its baseline's.
#[derive(Default)]
pub struct Samples(std::cell::RefCell<Vec<f64>>);

impl Samples {
    /// Records one sample: `iters` iterations took `elapsed`.
    pub fn record(&self, iters: u64, elapsed: Duration) -> Duration {
        if iters > 0 {
            self.0
                .borrow_mut()
                .push(elapsed.as_secs_f64() / iters as f64);
        }
        elapsed
    }

    /// The median time per iteration over the samples, in nanoseconds.
    pub fn median_ns(&self) -> f64 {
        let mut samples = self.0.borrow().clone();
        if samples.is_empty() {
            return f64::NAN;
        }
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2] * 1e9
    }
}

/// A criterion configuration: short in quick mode (CI), long enough for
/// stable figures otherwise.
pub fn criterion() -> criterion::Criterion {
    let c = criterion::Criterion::default().configure_from_args();
    if quick() {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500))
    } else {
        c.sample_size(50)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
    }
}

/// Bytes per echo message in the round-trip benchmarks.
pub const MESSAGE: usize = 64;

/// Round trips per second and server CPU microseconds per round trip.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Completed request/response pairs per second, over all connections.
    pub round_trips_per_sec: f64,
    /// The server process's CPU time (user + system) per round trip.
    pub server_cpu_us_per_round_trip: f64,
}

/// Drives `connections` ping-pong connections (each sends a
/// [`MESSAGE`]-byte message and waits for it to come back, as fast as it
/// can) against `server` for `duration`, after a warm-up, and measures.
/// The one load generator of the TCP echo benchmarks, so their figures
/// compare.
pub fn measure(server: &Server, connections: usize, duration: Duration) -> Measured {
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
