//! What CPU supervision does for the tenants of a gateway, and what it
//! costs. Three tables:
//!
//! 1. **Neighbours under attack**: a real `sockgate serve` with the `echo`
//!    app and two `sync-hostile` apps (`cpu_budget_ms = 50`). A client
//!    makes one 64-byte round trip with the echo app every millisecond
//!    while K connections spin — each connection of a `conn-handler-sync`
//!    app has an instance of its own, so K guests compute at once; each is
//!    killed at its budget and reconnects at once — over one hostile app or
//!    spread over both. The echo app's p50 / p99 / max round trip, beside
//!    the same figures with no attack, and the CPU time the hypervisor
//!    took from the machine during the row (on a VM, a stall of the whole
//!    machine looks like a slow neighbour: the max is judged beside it).
//! 2. **Time to kill** a connection computing forever, per loop shape
//!    (integer, float, memory-bound, recursive, a cheap import in a loop;
//!    see `guests/hostile/src/spin.rs`), with `cpu_budget_ms = 50`: the CPU
//!    time the gateway's threads used from the command to the close (from
//!    /proc/<pid>/task/*/schedstat; all but the epoch ticker's), and the
//!    wall time, median of the runs;
//!    in the shared world (`hostile`, one instance) and the per-connection
//!    world (`sync-hostile`).
//! 3. **Cost**: a CPU-bound request (20 M rounds of xorshift in the guest)
//!    and a 64-byte round trip through the component boundary (in-memory
//!    duplex, no sockets), with supervision off and on.
//!
//! `SOCKGATE_BENCH_COMPARE_BIN=<another sockgate binary>` runs tables 1
//! and 2 against that build too (before/after figures from the same run).
//!
//! Run: `cargo bench --bench supervision` (`SOCKGATE_BENCH_QUICK=1` for a
//! short run). Results also go to `target/bench-results/supervision.{md,json}`.

use sockgate_testkit::bench::{publish, quick};
use sockgate_testkit::guests::guest;
use sockgate_testkit::in_memory::connect_in_memory;
use sockgate_testkit::os::{host_steal, threads_cpu};
use sockgate_testkit::paths::{bench_cache_dir, sockgate_binary};
use sockgate_testkit::server::sockgate_serve_apps;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sockgate_host::apps::app::App;
use sockgate_host::limits::AppLimits;
use sockgate_host::runtime::Runtime;
use sockgate_host::runtime::engine::Supervision;
use sockgate_host::runtime::instance::InstanceSettings;
use sockgate_host::runtime::load::load_component;
use sockgate_host::tenant::conns::ConnTracker;
use sockgate_host::tenant::outbound::OutboundPolicy;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::net::TcpStream;

const COMPUTE_ROUNDS: u64 = 20_000_000;
/// Round trips the neighbour makes before each measured window.
const WARM_UP_ROUND_TRIPS: usize = 20;
const BUDGET_MS: u64 = 50;
const SHAPES: [&str; 5] = [
    "spin",
    "spin-float",
    "spin-memory",
    "spin-recurse",
    "spin-clock",
];

fn main() {
    let quick = quick();
    let this = sockgate_binary();
    let compare = std::env::var_os("SOCKGATE_BENCH_COMPARE_BIN").map(PathBuf::from);
    let guests = Guests {
        echo: guest("echo"),
        hostile: guest("hostile"),
        sync_hostile: guest("sync-hostile"),
    };
    let mut md = String::new();
    let mut json = Vec::new();

    let window = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(4)
    };
    let mut builds = vec![("this build", this.as_path())];
    if let Some(other) = &compare {
        builds.push(("compared build", other.as_path()));
    }
    md.push_str(&format!(
        "Neighbours under attack: the echo app's round trips (64 bytes, one per ms after {WARM_UP_ROUND_TRIPS} warm-up ones, \
         {} s per row) while K connections of `sync-hostile` apps compute forever \
         (cpu_budget_ms = {BUDGET_MS}; each killed connection reconnects at once). \
         Host steal: CPU time the hypervisor took from this VM during the row (/proc/stat, \
         10 ms units; a max near it is the host's, not the gateway's)\n\n\
         | build | attack | p50 ms | p99 ms | max ms | spinners killed | host steal ms |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
        window.as_secs()
    ));
    for (label, binary) in &builds {
        for row in neighbours(binary, &guests, window) {
            md.push_str(&format!(
                "| {label} | {} | {:.3} | {:.3} | {:.1} | {} | {} |\n",
                row.attack,
                ms(row.p50),
                ms(row.p99),
                ms(row.max),
                row.kills,
                row.steal
                    .map_or_else(|| "n/a".to_owned(), |steal| format!("{:.0}", ms(steal)))
            ));
            json.push(format!(
                "{{\"table\":\"neighbours\",\"build\":\"{label}\",\"attack\":\"{}\",\
                 \"p50_ms\":{:.4},\"p99_ms\":{:.4},\"max_ms\":{:.3},\"kills\":{},\
                 \"steal_ms\":{}}}",
                row.attack,
                ms(row.p50),
                ms(row.p99),
                ms(row.max),
                row.kills,
                row.steal
                    .map_or_else(|| "null".to_owned(), |steal| format!("{:.0}", ms(steal)))
            ));
        }
    }

    let runs = if quick { 3 } else { 5 };
    md.push_str(&format!(
        "\nTime to kill a connection computing forever, cpu_budget_ms = {BUDGET_MS}: CPU \
         time of the gateway's threads from the command to the close (median of {runs}, \
         min–max), and wall time (median)\n\n\
         | build | loop shape | shared world: CPU ms | wall ms | per-connection world: CPU ms \
         | wall ms |\n|---|---|---:|---:|---:|---:|\n"
    ));
    for (label, binary) in &builds {
        for shape in SHAPES {
            let shared = kill_times(binary, &guests.hostile, shape, runs);
            let per_conn = kill_times(binary, &guests.sync_hostile, shape, runs);
            md.push_str(&format!(
                "| {label} | `{shape}` | {} | {:.0} | {} | {:.0} |\n",
                shared.cpu_range(),
                ms(shared.wall),
                per_conn.cpu_range(),
                ms(per_conn.wall),
            ));
            json.push(format!(
                "{{\"table\":\"kill\",\"build\":\"{label}\",\"shape\":\"{shape}\",\
                 \"budget_ms\":{BUDGET_MS},\"shared_cpu_ms\":{:.2},\"shared_wall_ms\":{:.2},\
                 \"per_connection_cpu_ms\":{:.2},\"per_connection_wall_ms\":{:.2}}}",
                ms(shared.cpu),
                ms(shared.wall),
                ms(per_conn.cpu),
                ms(per_conn.wall),
            ));
        }
    }

    let (compute_runs, echo_rts) = if quick { (3, 2_000) } else { (9, 20_000) };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let costs: Vec<Cost> = [("off", Supervision::Off), ("on", Supervision::On)]
        .into_iter()
        .map(|(mode, supervision)| {
            runtime.block_on(cost(mode, supervision, &guests, compute_runs, echo_rts))
        })
        .collect();
    md.push_str(&format!(
        "\nWhat supervision costs, in process: compute = {COMPUTE_ROUNDS} xorshift rounds in \
         the guest (median of {compute_runs}); echo rt = a 64-byte round trip over an \
         in-memory duplex (mean of {echo_rts})\n\n\
         | supervision | compute ms | overhead | echo rt µs | overhead |\n\
         |---|---:|---:|---:|---:|\n"
    ));
    let (base, base_rt) = (costs[0].compute, costs[0].echo_rt);
    for row in &costs {
        md.push_str(&format!(
            "| {} | {:.1} | {:+.1}% | {:.2} | {:+.1}% |\n",
            row.mode,
            ms(row.compute),
            (row.compute.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0,
            row.echo_rt.as_secs_f64() * 1e6,
            (row.echo_rt.as_secs_f64() / base_rt.as_secs_f64() - 1.0) * 100.0,
        ));
        json.push(format!(
            "{{\"table\":\"cost\",\"supervision\":\"{}\",\"compute_ms\":{:.3},\
             \"echo_rt_us\":{:.3}}}",
            row.mode,
            ms(row.compute),
            row.echo_rt.as_secs_f64() * 1e6
        ));
    }
    publish("supervision", &md, &json);
}

struct Guests {
    echo: PathBuf,
    hostile: PathBuf,
    sync_hostile: PathBuf,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The echo app's round trips during one attack.
struct Neighbour {
    attack: String,
    p50: Duration,
    p99: Duration,
    max: Duration,
    kills: u64,
    /// CPU time the hypervisor took from the machine during the row.
    steal: Option<Duration>,
}

/// Table 1 for one build of the gateway.
fn neighbours(binary: &Path, guests: &Guests, window: Duration) -> Vec<Neighbour> {
    let hostile = |name: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\ncomponent = \"{}\"\nlisten = \"127.0.0.1:0\"\n\
             [app.limits]\ncpu_budget_ms = {BUDGET_MS}\n\n",
            guests.sync_hostile.display()
        )
    };
    let apps = format!(
        "[[app]]\nname = \"echo\"\ncomponent = \"{}\"\nlisten = \"127.0.0.1:0\"\n\
         instances = 1\n\n{}{}",
        guests.echo.display(),
        hostile("hostile-a"),
        hostile("hostile-b"),
    );
    let (server, addrs) = sockgate_serve_apps(binary, "supervision-neighbours", &apps);
    let echo = addrs["echo"];
    let one = vec![addrs["hostile-a"]];
    let two = vec![addrs["hostile-a"], addrs["hostile-b"]];
    let mut rows = vec![measure_neighbour("idle".into(), echo, &[], 0, window)];
    for (apps, targets) in [("one app", &one), ("two apps", &two)] {
        for k in [1, 2, 4, 8] {
            let attack = format!("K = {k}, {apps}");
            rows.push(measure_neighbour(attack, echo, targets, k, window));
        }
    }
    drop(server);
    rows
}

/// The echo app's round trips over `window` while `k` connections spread
/// over `targets` spin.
fn measure_neighbour(
    attack: String,
    echo: SocketAddr,
    targets: &[SocketAddr],
    k: usize,
    window: Duration,
) -> Neighbour {
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let attackers = (k > 0).then(|| {
        let (targets, stop, kills) = (targets.to_vec(), stop.clone(), kills.clone());
        std::thread::spawn(move || {
            current_thread().block_on(async {
                let spinners = (0..k).map(|i| {
                    let target = targets[i % targets.len()];
                    tokio::spawn(spin_again_and_again(target, stop.clone(), kills.clone()))
                });
                for spinner in spinners.collect::<Vec<_>>() {
                    let _ = spinner.await;
                }
            })
        })
    });
    if k > 0 {
        // Every spinner computing before the measurement starts.
        std::thread::sleep(Duration::from_millis(300));
    }
    let kills_before = kills.load(Ordering::Relaxed);
    let steal_before = host_steal();
    let mut rtts = current_thread().block_on(round_trips(echo, window));
    let steal = host_steal()
        .zip(steal_before)
        .map(|(after, before)| after - before);
    let kills = kills.load(Ordering::Relaxed) - kills_before;
    stop.store(true, Ordering::Relaxed);
    if let Some(attackers) = attackers {
        attackers.join().unwrap();
    }
    rtts.sort();
    let at = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
    Neighbour {
        attack,
        p50: at(0.5),
        p99: at(0.99),
        max: *rtts.last().unwrap(),
        kills,
        steal,
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Connects to `target`, makes the guest compute forever, waits for the
/// gateway to close the connection, and does it again until `stop`.
async fn spin_again_and_again(target: SocketAddr, stop: Arc<AtomicBool>, kills: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(target).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if stream.write_all(b"spin\n").await.is_err() {
            continue;
        }
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    kills.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Ok(_)) | Err(_) => {}
            }
        }
    }
}

/// One 64-byte round trip with `echo` every millisecond for `window`.
async fn round_trips(echo: SocketAddr, window: Duration) -> Vec<Duration> {
    let mut stream = TcpStream::connect(echo).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let message = [7u8; 64];
    let mut back = [0u8; 64];
    // Warm-up, not counted: the first round trips of a connection include
    // the gateway accepting and routing it, not what a neighbour's attack
    // does to an established connection (the same for every row).
    for _ in 0..WARM_UP_ROUND_TRIPS {
        stream.write_all(&message).await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
    }
    let mut rtts = Vec::new();
    let end = Instant::now() + window;
    let mut next = tokio::time::Instant::now();
    while Instant::now() < end {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        stream.write_all(&message).await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
        rtts.push(started.elapsed());
        next += Duration::from_millis(1);
        next = next.max(tokio::time::Instant::now());
    }
    rtts
}

/// Time to kill, over runs.
struct Kill {
    cpu: Duration,
    cpu_min: Duration,
    cpu_max: Duration,
    wall: Duration,
}

impl Kill {
    fn cpu_range(&self) -> String {
        format!(
            "{:.1} ({:.1}–{:.1})",
            ms(self.cpu),
            ms(self.cpu_min),
            ms(self.cpu_max)
        )
    }
}

/// Table 2: `runs` connections to a fresh gateway serving `guest`, each
/// sent `shape` once it answered.
fn kill_times(binary: &Path, guest: &Path, shape: &str, runs: usize) -> Kill {
    let apps = format!(
        "[[app]]\nname = \"hostile\"\ncomponent = \"{}\"\nlisten = \"127.0.0.1:0\"\n\
         instances = 1\n[app.limits]\ncpu_budget_ms = {BUDGET_MS}\n",
        guest.display()
    );
    let (server, addrs) = sockgate_serve_apps(binary, "supervision-kill", &apps);
    let addr = addrs["hostile"];
    let pid = server.pid();
    let (mut cpus, mut walls) = (Vec::new(), Vec::new());
    current_thread().block_on(async {
        for _ in 0..runs {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (rd, mut wr) = stream.into_split();
            let mut rd = BufReader::new(rd);
            // Served (a live instance, after any crash-loop back-off)
            // before the clocks start.
            wr.write_all(b"hello\n").await.unwrap();
            let mut line = String::new();
            rd.read_line(&mut line).await.unwrap();
            assert_eq!(line, "hello\n");
            let cpu = threads_cpu(pid, "sockgate-epoch");
            let started = Instant::now();
            wr.write_all(format!("{shape}\n").as_bytes()).await.unwrap();
            let mut rest = Vec::new();
            let _ = rd.read_to_end(&mut rest).await;
            walls.push(started.elapsed());
            cpus.push(threads_cpu(pid, "sockgate-epoch").saturating_sub(cpu));
        }
    });
    drop(server);
    cpus.sort();
    walls.sort();
    Kill {
        cpu: cpus[cpus.len() / 2],
        cpu_min: cpus[0],
        cpu_max: *cpus.last().unwrap(),
        wall: walls[walls.len() / 2],
    }
}

/// Table 3, one row.
struct Cost {
    mode: &'static str,
    compute: Duration,
    echo_rt: Duration,
}

async fn cost(
    mode: &'static str,
    supervision: Supervision,
    guests: &Guests,
    compute_runs: usize,
    echo_rts: usize,
) -> Cost {
    let cache = bench_cache_dir();
    let runtime = Runtime::with_supervision(cache, supervision).unwrap();
    let tracker = ConnTracker::new(1000);
    let start = |path: &Path| {
        let loaded = load_component(&runtime, path).unwrap();
        let settings = InstanceSettings::new(
            "bench",
            loaded.pre,
            AppLimits {
                // Large enough never to trap.
                cpu_budget_ms: 60_000,
                wall_budget_ms: 60_000,
                ..AppLimits::default()
            },
            OutboundPolicy::default(),
            supervision,
            tracker.clone(),
        );
        App::start("bench", settings, 1)
    };

    // The round trips first: the computation below makes the guest yield
    // its slices, after which the epoch ticker runs fast for a second
    // (`ticker::FAST_TICKS_FOR`), which is not the steady state measured here.
    let echoer = start(&guests.echo);
    let (mut reader, mut writer) = connect(&echoer);
    let message = [b'x'; 64];
    let mut back = [0u8; 64];
    let started = Instant::now();
    for _ in 0..echo_rts {
        writer.write_all(&message).await.unwrap();
        reader.read_exact(&mut back).await.unwrap();
    }
    let echo_rt = started.elapsed() / echo_rts as u32;

    let worker = start(&guests.hostile);
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
    Cost {
        mode,
        compute,
        echo_rt,
    }
}

type Reader = BufReader<tokio::io::ReadHalf<DuplexStream>>;
type Writer = tokio::io::WriteHalf<DuplexStream>;

/// Hands the app one end of an in-memory duplex; returns the other.
fn connect(app: &App) -> (Reader, Writer) {
    let (rd, wr) = tokio::io::split(connect_in_memory(app, 64 * 1024));
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
