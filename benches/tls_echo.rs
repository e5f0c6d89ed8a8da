//! TLS termination: sockgate terminating TLS in front of the Rust `echo`
//! guest, next to nginx (stream module) terminating TLS in front of the
//! same echo app (sockgate's plain TCP port), measured in one run with the
//! same load generator, certificate (ECDSA P-256) and client.
//!
//! - Handshakes/s: 32 clients each loop: connect, full handshake (no
//!   resumption), one byte echoed through the app, close.
//! - Bulk MB/s: 1 and 4 connections each send a payload while reading the
//!   echo back; MB/s counts the payload in one direction.
//!
//! The client skips certificate verification (it is not under test, and
//! it would make the load generator the bottleneck); the servers do all of
//! their usual work. When `taskset` is available the servers (sockgate,
//! nginx master and worker) are pinned to CPU 1 and the load generator to
//! CPU 0, so each row compares one server core; server CPU comes from
//! /proc and includes the echo app (sockgate) in the nginx rows. nginx runs
//! one worker. Rows for nginx are skipped, saying why, if nginx or its
//! stream module is missing (Debian: `nginx`, `libnginx-mod-stream`).
//!
//! Run: `cargo bench --bench tls_echo` (5 s per row) or
//! `SOCKGATE_BENCH_QUICK=1 cargo bench --bench tls_echo` (1 s per row).
//! Results are printed and written to `target/bench-results/tls_echo.{md,json}`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use sockgate_testkit::bench::{publish, quick};
use sockgate_testkit::guests::guest;
use sockgate_testkit::os::{has_command, has_taskset, pin, process_cpu};
use sockgate_testkit::paths::{root, sockgate_binary};
use sockgate_testkit::server::{Server, write_bench_config};
use sockgate_testkit::tls::{make_test_chain, tls_files_table, unverified_client_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const SERVER_NAME: &str = "echo.bench.test";
const HANDSHAKE_CLIENTS: usize = 32;
const CHUNK: usize = 64 * 1024;

fn main() {
    let quick = quick();
    let duration = Duration::from_secs(if quick { 1 } else { 5 });
    let bulk_bytes: u64 = if quick { 32 << 20 } else { 256 << 20 };
    let pinned = has_taskset();
    if pinned {
        pin(std::process::id(), "0");
    }
    let dir = root().join("target/bench-tls");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = make_test_chain(&dir, SERVER_NAME);
    let echo = guest("echo");

    let (sockgate, sockgate_tls) = sockgate(&dir, &echo, &cert, &key, pinned);
    let client = unverified_client_config(&[]);
    let mut rows = Vec::new();
    rows.push(Row::measure(
        "sockgate",
        sockgate_tls,
        &[sockgate.pid()],
        &[],
        &client,
        duration,
        bulk_bytes,
    ));
    match Nginx::start(&dir, sockgate.addr, &cert, &key, pinned) {
        Ok(nginx) => {
            rows.push(Row::measure(
                "nginx (stream, 1 worker)",
                nginx.addr,
                &nginx.pids(),
                &[sockgate.pid()],
                &client,
                duration,
                bulk_bytes,
            ));
        }
        Err(why) => println!("\nnginx rows skipped: {why}\n"),
    }
    report(&rows, duration, bulk_bytes, pinned);
}

/// One server's figures.
struct Row {
    server: &'static str,
    protocol: String,
    handshakes: Handshakes,
    /// (connections, MB/s, server CPU ms per GB).
    bulk: Vec<(usize, f64, f64)>,
}

/// The handshake figures.
struct Handshakes {
    per_sec: f64,
    /// CPU of the process(es) terminating TLS, per handshake.
    front_cpu_us: f64,
    /// CPU of a separate echo backend (nginx rows), per handshake.
    backend_cpu_us: f64,
    /// CPU of the load generator, per handshake (near 1 s per second of
    /// run means the client was the limit, not the server).
    client_cpu_us: f64,
}

impl Row {
    fn measure(
        server: &'static str,
        addr: SocketAddr,
        front: &[u32],
        backend: &[u32],
        client: &Arc<ClientConfig>,
        duration: Duration,
        bulk_bytes: u64,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let protocol = negotiated(addr, client).await;
            let handshakes = handshakes(addr, client, front, backend, duration).await;
            let pids: Vec<u32> = front.iter().chain(backend).copied().collect();
            let mut bulk = Vec::new();
            for connections in [1, 4] {
                let (mb_per_sec, cpu_ms_per_gb) =
                    bulk_echo(addr, client, &pids, connections, bulk_bytes).await;
                bulk.push((connections, mb_per_sec, cpu_ms_per_gb));
            }
            Row {
                server,
                protocol,
                handshakes,
                bulk,
            }
        })
    }
}

async fn connect(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    TlsConnector::from(client.clone())
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .expect("TLS handshake failed")
}

/// The protocol version and cipher suite a connection negotiates.
async fn negotiated(addr: SocketAddr, client: &Arc<ClientConfig>) -> String {
    let stream = connect(addr, client).await;
    let conn = stream.get_ref().1;
    format!(
        "{:?} {:?}",
        conn.protocol_version().unwrap(),
        conn.negotiated_cipher_suite().unwrap().suite()
    )
}

/// Handshakes per second, and CPU per handshake of the TLS front, the
/// backend and the load generator.
async fn handshakes(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    front: &[u32],
    backend: &[u32],
    duration: Duration,
) -> Handshakes {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..HANDSHAKE_CLIENTS)
        .map(|_| {
            let (count, stop, client) = (count.clone(), stop.clone(), client.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut stream = connect(addr, &client).await;
                    stream.write_all(b"x").await.unwrap();
                    let mut back = [0u8; 1];
                    stream.read_exact(&mut back).await.unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await; // warm-up
    let me = [std::process::id()];
    let before = (cpu(front), cpu(backend), cpu(&me));
    let count_before = count.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let done = (count.load(Ordering::Relaxed) - count_before) as f64;
    let elapsed = started.elapsed();
    let per = |now: Duration, then: Duration| (now - then).as_secs_f64() * 1e6 / done;
    let result = Handshakes {
        per_sec: done / elapsed.as_secs_f64(),
        front_cpu_us: per(cpu(front), before.0),
        backend_cpu_us: per(cpu(backend), before.1),
        client_cpu_us: per(cpu(&me), before.2),
    };
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    result
}

/// MB/s of payload (one direction) over `connections` connections each
/// echoing `bytes`, and server CPU milliseconds per GB.
async fn bulk_echo(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    pids: &[u32],
    connections: usize,
    bytes: u64,
) -> (f64, f64) {
    let mut streams = Vec::new();
    for _ in 0..connections {
        streams.push(connect(addr, client).await);
    }
    let cpu_before = cpu(pids);
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(stream);
                let writer = tokio::spawn(async move {
                    let chunk = vec![0x5au8; CHUNK];
                    let mut left = bytes;
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as usize;
                        wr.write_all(&chunk[..n]).await.unwrap();
                        left -= n as u64;
                    }
                    // TLS buffers: the tail must be flushed out.
                    wr.flush().await.unwrap();
                    wr
                });
                let mut buf = vec![0u8; CHUNK];
                let mut got = 0u64;
                while got < bytes {
                    let n = rd.read(&mut buf).await.unwrap();
                    assert!(n > 0, "echo ended early");
                    got += n as u64;
                }
                drop(writer.await.unwrap());
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let cpu_used = cpu(pids) - cpu_before;
    let total = bytes * connections as u64;
    (
        total as f64 / 1e6 / elapsed.as_secs_f64(),
        cpu_used.as_secs_f64() * 1e3 / (total as f64 / 1e9),
    )
}

fn report(rows: &[Row], duration: Duration, bulk_bytes: u64, pinned: bool) {
    let mut md = format!(
        "TLS termination in front of the echo guest; ECDSA P-256 certificate, full handshakes \
         ({HANDSHAKE_CLIENTS} clients, {} s), bulk echo of {} MiB per connection; {}\n\n",
        duration.as_secs(),
        bulk_bytes >> 20,
        if pinned {
            "servers pinned to CPU 1, load generator to CPU 0"
        } else {
            "not pinned (taskset missing)"
        }
    );
    md.push_str(
        "| TLS terminated by | negotiated | handshakes/s | TLS front CPU µs/handshake | \
         echo backend CPU µs/handshake | client CPU µs/handshake | bulk MB/s, 1 conn | \
         bulk MB/s, 4 conns | server CPU ms/GB, 1 conn |\n",
    );
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut json = Vec::new();
    for row in rows {
        let h = &row.handshakes;
        let backend = if h.backend_cpu_us > 0.0 {
            format!("{:.0}", h.backend_cpu_us)
        } else {
            "(in front)".to_owned()
        };
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {backend} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            row.server,
            row.protocol,
            h.per_sec,
            h.front_cpu_us,
            h.client_cpu_us,
            row.bulk[0].1,
            row.bulk[1].1,
            row.bulk[0].2,
        ));
        json.push(format!(
            "{{\"server\":{:?},\"negotiated\":{:?},\"handshakes_per_s\":{:.1},\
             \"front_cpu_us_per_handshake\":{:.1},\"backend_cpu_us_per_handshake\":{:.1},\
             \"client_cpu_us_per_handshake\":{:.1},\"bulk_mb_per_s_1\":{:.1},\
             \"bulk_mb_per_s_4\":{:.1},\"cpu_ms_per_gb_1\":{:.1}}}",
            row.server,
            row.protocol,
            h.per_sec,
            h.front_cpu_us,
            h.backend_cpu_us,
            h.client_cpu_us,
            row.bulk[0].1,
            row.bulk[1].1,
            row.bulk[0].2,
        ));
    }
    publish("tls_echo", &md, &json);
}

/// sockgate serving the echo guest over TLS and plain TCP (the echo
/// app's TCP address is the server's `addr`), with its TLS address.
fn sockgate(
    dir: &Path,
    echo: &Path,
    cert: &Path,
    key: &Path,
    pinned: bool,
) -> (Server, SocketAddr) {
    let config = write_bench_config(
        "tls_echo",
        &format!("state_dir = {:?}", dir.join("state").display().to_string()),
        &format!(
            "{}\n[[app]]\nname = \"echo\"\ncomponent = {:?}\nlisten = \"127.0.0.1:0\"\n",
            tls_files_table("bench.test", cert, key),
            echo.display().to_string(),
        ),
    );
    let server = Server::serve(&sockgate_binary(), &config, pinned, Stdio::inherit());
    let tls = server
        .printed("tls listening on ")
        .expect("sockgate printed no TLS address");
    (server, tls)
}

/// nginx terminating TLS (stream module) and proxying to `backend`.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(
        dir: &Path,
        backend: SocketAddr,
        cert: &Path,
        key: &Path,
        pinned: bool,
    ) -> Result<Self, String> {
        // Debian installs it in /usr/sbin, which a user's PATH may lack.
        let Some(nginx) = ["nginx", "/usr/sbin/nginx"]
            .into_iter()
            .find(|exe| has_command(exe, "-v"))
        else {
            return Err(
                "nginx is not installed (Debian: apt-get install nginx libnginx-mod-stream)".into(),
            );
        };
        // Debian builds the stream module as a dynamic module.
        let module = [
            "/usr/lib/nginx/modules/ngx_stream_module.so",
            "/usr/lib64/nginx/modules/ngx_stream_module.so",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists());
        let load = module
            .map(|m| format!("load_module {m};\n"))
            .unwrap_or_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(&prefix).unwrap();
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "{load}worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {log} warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 stream {{\n  server {{\n    listen {addr} ssl;\n    ssl_certificate {cert};\n\
                 ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n\
                 proxy_pass {backend};\n  }}\n}}\n",
                pid = prefix.join("nginx.pid").display(),
                log = prefix.join("error.log").display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let test = Command::new(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-t")
            .output()
            .map_err(|err| format!("cannot run nginx: {err}"))?;
        if !test.status.success() {
            return Err(format!(
                "nginx rejects the stream configuration (is libnginx-mod-stream installed?): {}",
                String::from_utf8_lossy(&test.stderr).trim()
            ));
        }
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| format!("cannot start nginx: {err}"))?;
        let nginx = Self { child, addr };
        // nginx prints nothing when ready: wait until it accepts.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err("nginx did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if pinned {
            for pid in nginx.pids() {
                pin(pid, "1");
            }
        }
        Ok(nginx)
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        std::iter::once(master)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// User plus system CPU time of processes so far.
fn cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|&pid| process_cpu(pid)).sum()
}
