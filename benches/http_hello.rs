//! HTTP hello: the same small page from several servers, keep-alive,
//! 50 connections:
//!
//! - sockgate serving the `http-hello` guest (raw TCP; the guest parses
//!   HTTP/1.1 itself) on its long-lived instances;
//! - `wasmtime serve` (with its pooling allocator) running the same
//!   `wasi:http` components: `wasi-http-hello`, a 0.2 proxy component (an
//!   instance per request), and `wasi-http-hello-p3`, a 0.3 service
//!   (instances reused, 16 requests at once each); each `wasi:http` row is
//!   compared with the one of its world;
//! - a native hyper server on one tokio worker thread;
//! - sockgate serving the `wasi:http` hello as an HTTP app, WASI 0.3
//!   (`wasi-http-hello-p3`, long-lived instances) and WASI 0.2
//!   (`wasi-http-hello`, the component `wasmtime serve` runs; an instance
//!   per request), each on one gateway: HTTP/1.1 on the app's cleartext
//!   port (`wrk -t1`, like the rows above), h2c there (`h2load -m10`), and
//!   HTTP/1.1 and HTTP/2 over TLS on the TLS listener (`h2load --h1` and
//!   `h2load -m10`, ALPN, SNI `hello.bench.test`). A last table sets h2
//!   beside h1; over TLS one load generator drives both. The h2load rows
//!   are skipped with a message without Debian's `nghttp2-client`.
//!
//! The server is pinned to CPU 1 and wrk to CPU 0 (when `taskset` is
//! there); server CPU per request comes from /proc/<pid>/stat.
//! `RUST_BACKTRACE` is unset for every server.
//!
//! `wasmtime` (the CLI, 48.0.8) is looked for in `$SOCKGATE_WASMTIME`, then
//! on `PATH`, then in `/work/.wasmtime-cli/bin`; without it its row says
//! so and the others run. Install it with
//! `cargo install wasmtime-cli --version 48.0.8 --locked`. Without `wrk`
//! (Debian package `wrk`) the whole benchmark is skipped with a message.
//!
//! Run: `cargo bench --bench http_hello` (`SOCKGATE_BENCH_QUICK=1` for a
//! short run). Results also go to `target/bench-results/http_hello.{md,json}`.

use sockgate_testkit::bench::{publish, quick};
use sockgate_testkit::guests::guest;
use sockgate_testkit::net::free_port;
use sockgate_testkit::os::{has_command, has_taskset, pin_at_exec, process_cpu};
use sockgate_testkit::paths::{bench_cache_dir, bench_dir, sockgate_binary};
use sockgate_testkit::server::{Server, write_bench_config};
use sockgate_testkit::tls::{make_test_chain, tls_files_table};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The page every server sends (the `http-hello` guest's).
const PAGE: &str = "<!doctype html>\n<html><head><title>Hello from sockgate</title></head>\
<body><h1>Hello from sockgate</h1><p>Served by a WebAssembly component.</p></body></html>\n";
const CONNECTIONS: usize = 50;
/// The domain of the benchmark gateway's TLS listener; the app is
/// [`TLS_NAME`] there.
const TLS_DOMAIN: &str = "bench.test";
/// The name the TLS rows reach the `wasi:http` app by (SNI and authority).
const TLS_NAME: &str = "hello.bench.test";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("native-hyper-server") {
        native_hyper_server();
        return;
    }
    if !has_command("wrk", "--version") {
        println!("http_hello: skipped: `wrk` is not installed (Debian package `wrk`)");
        return;
    }
    let duration = if quick() { 1 } else { 5 };
    let pinned = has_taskset();
    let hello = guest("http-hello");
    let wasi_http = guest("wasi-http-hello");
    let wasi_http_p3 = guest("wasi-http-hello-p3");
    let cache = bench_cache_dir();

    let mut rows: Vec<(String, Option<Wrk>)> = Vec::new();
    let native = {
        let mut command = Command::new(std::env::current_exe().expect("no current exe"));
        command.arg("native-hyper-server");
        Server::spawn(command, pinned, " listening on tcp ")
    };
    rows.push((
        "native hyper, 1 tokio worker".into(),
        Some(wrk(native.addr, native.pid(), duration, pinned)),
    ));
    drop(native);

    let gateway = Server::sockgate(&hello, &cache, pinned);
    rows.push((
        "sockgate + http-hello guest".into(),
        Some(wrk(gateway.addr, gateway.pid(), duration, pinned)),
    ));
    drop(gateway);

    // HTTP apps: the `wasi:http` hello, 0.3 (long-lived instances) and 0.2
    // (an instance per request), each on one gateway serving it on its
    // cleartext port (HTTP/1.1 by wrk, h2c by h2load) and on the TLS
    // listener at `hello.bench.test` (HTTP/1.1 and HTTP/2 by ALPN, both by
    // h2load, so that pair compares the protocols with one load generator).
    let h2load = has_command("h2load", "--version");
    if !h2load {
        println!(
            "http_hello: h2 and TLS rows skipped: `h2load` is not installed (Debian package \
             `nghttp2-client`)"
        );
    }
    let dir = bench_dir("http_hello");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create the benchmark directory");
    let (cert, key) = make_test_chain(&dir, TLS_NAME);
    for (component, world) in [(&wasi_http_p3, "0.3"), (&wasi_http, "0.2")] {
        let (gateway, tls) = http_app(&dir, component, world, &cert, &key, pinned);
        let pid = gateway.pid();
        let cleartext = format!("http://{}/", gateway.addr);
        let over_tls = format!("https://{TLS_NAME}:{}/", tls.port());
        let connect_to = format!("--connect-to=127.0.0.1:{}", tls.port());
        let h1 = wrk(gateway.addr, pid, duration, pinned);
        rows.push((row_name(world, "h1 cleartext (wrk)"), Some(h1)));
        if h2load {
            let runs = [
                ("h2c (h2load -m10)", &cleartext, vec!["-m10"]),
                (
                    "h1 over TLS (h2load --h1)",
                    &over_tls,
                    vec!["--h1", "-m1", &connect_to],
                ),
                (
                    "h2 over TLS (h2load -m10)",
                    &over_tls,
                    vec!["-m10", &connect_to],
                ),
            ];
            for (name, url, args) in runs {
                let row = h2load_run(url, &args, pid, duration, pinned);
                rows.push((row_name(world, name), Some(row)));
            }
        }
        drop(gateway);
    }

    let wasmtime = find_wasmtime();
    if wasmtime.is_none() {
        println!(
            "http_hello: `wasmtime serve` rows skipped: no wasmtime CLI found (set \
             SOCKGATE_WASMTIME, put it on PATH, or `cargo install wasmtime-cli --version \
             48.0.8 --locked --root /work/.wasmtime-cli`)"
        );
    }
    for (component, p3, name) in [
        (
            &wasi_http_p3,
            true,
            "wasmtime serve + wasi:http 0.3 hello (instance reuse)",
        ),
        (
            &wasi_http,
            false,
            "wasmtime serve + wasi:http 0.2 hello (instance per request)",
        ),
    ] {
        let row = wasmtime.as_ref().map(|wasmtime| {
            let server = WasmtimeServe::start(wasmtime, component, p3, pinned);
            wrk(server.addr, server.child.id(), duration, pinned)
        });
        rows.push((name.into(), row));
    }
    report(&rows, duration, pinned);
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
struct Wrk {
    requests_per_sec: f64,
    server_cpu_us_per_request: f64,
}

/// `tool`, pinned to CPU 0 when `pinned` (the server has CPU 1).
fn load_generator(tool: &str, pinned: bool) -> Command {
    if pinned {
        let mut command = Command::new("taskset");
        command.args(["-c", "0", tool]);
        command
    } else {
        Command::new(tool)
    }
}

/// Runs `wrk -t1 -c50` against `addr` for `seconds` (after a warm-up) and
/// reads the server's CPU.
fn wrk(addr: SocketAddr, pid: u32, seconds: u64, pinned: bool) -> Wrk {
    let url = format!("http://{addr}/");
    let run = |seconds: u64| {
        let mut command = load_generator("wrk", pinned);
        command.args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            &url,
        ]);
        let output = command.output().expect("cannot run wrk");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(1); // warm-up
    let cpu_before = process_cpu(pid);
    let started = Instant::now();
    let out = run(seconds);
    let elapsed = started.elapsed();
    let cpu = process_cpu(pid) - cpu_before;
    // "N requests in 5.00s, ..."
    let requests: f64 = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read wrk's output:\n{out}"));
    let errors = out
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    if let Some(errors) = errors {
        println!("http_hello: wrk reported: {}", errors.trim());
    }
    // Answers that are not 2xx (a `503` is quick to send) do not count.
    let failed: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0.0);
    let rate: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(requests / elapsed.as_secs_f64())
        * ((requests - failed) / requests.max(1.0));
    Wrk {
        requests_per_sec: rate,
        server_cpu_us_per_request: cpu.as_secs_f64() * 1e6 / requests.max(1.0),
    }
}

/// Runs `h2load -c50 ARGS URL` against the server `pid` for `seconds`
/// (after a warm-up) and reads the server's CPU. `ARGS` choose the
/// protocol (`-m10` for HTTP/2 with ten streams per connection, `--h1 -m1`
/// for HTTP/1.1) and, over TLS, `--connect-to` the gateway's address while
/// the URL names the app (SNI).
fn h2load_run(url: &str, args: &[&str], pid: u32, seconds: u64, pinned: bool) -> Wrk {
    let run = |seconds: u64| {
        let mut command = load_generator("h2load", pinned);
        command
            .args(["-c", &CONNECTIONS.to_string(), "-D", &seconds.to_string()])
            .args(args)
            .arg(url);
        let output = command.output().expect("cannot run h2load");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(1); // warm-up
    let cpu_before = process_cpu(pid);
    let started = Instant::now();
    let out = run(seconds);
    let elapsed = started.elapsed();
    let cpu = process_cpu(pid) - cpu_before;
    // "requests: N total, N started, N done, N succeeded, N failed, ..."
    let field = |name: &str| -> Option<f64> {
        let line = out.lines().find(|l| l.starts_with("requests:"))?;
        line.split(',')
            .find(|part| part.trim().ends_with(name))
            .and_then(|part| part.split_whitespace().find_map(|w| w.parse().ok()))
    };
    let succeeded = field("succeeded").unwrap_or_else(|| panic!("cannot read h2load:\n{out}"));
    if let Some(failed) = field("failed").filter(|&f| f > 0.0) {
        println!("http_hello: h2load reported {failed} failed requests");
    }
    // "finished in 5.00s, 12345.67 req/s, ..."
    let rate = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or(succeeded / elapsed.as_secs_f64());
    Wrk {
        requests_per_sec: rate,
        server_cpu_us_per_request: cpu.as_secs_f64() * 1e6 / succeeded.max(1.0),
    }
}

/// The name of a `wasi:http` row.
fn row_name(world: &str, how: &str) -> String {
    format!("sockgate + wasi:http {world} hello, {how}")
}

/// `sockgate serve` with the `wasi:http` hello as app `hello`: its
/// cleartext port is the server's `addr`; returned beside it, the TLS
/// listener's address, where it is `hello.bench.test` (a certificate from
/// a test CA; h2load does not verify it).
fn http_app(
    dir: &Path,
    component: &Path,
    world: &str,
    cert: &Path,
    key: &Path,
    pinned: bool,
) -> (Server, SocketAddr) {
    let state = dir.join(format!("state-{world}"));
    let config = write_bench_config(
        "http_hello",
        &format!("state_dir = {:?}", state.display().to_string()),
        &format!(
            "{}\n[[app]]\nname = \"hello\"\ncomponent = {:?}\nlisten = \"127.0.0.1:0\"\n",
            tls_files_table(TLS_DOMAIN, cert, key),
            component.display().to_string(),
        ),
    );
    let server = Server::serve(&sockgate_binary(), &config, pinned, Stdio::inherit());
    let tls = server
        .printed("tls listening on ")
        .expect("sockgate printed no TLS address");
    (server, tls)
}

fn report(rows: &[(String, Option<Wrk>)], seconds: u64, pinned: bool) {
    let native = rows[0].1.expect("the native row always runs");
    // Each `wasi:http` row is compared with `wasmtime serve` running the
    // same world's component.
    let wasmtime_of = |world: &str| {
        rows.iter()
            .find(|(name, _)| name.starts_with("wasmtime serve") && name.contains(world))
            .and_then(|(_, row)| *row)
    };
    let world_of = |name: &str| ["0.3", "0.2"].into_iter().find(|w| name.contains(w));
    let mut md = format!(
        "HTTP hello ({} bytes), {seconds} s per row with {CONNECTIONS} connections: `wrk -t1` \
         for HTTP/1.1 in cleartext, `h2load` for h2c and for HTTP/1.1 and HTTP/2 over TLS \
         (ALPN); {}\n\n\
         | server | req/s | vs native hyper | vs wasmtime serve | server CPU µs/req |\n\
         |---|---:|---:|---:|---:|\n",
        PAGE.len(),
        if pinned {
            "server pinned to CPU 1, wrk to CPU 0"
        } else {
            "not pinned (taskset missing)"
        }
    );
    let mut json = Vec::new();
    for (name, row) in rows {
        match row {
            Some(row) => {
                let vs_wasmtime = world_of(name)
                    .and_then(wasmtime_of)
                    .map(|w| format!("{:.2}×", row.requests_per_sec / w.requests_per_sec))
                    .unwrap_or_else(|| "—".into());
                md.push_str(&format!(
                    "| {name} | {:.0} | {:.2}× | {vs_wasmtime} | {:.1} |\n",
                    row.requests_per_sec,
                    row.requests_per_sec / native.requests_per_sec,
                    row.server_cpu_us_per_request,
                ));
                json.push(format!(
                    "{{\"server\":\"{name}\",\"req_per_s\":{:.1},\"cpu_us_per_req\":{:.3}}}",
                    row.requests_per_sec, row.server_cpu_us_per_request
                ));
            }
            None => {
                md.push_str(&format!("| {name} | skipped: no wasmtime CLI | | | |\n"));
                json.push(format!("{{\"server\":\"{name}\",\"skipped\":true}}"));
            }
        }
    }
    // h2 beside h1 on the same gateway: over TLS one load generator
    // drives both, so that ratio compares the protocols.
    md.push_str("\n| world | h2c / h1 cleartext (wrk) | h2 / h1 over TLS (h2load both) |\n|---|---:|---:|\n");
    for world in ["0.3", "0.2"] {
        let rate = |how: &str| {
            rows.iter()
                .find(|(name, _)| *name == row_name(world, how))
                .and_then(|(_, row)| row.map(|row| row.requests_per_sec))
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        md.push_str(&format!(
            "| {world} | {} | {} |\n",
            ratio(rate("h2c (h2load -m10)"), rate("h1 cleartext (wrk)")),
            ratio(
                rate("h2 over TLS (h2load -m10)"),
                rate("h1 over TLS (h2load --h1)")
            ),
        ));
    }
    publish("http_hello", &md, &json);
}

/// The wasmtime CLI: `$SOCKGATE_WASMTIME`, `wasmtime` on PATH, or the
/// install root the development machines use.
fn find_wasmtime() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SOCKGATE_WASMTIME") {
        return Some(PathBuf::from(path));
    }
    if has_command("wasmtime", "--version") {
        return Some(PathBuf::from("wasmtime"));
    }
    let installed = PathBuf::from("/work/.wasmtime-cli/bin/wasmtime");
    installed.exists().then_some(installed)
}

/// `wasmtime serve` on a free port, killed when dropped.
struct WasmtimeServe {
    child: Child,
    addr: SocketAddr,
}

impl WasmtimeServe {
    /// `component` served by `wasmtime serve` with the pooling allocator,
    /// as WASI 0.3 (`p3`: instances reused, 16 requests at once each) or
    /// WASI 0.2 (an instance per request).
    fn start(wasmtime: &Path, component: &Path, p3: bool, pinned: bool) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // Rust guests import wasi:cli (their standard library): -Scli.
        let mut command = Command::new(wasmtime);
        command.args(["serve", "-Scli", "-O", "pooling-allocator=y"]);
        if p3 {
            command.args(["-Sp3", "-Wcomponent-model-async=y"]);
        }
        if pinned {
            pin_at_exec(&mut command, 1);
        }
        let child = command
            .args(["--addr", &addr.to_string()])
            .arg(component)
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start wasmtime serve");
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "wasmtime serve did not listen on {addr} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr }
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The baseline: hyper's HTTP/1.1 server on one tokio worker thread.
fn native_hyper_server() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!(
            "native hyper listening on tcp {}",
            listener.local_addr().unwrap()
        );
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_request: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/html; charset=utf-8")
                            .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
