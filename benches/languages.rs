//! The echo guest in every language (Rust, C, Zig, Go, JavaScript,
//! TypeScript, Python; Go also in the WASI 0.2 world `conn-handler-sync`,
//! one instance per connection), side by side in one run, with the Rust
//! echo as the baseline:
//!
//! - component size;
//! - cold start: the compile time the gateway reports with an empty compile
//!   cache, and process start → first echoed byte;
//! - cached start: the same with the compile cache warm (a restart; what
//!   keeps a 20 MB Python component from making restarts slow);
//! - echo round trips per second: 50 connections, 64-byte messages, the
//!   same load generator as `tcp_echo` (server pinned to CPU 1 and load to
//!   CPU 0 when `taskset` is available), with server CPU per round trip.
//!
//! "First echo" is measured from spawning `sockgate run` to a 64-byte
//! message coming back on a fresh connection: compile or cache load,
//! instantiation and the listener included.
//!
//! Run: `cargo bench --bench languages` (5 s per throughput row, cached
//! start the median of 5) or `SOCKGATE_BENCH_QUICK=1 cargo bench --bench
//! languages` (1 s, median of 1). Results are printed and written to
//! `target/bench-results/languages.{md,json}`.

use sockgate_testkit::bench::{MESSAGE, Measured, measure, publish, quick};
use sockgate_testkit::guests::{guest, lang_guest};
use sockgate_testkit::os::{has_taskset, pin};
use sockgate_testkit::paths::root;
use sockgate_testkit::server::Server;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connections of the throughput row.
const CONNECTIONS: usize = 50;

/// One language's echo guest.
struct Guest {
    language: &'static str,
    component: PathBuf,
}

/// What was measured for one language.
struct Row {
    language: &'static str,
    size: u64,
    cold_compile_ms: u64,
    cold_first_echo_ms: f64,
    cached_load_ms: u64,
    cached_first_echo_ms: f64,
    echo: Measured,
}

fn main() {
    let quick = quick();
    let (duration, cached_runs) = if quick {
        (Duration::from_secs(1), 1)
    } else {
        (Duration::from_secs(5), 5)
    };
    let pinned = has_taskset();
    if pinned {
        pin(std::process::id(), "0");
    }
    let guests = [
        Guest {
            language: "Rust",
            component: guest("echo"),
        },
        Guest {
            language: "C",
            component: lang_guest("c", "echo"),
        },
        Guest {
            language: "Zig",
            component: lang_guest("zig", "echo"),
        },
        Guest {
            language: "Go",
            component: lang_guest("go", "echo"),
        },
        Guest {
            language: "Go (sync world)",
            component: lang_guest("go", "sync-echo"),
        },
        Guest {
            language: "JavaScript",
            component: lang_guest("js", "echo"),
        },
        Guest {
            language: "TypeScript",
            component: lang_guest("ts", "echo"),
        },
        Guest {
            language: "Python",
            component: lang_guest("python", "echo"),
        },
    ];
    let rows: Vec<Row> = guests
        .iter()
        .map(|guest| bench(guest, duration, cached_runs, pinned))
        .collect();
    report(&rows, duration, cached_runs, pinned);
}

fn bench(guest: &Guest, duration: Duration, cached_runs: usize, pinned: bool) -> Row {
    let size = std::fs::metadata(&guest.component)
        .unwrap_or_else(|e| panic!("{}: {e}", guest.component.display()))
        .len();
    let cache = root().join("target/bench-languages-cache").join(
        guest
            .language
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
    );
    // An empty compile cache: the first start compiles.
    let _ = std::fs::remove_dir_all(&cache);
    let (cold_compile_ms, cold_first_echo_ms) = start(&guest.component, &cache, false);
    let mut cached: Vec<(u64, f64)> = (0..cached_runs)
        .map(|_| start(&guest.component, &cache, true))
        .collect();
    cached.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (cached_load_ms, cached_first_echo_ms) = cached[cached.len() / 2];

    let server = Server::sockgate(&guest.component, &cache, pinned);
    let echo = measure(&server, CONNECTIONS, duration);
    drop(server);
    eprintln!(
        "{}: {} KiB, cold {cold_first_echo_ms:.0} ms, cached {cached_first_echo_ms:.0} ms, \
         {:.0} rt/s",
        guest.language,
        size.div_ceil(1024),
        echo.round_trips_per_sec
    );
    Row {
        language: guest.language,
        size,
        cold_compile_ms,
        cold_first_echo_ms,
        cached_load_ms,
        cached_first_echo_ms,
        echo,
    }
}

/// Starts the gateway on `component` with compile cache `cache` (unpinned:
/// compiling uses every core), expecting a compile or a cache hit, and
/// returns the load time it reports and the milliseconds from spawning it
/// to the first echoed message.
fn start(component: &Path, cache: &Path, expect_cached: bool) -> (u64, f64) {
    let server = Server::sockgate(component, cache, false);
    let mut stream = std::net::TcpStream::connect(server.addr).expect("cannot connect");
    stream.set_nodelay(true).unwrap();
    let message = [7u8; MESSAGE];
    stream.write_all(&message).unwrap();
    let mut back = [0u8; MESSAGE];
    stream.read_exact(&mut back).unwrap();
    let first_echo = server.started.elapsed();
    assert_eq!(back, message, "the guest echoed other bytes");
    let line = &server.ready_line;
    let (cached, load_ms) = load_time(line).unwrap_or_else(|| panic!("no load time in: {line}"));
    assert_eq!(
        cached, expect_cached,
        "unexpected compile cache use: {line}"
    );
    (load_ms, first_echo.as_secs_f64() * 1e3)
}

/// Whether the app line says `loaded from compile cache` (or `compiled`),
/// and the milliseconds it took: `[…, compiled in 812 ms]`.
fn load_time(line: &str) -> Option<(bool, u64)> {
    let (_, tail) = line.rsplit_once(" in ")?;
    let ms = tail.strip_suffix(" ms]")?.parse().ok()?;
    Some((line.contains("loaded from compile cache"), ms))
}

fn report(rows: &[Row], duration: Duration, cached_runs: usize, pinned: bool) {
    let rust = rows
        .iter()
        .find(|r| r.language == "Rust")
        .expect("the Rust baseline row");
    let mut md = format!(
        "Echo guest per language. Start: `sockgate run` spawned → first {MESSAGE}-byte echo \
         (cached: median of {cached_runs}); compile/load: as the gateway reports it. Echo: \
         {CONNECTIONS} connections, {MESSAGE}-byte messages, {} s, {}. Ratios are to Rust.\n\n",
        duration.as_secs(),
        if pinned {
            "server pinned to CPU 1, load generator to CPU 0"
        } else {
            "not pinned (taskset missing)"
        }
    );
    md.push_str(
        "| language | component | cold: compile | cold: first echo | cached: load | \
         cached: first echo | echo rt/s | vs Rust | server CPU µs/rt |\n",
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut json = Vec::new();
    for row in rows {
        md.push_str(&format!(
            "| {} | {} ({}) | {} ms | {:.0} ms | {} ms | {:.0} ms ({}) | {:.0} | {:.2}× | {:.2} |\n",
            row.language,
            human_size(row.size),
            ratio(row.size as f64 / rust.size as f64),
            row.cold_compile_ms,
            row.cold_first_echo_ms,
            row.cached_load_ms,
            row.cached_first_echo_ms,
            ratio(row.cached_first_echo_ms / rust.cached_first_echo_ms),
            row.echo.round_trips_per_sec,
            row.echo.round_trips_per_sec / rust.echo.round_trips_per_sec,
            row.echo.server_cpu_us_per_round_trip,
        ));
        json.push(format!(
            "{{\"language\":\"{}\",\"component_bytes\":{},\"cold_compile_ms\":{},\
             \"cold_first_echo_ms\":{:.1},\"cached_load_ms\":{},\"cached_first_echo_ms\":{:.1},\
             \"echo_connections\":{CONNECTIONS},\"echo_rt_per_s\":{:.1},\
             \"echo_vs_rust\":{:.3},\"server_cpu_us_per_rt\":{:.3}}}",
            row.language,
            row.size,
            row.cold_compile_ms,
            row.cold_first_echo_ms,
            row.cached_load_ms,
            row.cached_first_echo_ms,
            row.echo.round_trips_per_sec,
            row.echo.round_trips_per_sec / rust.echo.round_trips_per_sec,
            row.echo.server_cpu_us_per_round_trip,
        ));
    }
    publish("languages", &md, &json);
}

/// `0.18×`, `2.5×`, `223×`: two significant digits or so.
fn ratio(x: f64) -> String {
    if x < 1.0 {
        format!("{x:.2}×")
    } else if x < 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.0}×")
    }
}

/// `74 KiB`, `21.9 MiB`.
fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}
