//! What CPU supervision costs, and how fast it stops a spinning guest.
//!
//! The same guests run on four engines: no supervision, epoch deadlines
//! only, fuel only, and fuel plus epoch (what the gateway runs). For each:
//! - `compute`: a CPU-bound request (20 M rounds of xorshift in the guest),
//!   median wall time, and its overhead over no supervision;
//! - `echo rt`: one 64-byte round trip through the component boundary
//!   (in-memory duplex, no sockets), mean over 20 000;
//! - `time to kill`: from sending `spin` to the connection's end, with
//!   `cpu_budget_ms = 50`, median of 5.
//!
//! Run: `cargo bench --bench supervision` (`SOCKGATE_BENCH_QUICK=1` for a
//! short run). Results also go to `target/bench-results/supervision.{md,json}`.

#[path = "common/mod.rs"]
mod common;

use common::{build_guest, root};

use std::path::Path;
use std::time::{Duration, Instant};

use sockgate_host::app::App;
use sockgate_host::conns::ConnTracker;
use sockgate_host::limits::AppLimits;
use sockgate_host::outbound::OutboundPolicy;
use sockgate_host::runtime::Runtime;
use sockgate_host::runtime::engine::Supervision;
use sockgate_host::runtime::instance::InstanceSettings;
use sockgate_host::runtime::load::load_component;
use sockgate_host::runtime::supervisor::FUEL_PER_MS;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};

const COMPUTE_ROUNDS: u64 = 20_000_000;

struct Row {
    mode: &'static str,
    compute: Duration,
    echo_rt: Duration,
    kill: Option<Duration>,
}

fn main() {
    let quick = std::env::var_os("SOCKGATE_BENCH_QUICK").is_some();
    let (compute_runs, echo_rts, kills) = if quick { (3, 2_000, 2) } else { (9, 20_000, 5) };
    let hostile = build_guest("hostile");
    let echo = build_guest("echo");
    let cache = root().join("target/bench-cache");
    let modes = [
        (
            "none",
            Supervision {
                fuel: false,
                epoch: false,
            },
        ),
        (
            "epoch",
            Supervision {
                fuel: false,
                epoch: true,
            },
        ),
        (
            "fuel",
            Supervision {
                fuel: true,
                epoch: false,
            },
        ),
        (
            "fuel+epoch",
            Supervision {
                fuel: true,
                epoch: true,
            },
        ),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows: Vec<Row> = modes
        .iter()
        .map(|&(mode, supervision)| {
            runtime.block_on(measure(
                mode,
                supervision,
                &cache,
                &hostile,
                &echo,
                (compute_runs, echo_rts, kills),
            ))
        })
        .collect();
    report(&rows);
}

async fn measure(
    mode: &'static str,
    supervision: Supervision,
    cache: &Path,
    hostile: &Path,
    echo: &Path,
    (compute_runs, echo_rts, kills): (usize, usize, usize),
) -> Row {
    let runtime = Runtime::with_supervision(cache.to_owned(), supervision).unwrap();
    let tracker = ConnTracker::new(1000);
    let start = |path: &Path, budget_ms: u64| {
        let loaded = load_component(&runtime, path).unwrap();
        let settings = InstanceSettings::new(
            "bench",
            loaded.pre,
            AppLimits {
                cpu_budget_ms: budget_ms,
                ..AppLimits::default()
            },
            OutboundPolicy::default(),
            supervision,
            tracker.clone(),
        );
        App::start("bench", settings, 1)
    };

    // CPU-bound work, with a budget large enough never to trap.
    let worker = start(hostile, 60_000);
    let (mut reader, mut writer) = connect(&worker);
    let mut times = Vec::new();
    for _ in 0..compute_runs {
        let started = Instant::now();
        let reply = ask(
            &mut reader,
            &mut writer,
            &format!("compute {COMPUTE_ROUNDS}"),
        )
        .await;
        times.push(started.elapsed());
        assert!(reply.starts_with("computed "), "{reply}");
    }
    times.sort();
    let compute = times[times.len() / 2];

    // Round trips through the component boundary.
    let echoer = start(echo, 50);
    let (mut reader, mut writer) = connect(&echoer);
    let message = [b'x'; 64];
    let mut back = [0u8; 64];
    let started = Instant::now();
    for _ in 0..echo_rts {
        writer.write_all(&message).await.unwrap();
        reader.read_exact(&mut back).await.unwrap();
    }
    let echo_rt = started.elapsed() / echo_rts as u32;

    // Time to kill a spinning guest.
    let kill = if supervision.fuel || supervision.epoch {
        let spinner = start(hostile, 50);
        let mut kill_times = Vec::new();
        for _ in 0..kills {
            let (mut reader, mut writer) = connect(&spinner);
            // Served (a live instance) before the attack starts.
            assert_eq!(ask(&mut reader, &mut writer, "hello").await, "hello");
            let started = Instant::now();
            writer.write_all(b"spin\n").await.unwrap();
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest).await;
            kill_times.push(started.elapsed());
        }
        kill_times.sort();
        Some(kill_times[kill_times.len() / 2])
    } else {
        None
    };
    Row {
        mode,
        compute,
        echo_rt,
        kill,
    }
}

type Reader = BufReader<tokio::io::ReadHalf<DuplexStream>>;
type Writer = tokio::io::WriteHalf<DuplexStream>;

/// Hands the app one end of an in-memory duplex; returns the other.
fn connect(app: &App) -> (Reader, Writer) {
    let (rd, wr) = tokio::io::split(common::connect_in_memory(app, 64 * 1024));
    (BufReader::new(rd), wr)
}

async fn ask(reader: &mut Reader, writer: &mut Writer, line: &str) -> String {
    writer
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).await.unwrap();
    reply.trim_end().to_owned()
}

fn report(rows: &[Row]) {
    let base = rows[0].compute.as_secs_f64();
    let base_rt = rows[0].echo_rt.as_secs_f64();
    let mut md = format!(
        "CPU supervision: compute = {COMPUTE_ROUNDS} xorshift rounds in the guest; echo rt = \
         64-byte round trip over an in-memory duplex; time to kill = `spin` with \
         cpu_budget_ms = 50 (fuel = {FUEL_PER_MS} per ms)\n\n\
         | supervision | compute ms | overhead | echo rt µs | overhead | time to kill ms |\n\
         |---|---:|---:|---:|---:|---:|\n"
    );
    let mut json = Vec::new();
    for row in rows {
        let compute = row.compute.as_secs_f64();
        let rt = row.echo_rt.as_secs_f64();
        let kill = row
            .kill
            .map(|k| format!("{:.1}", k.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "never".into());
        md.push_str(&format!(
            "| {} | {:.1} | {:+.1}% | {:.2} | {:+.1}% | {kill} |\n",
            row.mode,
            compute * 1e3,
            (compute / base - 1.0) * 100.0,
            rt * 1e6,
            (rt / base_rt - 1.0) * 100.0,
        ));
        json.push(format!(
            "{{\"mode\":\"{}\",\"compute_ms\":{:.3},\"echo_rt_us\":{:.3},\"kill_ms\":{}}}",
            row.mode,
            compute * 1e3,
            rt * 1e6,
            row.kill
                .map(|k| format!("{:.3}", k.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "null".into())
        ));
    }
    common::publish("supervision", &md, &json);
}
