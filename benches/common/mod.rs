//! What every benchmark shares: where the repository is, building a guest,
//! starting a server process, the echo load generator, and writing a result
//! table next to the printed one.

// Each benchmark uses part of this module.
#![allow(dead_code)]

pub mod tls;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the Rust guest `guests/<name>` and returns its component.
pub fn build_guest(name: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .current_dir(root().join("guests"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "wasm32-wasip2",
            "-p",
            name,
        ])
        .status()
        .expect("cannot run cargo");
    assert!(status.success(), "building the {name} guest failed");
    root()
        .join("guests/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

/// Builds `guests/<lang>/<name>` with guests/build-lang.sh (its real
/// toolchain, installed if missing) and returns the component
/// `guests/target/lang/<lang>-<name>.wasm`.
pub fn build_lang_guest(lang: &str, name: &str) -> PathBuf {
    let status = Command::new("bash")
        .arg(root().join("guests/build-lang.sh"))
        .arg(lang)
        .env("CARGO", env!("CARGO"))
        .status()
        .expect("cannot run guests/build-lang.sh");
    assert!(status.success(), "building the {lang} guests failed");
    root()
        .join("guests/target/lang")
        .join(format!("{lang}-{name}.wasm"))
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

/// User plus system CPU time of process `pid` so far (zero once it is gone).
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces).
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    Duration::from_millis((field(11) + field(12)) * 10)
}

/// CPU time the threads of process `pid` whose name is not `except` have
/// run so far (the first field of each `/proc/<pid>/task/<tid>/schedstat`,
/// the scheduler's own count in nanoseconds, which
/// `CLOCK_THREAD_CPUTIME_ID` also reads); far finer than
/// `/proc/<pid>/stat`'s 10 ms ticks.
pub fn threads_cpu(pid: u32, except: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim() != except)
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// Whether servers and load generators can be pinned to separate CPUs.
pub fn has_taskset() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Pins every thread of process `pid` to `cpus` (a taskset CPU list).
pub fn pin(pid: u32, cpus: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status();
}

/// Whether the benchmarks run briefly (`SOCKGATE_BENCH_QUICK=1`, as CI
/// does) rather than long enough for real figures.
pub fn quick() -> bool {
    std::env::var_os("SOCKGATE_BENCH_QUICK").is_some()
}

/// Resident memory of process `pid` in KiB (zero once it is gone).
pub fn process_rss_kib(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of process `pid`'s wasm linear memories, in KiB.
/// wasmtime reserves GiBs of address space per memory, inaccessible but
/// for the part in use: a memory is the run of accessible mappings (its
/// initial image may be mapped from the compiled file) directly below an
/// inaccessible reservation of at least 1 GiB. RSS minus this is the
/// host's own memory.
pub fn guest_memory_rss_kib(pid: u32) -> u64 {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return 0;
    };
    // (start, end, accessible, rss KiB) of every mapping, in address order.
    let mut maps: Vec<(u64, u64, bool, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            let accessible = !words.next().unwrap_or_default().starts_with("---");
            maps.push((start, end, accessible, 0));
        } else if first == "Rss:"
            && let (Some(kib), Some(last)) = (words.next(), maps.last_mut())
        {
            last.3 = kib.parse().unwrap_or(0);
        }
    }
    let mut total = 0;
    for (i, reserved) in maps.iter().enumerate() {
        if reserved.2 || reserved.1 - reserved.0 < 1 << 30 {
            continue;
        }
        let mut start = reserved.0;
        for used in maps[..i].iter().rev() {
            if !used.2 || used.1 != start {
                break;
            }
            total += used.3;
            start = used.0;
        }
    }
    total
}

/// Raises this process's open-file limit to at least `wanted` (up to the
/// hard limit, raising that too when running as root); children inherit
/// it. Returns the soft limit now in force.
pub fn raise_nofile(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur >= wanted {
            return limit.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return wanted;
        }
        let capped = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &capped) == 0 {
            return limit.rlim_max;
        }
        limit.rlim_cur
    }
}

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port")
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

/// A server process under test, killed when dropped.
pub struct Server {
    child: Child,
    /// Where it accepts connections.
    pub addr: SocketAddr,
    /// The line it printed when ready (for sockgate: the app's line, with
    /// its size and compile or cache-load time).
    pub ready_line: String,
    /// When the process was started.
    pub started: Instant,
}

impl Server {
    /// `sockgate run COMPONENT` on a free loopback port with compile cache
    /// `cache`, ready when it prints the app's `listening` line.
    pub fn sockgate(component: &Path, cache: &Path, pinned: bool) -> Self {
        Self::sockgate_bin(
            Path::new(env!("CARGO_BIN_EXE_sockgate")),
            component,
            cache,
            pinned,
        )
    }

    /// Like [`Server::sockgate`] with another build of the binary (an
    /// earlier commit, for before/after figures in the same run).
    pub fn sockgate_bin(binary: &Path, component: &Path, cache: &Path, pinned: bool) -> Self {
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg(component)
            .args(["--listen", "127.0.0.1:0", "--cache-dir"])
            .arg(cache)
            .env("RUST_LOG", "warn");
        Self::spawn(command, pinned, "listening on tcp ")
    }

    /// Starts `command` (pinned to CPU 1 if `pinned`) and waits for the
    /// stdout line containing `ready_marker` followed by its address.
    pub fn spawn(mut command: Command, pinned: bool, ready_marker: &str) -> Self {
        command
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let started = Instant::now();
        let mut child = command.spawn().expect("cannot start server");
        if pinned {
            pin(child.id(), "1");
        }
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (addr, ready_line) = loop {
            let line = lines
                .next()
                .expect("server exited before it was ready")
                .unwrap();
            if let Some((_, rest)) = line.split_once(ready_marker) {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                break (addr, line);
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            addr,
            ready_line,
            started,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sockgate serve` with a configuration file holding one app, `app_toml`
/// (the `[[app]]` table, without the header); the gateway's compile cache
/// is `target/bench-cache`, so a component compiled by an earlier
/// benchmark loads at once.
pub fn sockgate_serve(bench: &str, app_toml: &str, pinned: bool) -> Server {
    let dir = root().join("target/bench-tmp").join(bench);
    std::fs::create_dir_all(&dir).expect("cannot create target/bench-tmp");
    let config = dir.join("sockgate.toml");
    let toml = format!(
        "[gateway]\ncache_dir = \"{}\"\nstate_dir = \"{}\"\n\n[[app]]\n{app_toml}\n",
        root().join("target/bench-cache").display(),
        dir.join("state").display(),
    );
    std::fs::write(&config, toml).expect("cannot write the benchmark configuration");
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn");
    Server::spawn(command, pinned, " listening on tcp ")
}

/// `BINARY serve` with a configuration of `apps_toml` (`[[app]]` tables,
/// compile cache `target/bench-cache`), ready once it printed `sockgate
/// ready`; returns it with each app's address, by name.
pub fn sockgate_serve_apps(
    binary: &Path,
    bench: &str,
    apps_toml: &str,
) -> (Server, std::collections::HashMap<String, SocketAddr>) {
    let dir = root().join("target/bench-tmp").join(bench);
    std::fs::create_dir_all(&dir).expect("cannot create target/bench-tmp");
    let config = dir.join("sockgate.toml");
    let toml = format!(
        "[gateway]\ncache_dir = \"{}\"\n\n{apps_toml}\n",
        root().join("target/bench-cache").display(),
    );
    std::fs::write(&config, toml).expect("cannot write the benchmark configuration");
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start sockgate");
    let started = Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addrs = std::collections::HashMap::new();
    let mut first = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("sockgate ready") {
            break;
        }
        // `app NAME listening on tcp ADDR ...`
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["app", name, "listening", "on", "tcp", addr, ..] = words[..] {
            addrs.insert(name.to_owned(), addr.parse().unwrap());
            if first.is_empty() {
                first = line.clone();
            }
        }
    }
    assert!(!addrs.is_empty(), "{} served no app", binary.display());
    std::thread::spawn(move || for _ in lines {});
    let addr = *addrs.values().next().unwrap();
    (
        Server {
            child,
            addr,
            ready_line: first,
            started,
        },
        addrs,
    )
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

/// Hands `app` one end of an in-memory duplex of `buffer` bytes, as a TCP
/// connection from 127.0.0.1:1, and returns the client's end: the message
/// path without sockets.
pub fn connect_in_memory(
    app: &sockgate_host::apps::app::App,
    buffer: usize,
) -> tokio::io::DuplexStream {
    use sockgate_host::base::conn::{ConnInfo, Connection, Transport, next_conn_id};
    let (client, server) = tokio::io::duplex(buffer);
    let (server_rd, server_wr) = tokio::io::split(server);
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let conn = Connection {
        info: ConnInfo {
            id: next_conn_id(),
            transport: Transport::Tcp,
            peer: addr,
            local: addr,
            server_name: None,
            alpn: None,
            quic: None,
        },
        reader: Box::pin(server_rd),
        writer: Box::pin(server_wr),
        closer: Box::new(|| {}),
    };
    app.dispatch(conn).unwrap();
    client
}
