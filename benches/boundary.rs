//! Host↔guest per message: the cost of one small message's round trip
//! through the component boundary, with no sockets. A 64-byte message
//! goes into an in-memory duplex, the echo guest (one long-lived instance
//! with the gateway's supervision: time slices and CPU budgets) reads it
//! through its `rx` stream and writes it back through the stream it returned, and the
//! client reads it back. The baseline is the same duplex round trip with a
//! tokio echo task. Both run on one current-thread runtime, so the figure
//! is the CPU cost of the path, not of waking another thread.
//!
//! The original design measured 452 ns per message; the table prints that
//! mark beside today's figure.
//!
//! A second table does the same at batch sizes 1, 8 and 64 — that many
//! connections each send a message before any reply is read — for the
//! event world (`events-echo`, `conn-events`: one guest call per batch of
//! socket events; and `events-echo-v2`, the same on the contract's 0.2.0,
//! a batch's bytes in one buffer), the stream world (`echo`) and native
//! tokio tasks, so what batching saves per message is seen beside what it
//! costs without.
//!
//! Run: `cargo bench --bench boundary` (`SOCKGATE_BENCH_QUICK=1` for a short
//! run). Results also go to `target/bench-results/boundary.{md,json}`.
//! `SOCKGATE_BOUNDARY_PROFILE=N` runs N guest round trips and nothing else,
//! for a profiler; with `SOCKGATE_BOUNDARY_PROFILE_BATCH=B`, N batches of B
//! messages through the event world instead (its 0.2.0 with
//! `SOCKGATE_BOUNDARY_PROFILE_V2=1`).

use sockgate_testkit::bench::{Samples, criterion, publish};
use sockgate_testkit::guests::guest;
use sockgate_testkit::in_memory::connect_in_memory;
use sockgate_testkit::paths::bench_cache_dir;

use std::time::Instant;

use sockgate_host::apps::app::App;
use sockgate_host::limits::AppLimits;
use sockgate_host::runtime::Runtime;
use sockgate_host::runtime::engine::Supervision;
use sockgate_host::runtime::instance::InstanceSettings;
use sockgate_host::runtime::load::load_component;
use sockgate_host::tenant::conns::ConnTracker;
use sockgate_host::tenant::outbound::OutboundPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

/// The original design's figure for one message through the boundary.
const MARK_NS: f64 = 452.0;
const MESSAGE: usize = 64;
/// The duplex's buffer, like a socket's.
const DUPLEX_BUFFER: usize = 64 * 1024;

fn main() {
    // Profiling only: another build of the echo guest.
    let echo = std::env::var_os("SOCKGATE_BOUNDARY_GUEST")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| guest("echo"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Profiling only: `SOCKGATE_BOUNDARY_SUPERVISION=none` to see what
    // supervision costs (the table always uses the gateway's).
    let supervision = match std::env::var("SOCKGATE_BOUNDARY_SUPERVISION").as_deref() {
        Ok("none") => Supervision::Off,
        _ => Supervision::On,
    };
    let gateway = Runtime::with_supervision(bench_cache_dir(), supervision).unwrap();
    let app = start_app(&gateway, &runtime, "echo", &echo);
    let events_app = start_app(&gateway, &runtime, "events-echo", &guest("events-echo"));
    // The same echo on the event world's 0.2.0 (a batch's bytes in one
    // buffer).
    let packed_app = start_app(
        &gateway,
        &runtime,
        "events-echo-v2",
        &guest("events-echo-v2"),
    );

    // For profilers (`valgrind --tool=callgrind`, `perf`): a fixed number
    // of guest round trips and nothing else, so two runs with different
    // counts give the cost of one.
    if let Some(count) = std::env::var("SOCKGATE_BOUNDARY_PROFILE")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        // `SOCKGATE_BOUNDARY_PROFILE_BATCH=B`: the event world instead, B
        // connections per batch (so `count` batches of B messages).
        if let Some(batch) = std::env::var("SOCKGATE_BOUNDARY_PROFILE_BATCH")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        {
            // `SOCKGATE_BOUNDARY_PROFILE_V2=1`: the 0.2.0 echo.
            let app = match std::env::var_os("SOCKGATE_BOUNDARY_PROFILE_V2") {
                Some(_) => &packed_app,
                None => &events_app,
            };
            let mut conns: Vec<_> = (0..batch).map(|_| connect(app)).collect();
            let started = Instant::now();
            runtime.block_on(async {
                for _ in 0..count {
                    batch_round_trip(&mut conns).await;
                }
            });
            eprintln!(
                "{count} event-world batches of {batch} in {:?}",
                started.elapsed()
            );
            return;
        }
        let (mut rd, mut wr) = connect(&app);
        let started = Instant::now();
        runtime.block_on(async {
            for _ in 0..count {
                round_trip(&mut rd, &mut wr).await;
            }
        });
        eprintln!("{count} guest round trips in {:?}", started.elapsed());
        return;
    }

    let mut c = criterion();
    let mut group = c.benchmark_group("boundary");
    group.throughput(criterion::Throughput::Elements(1));

    let native = Samples::default();
    let (mut rd, mut wr) = native_echo(&runtime);
    group.bench_function("native tokio echo task", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    round_trip(&mut rd, &mut wr).await;
                }
                native.record(iters, started.elapsed())
            })
        })
    });

    let guest = Samples::default();
    let (mut rd, mut wr) = connect(&app);
    group.bench_function("sockgate echo guest", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    round_trip(&mut rd, &mut wr).await;
                }
                guest.record(iters, started.elapsed())
            })
        })
    });

    // Per message at batch sizes: `batch` connections each send one
    // message, then every reply is read.
    let mut batched = Vec::new();
    for batch in BATCHES {
        let mut row = Vec::new();
        for (path, make) in [
            ("native", Path::Native),
            ("conn-handler", Path::Guest(&app)),
            ("conn-events", Path::Guest(&events_app)),
            ("conn-events 0.2.0", Path::Guest(&packed_app)),
        ] {
            let samples = Samples::default();
            let mut conns: Vec<_> = (0..batch)
                .map(|_| match make {
                    Path::Native => native_echo(&runtime),
                    Path::Guest(app) => connect(app),
                })
                .collect();
            group.throughput(criterion::Throughput::Elements(batch as u64));
            group.bench_function(format!("{path}, batch {batch}"), |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iters {
                            batch_round_trip(&mut conns).await;
                        }
                        samples.record(iters * batch as u64, started.elapsed())
                    })
                })
            });
            row.push(samples.median_ns());
        }
        batched.push((batch, row));
    }
    group.finish();
    c.final_summary();

    let (guest, native) = (guest.median_ns(), native.median_ns());
    let md = format!(
        "Host↔guest per message: {MESSAGE}-byte round trip over an in-memory duplex, one \
         current-thread runtime, median of criterion's samples\n\n\
         | path | ns per round trip | vs native | original design's mark |\n\
         |---|---:|---:|---:|\n\
         | sockgate: echo guest, supervised | {guest:.0} | {:.2}× | {MARK_NS:.0} ns ({:.2}× of it) |\n\
         | native tokio echo task | {native:.0} | 1.00× | |\n",
        guest / native,
        guest / MARK_NS,
    );
    let mut md = md;
    let mut json = vec![format!(
        "{{\"sockgate_ns_per_rt\":{guest:.1},\"native_ns_per_rt\":{native:.1},\"mark_ns\":{MARK_NS}}}"
    )];
    md.push_str(&format!(
        "\nPer {MESSAGE}-byte message at batch sizes (that many connections each send one \
         message before the replies are read), ns per message; target for the event world: \
         ≤ 300 ns at batch 64 (the original design: {MARK_NS:.0} ns)\n\n\
         | batch | conn-events 0.1.0 | conn-events 0.2.0 | conn-handler | native tokio | 0.1.0 vs \
         native | 0.2.0 vs native | 0.1.0 vs conn-handler |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n"
    ));
    for (batch, row) in &batched {
        let [native, streams, events, packed] = row[..] else {
            continue;
        };
        md.push_str(&format!(
            "| {batch} | {events:.0} | {packed:.0} | {streams:.0} | {native:.0} | {:.2}× | {:.2}× \
             | {:.2}× |\n",
            events / native,
            packed / native,
            events / streams,
        ));
        json.push(format!(
            "{{\"batch\":{batch},\"events_ns_per_msg\":{events:.1},\
             \"events_v2_ns_per_msg\":{packed:.1},\"streams_ns_per_msg\":{streams:.1},\
             \"native_ns_per_msg\":{native:.1}}}"
        ));
    }
    publish("boundary", &md, &json);
}

/// The batch sizes of the second table.
const BATCHES: [usize; 3] = [1, 8, 64];

/// Which echo a batch row measures.
#[derive(Clone, Copy)]
enum Path<'a> {
    Native,
    Guest(&'a App),
}

/// Every connection sends one message, then every reply is read.
async fn batch_round_trip(conns: &mut [(ReadHalf<DuplexStream>, WriteHalf<DuplexStream>)]) {
    let message = [b'x'; MESSAGE];
    let mut back = [0u8; MESSAGE];
    for (_, wr) in conns.iter_mut() {
        wr.write_all(&message).await.unwrap();
    }
    for (rd, _) in conns.iter_mut() {
        rd.read_exact(&mut back).await.unwrap();
    }
}

async fn round_trip(rd: &mut ReadHalf<DuplexStream>, wr: &mut WriteHalf<DuplexStream>) {
    let message = [b'x'; MESSAGE];
    let mut back = [0u8; MESSAGE];
    wr.write_all(&message).await.unwrap();
    rd.read_exact(&mut back).await.unwrap();
}

/// The baseline: a tokio task echoing one end of a duplex.
fn native_echo(
    runtime: &tokio::runtime::Runtime,
) -> (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>) {
    let (client, server) = tokio::io::duplex(DUPLEX_BUFFER);
    let (mut server_rd, mut server_wr) = tokio::io::split(server);
    runtime.spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match server_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if server_wr.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::io::split(client)
}

/// Hands the app one end of an in-memory duplex; returns the other.
fn connect(app: &App) -> (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>) {
    tokio::io::split(connect_in_memory(app, DUPLEX_BUFFER))
}

/// Loads the guest at `path` and starts app `name` on it (one instance,
/// the gateway's default limits and supervision) inside `runtime`.
fn start_app(
    gateway: &Runtime,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    path: &std::path::Path,
) -> std::sync::Arc<App> {
    let loaded = load_component(gateway, path).unwrap();
    let settings = InstanceSettings::new(
        name,
        loaded.pre,
        AppLimits::default(),
        OutboundPolicy::default(),
        gateway.supervision,
        ConnTracker::new(1000),
    );
    let _entered = runtime.enter();
    App::start(name, settings, 1)
}
