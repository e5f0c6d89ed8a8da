//! What a guest can consume or reach (security findings 2, 6, 8, 9, 11,
//! 14, 18, 19 of issue 13), each tried as an attacker would, several at
//! once where it matters, beside a neighbour app that measures the harm.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::support::{
    Gateway, ScratchDir, TestApp, ask, guest, guest_component, run_expecting_failure,
    shared_cache_dir,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `sockgate serve` on a configuration with `gateway` lines in its
/// `[gateway]` table and `apps`; `setup` adjusts the command first.
fn start(gateway: &str, apps: &[TestApp<'_>], setup: impl FnOnce(&mut Command)) -> Gateway {
    start_in(&ScratchDir::new("sec-config").0, gateway, apps, setup, None)
}

fn start_in(
    dir: &Path,
    gateway: &str,
    apps: &[TestApp<'_>],
    setup: impl FnOnce(&mut Command),
    stderr: Option<Stdio>,
) -> Gateway {
    let mut config = format!(
        "[gateway]\ncache_dir = {:?}\n{gateway}\n",
        shared_cache_dir().display().to_string()
    );
    for app in apps {
        config.push_str(&format!(
            "\n[[app]]\nname = {:?}\ncomponent = {:?}\nlisten = \"127.0.0.1:0\"\n{}\n",
            app.name,
            guest_component(app.guest).display().to_string(),
            app.extra
        ));
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("sockgate.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command.arg("serve").arg("--config").arg(&path);
    setup(&mut command);
    Gateway::spawn_with_stderr(command, ScratchDir::new("sec-gateway"), stderr)
}

/// The admin API address the gateway printed.
fn admin_addr(gateway: &Gateway) -> SocketAddr {
    gateway
        .stdout
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("admin API and dashboard on http://"))
        .and_then(|rest| rest.split('/').next())
        .expect("no admin address printed")
        .parse()
        .unwrap()
}

/// Sends `line` and waits at most `within` for the reply line; `None` when
/// none came (or the connection closed).
async fn ask_within(stream: &mut TcpStream, line: &str, within: Duration) -> Option<String> {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .ok()?;
    let mut reply = String::new();
    let mut reader = BufReader::new(&mut *stream);
    match tokio::time::timeout(within, reader.read_line(&mut reply)).await {
        Ok(Ok(n)) if n > 0 => Some(reply.trim_end().to_owned()),
        _ => None,
    }
}

/// A new connection to `addr` answers an echo within `within`.
async fn fresh_echo(addr: SocketAddr, n: usize, within: Duration) -> bool {
    let connected = tokio::time::timeout(within, TcpStream::connect(addr)).await;
    let Ok(Ok(mut stream)) = connected else {
        return false;
    };
    let line = format!("still here {n}");
    ask_within(&mut stream, &line, within).await.as_deref() == Some(line.as_str())
}

/// `k` from `sockets: opened k…` or `streams: kept k…`.
fn count(reply: &str) -> usize {
    reply
        .split_whitespace()
        .nth(2)
        .map(|n| n.trim_end_matches(','))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reply {reply:?}"))
}

/// Limits the gateway process to `n` file descriptors (soft and hard).
fn descriptor_limit(command: &mut Command, n: u64) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the
    // child between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A TCP server on loopback that accepts connections and holds them open.
async fn holding_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A TCP server on loopback that answers each connection with `pong from
/// <name>`.
async fn pong_server(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(format!("pong from {name}\n").as_bytes())
                    .await;
            });
        }
    });
    addr
}

/// Finding 2: four apps' guests open sockets until refused, in a gateway
/// limited to 1024 descriptors; together they get the guests' half of what
/// is left after the reserve, never the process's last descriptor, and a
/// neighbour app keeps accepting new connections throughout.
#[tokio::test]
async fn guests_opening_sockets_until_refused_leave_the_gateway_its_descriptors() {
    // Any rule enables sockets; this one leads nowhere.
    let hog = "instances = 1\noutbound = [\"192.0.2.1:9\"]";
    let apps = [
        TestApp {
            name: "hog-a",
            guest: "hostile",
            extra: hog,
        },
        TestApp {
            name: "hog-b",
            guest: "hostile",
            extra: hog,
        },
        TestApp {
            name: "hog-c",
            guest: "hostile",
            extra: hog,
        },
        TestApp {
            name: "hog-d",
            guest: "hostile",
            extra: hog,
        },
        TestApp {
            name: "bystander",
            guest: "echo",
            extra: "instances = 1",
        },
    ];
    let gateway = start("", &apps, |command| descriptor_limit(command, 1024));
    let bystander = gateway.addr("bystander");
    assert!(fresh_echo(bystander, 0, TIMEOUT).await, "not served at all");

    let mut hogs = Vec::new();
    let mut opened = 0;
    for name in ["hog-a", "hog-b", "hog-c", "hog-d"] {
        let mut stream = TcpStream::connect(gateway.addr(name)).await.unwrap();
        let reply = ask_within(&mut stream, "sockets 300", TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{name} did not answer: the gateway is stuck"));
        eprintln!("{name}: {reply}");
        opened += count(&reply);
        hogs.push(stream);
    }
    // limits.max_outbound_sockets (100) per app, and (1024 - 256) / 2 = 384
    // for all guests together.
    assert_eq!(opened, 384, "guests hold {opened} sockets");
    // The sockets are held; the neighbour still accepts, connection after
    // connection (each one a new descriptor of the gateway).
    for n in 1..=40 {
        assert!(
            fresh_echo(bystander, n, Duration::from_secs(5)).await,
            "new connection {n} to the neighbour was not served while guests hold sockets"
        );
    }
    let stderr = &gateway.stderr;
    assert!(
        stderr.wait_for(TIMEOUT, |t| t.contains("limit max_outbound_sockets hit")
            && t.contains("limit gateway outbound socket budget hit")
            && t.contains("RLIMIT_NOFILE")),
        "{}",
        stderr.text()
    );
    // What a guest gives back, another may take.
    assert_eq!(ask(&mut hogs[0], "release").await, "released");
    let mut last = TcpStream::connect(gateway.addr("hog-d")).await.unwrap();
    let reply = ask(&mut last, "sockets 10").await;
    assert_eq!(reply, "sockets: opened 10", "{reply}");
}

/// Finding 2, every form of socket: WASI 0.3 TCP sockets whose streams
/// outlive them, WASI 0.3 UDP, WASI 0.2 TCP from a `conn-handler-sync`
/// app: each counts until its descriptor is closed.
#[tokio::test]
async fn sockets_count_in_every_form_until_their_descriptor_is_closed() {
    let server = holding_server().await;
    let p3 = format!(
        "instances = 1\noutbound = [\"{server}\"]\n[app.limits]\nmax_outbound_sockets = 10"
    );
    let p2 = format!("outbound = [\"{server}\"]\n[app.limits]\nmax_outbound_sockets = 5");
    let gateway = start(
        "",
        &[
            TestApp {
                name: "hog",
                guest: "hostile",
                extra: &p3,
            },
            TestApp {
                name: "sync-hog",
                guest: "sync-hostile",
                extra: &p2,
            },
        ],
        |_| {},
    );
    let mut hog = TcpStream::connect(gateway.addr("hog")).await.unwrap();
    // Connected sockets dropped while their streams live keep counting.
    let reply = ask(&mut hog, &format!("streams 20 {server}")).await;
    assert!(
        reply.starts_with("streams: kept 10, then error: ")
            && reply.contains("limits.max_outbound_sockets"),
        "{reply}"
    );
    let reply = ask(&mut hog, "sockets 1").await;
    assert!(
        reply.starts_with("sockets: opened 0, then error"),
        "{reply}"
    );
    assert_eq!(ask(&mut hog, "release").await, "released");
    // Released once the streams let go of their descriptors.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let reply = ask(&mut hog, "sockets 10 udp").await;
        if reply == "sockets: opened 10" {
            break;
        }
        assert!(Instant::now() < deadline, "never released: {reply}");
        assert_eq!(ask(&mut hog, "release").await, "released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = ask(&mut hog, "sockets 1").await;
    assert!(
        reply.starts_with("sockets: opened 0, then error"),
        "{reply}"
    );

    let mut sync = TcpStream::connect(gateway.addr("sync-hog")).await.unwrap();
    let reply = ask(&mut sync, "sockets 8").await;
    assert!(
        reply.starts_with("sockets: opened 5, then error: ") && reply.contains("new-socket-limit"),
        "{reply}"
    );
    // A connection's sockets go with its instance.
    drop(sync);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut sync = TcpStream::connect(gateway.addr("sync-hog")).await.unwrap();
        let reply = ask(&mut sync, "sockets 5").await;
        if reply == "sockets: opened 5" {
            break;
        }
        assert!(Instant::now() < deadline, "never released: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finding 6: apps from the configuration file (started before the admin
/// API and before later apps) and apps restored after a restart never
/// reach the gateway's own ports through a wildcard, while an exact rule
/// still reaches them.
#[tokio::test]
async fn config_and_restored_apps_cannot_dial_the_admin_port_or_later_apps() {
    let dir = ScratchDir::new("sec-own-ports");
    let state = dir.0.join("state");
    let admin_port = crate::tls_support::free_port();
    let gateway_lines = format!(
        "admin = \"127.0.0.1:{admin_port}\"\nstate_dir = {:?}",
        state.display().to_string()
    );
    let exact = format!("instances = 1\noutbound = [\"127.0.0.1:{admin_port}\"]");
    let apps = [
        TestApp {
            name: "prober",
            guest: "hostile",
            extra: "instances = 1\noutbound = [\"127.0.0.1:*\"]",
        },
        TestApp {
            name: "exact",
            guest: "hostile",
            extra: &exact,
        },
        TestApp {
            name: "later",
            guest: "echo",
            extra: "instances = 1",
        },
    ];
    let gateway = start_in(&dir.0, &gateway_lines, &apps, |_| {}, None);
    let admin = admin_addr(&gateway);
    assert_eq!(admin.port(), admin_port);
    let later = gateway.addr("later").port();

    let mut prober = TcpStream::connect(gateway.addr("prober")).await.unwrap();
    assert_eq!(
        ask(&mut prober, &format!("connect 127.0.0.1:{admin_port}")).await,
        "error: ErrorCode::AccessDenied",
        "a configured app reached the admin API"
    );
    assert_eq!(
        ask(&mut prober, &format!("connect 127.0.0.1:{later}")).await,
        "error: ErrorCode::AccessDenied",
        "an app reached a port bound after it started"
    );
    let mut exact = TcpStream::connect(gateway.addr("exact")).await.unwrap();
    let reply = ask(&mut exact, &format!("connect 127.0.0.1:{admin_port}")).await;
    assert!(reply.starts_with("connected: HTTP/1.1 400"), "{reply}");

    // An app deployed through the API, then restored by a restart.
    let component = guest("hostile").display().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .args(["deploy", "restored", &component, "--listen", "127.0.0.1:0"])
        .args(["--instances", "1", "--outbound", "127.0.0.1:*"])
        .env("SOCKGATE_ADMIN", admin.to_string())
        .env("SOCKGATE_STATE_DIR", &state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop((prober, exact, gateway));
    let gateway = start_in(&dir.0, &gateway_lines, &apps, |_| {}, None);
    // `restored` started at boot, before the admin API.
    let mut restored = TcpStream::connect(gateway.addr("restored")).await.unwrap();
    assert_eq!(
        ask(&mut restored, &format!("connect 127.0.0.1:{admin_port}")).await,
        "error: ErrorCode::AccessDenied",
        "a restored app reached the admin API"
    );
    let mut prober = TcpStream::connect(gateway.addr("prober")).await.unwrap();
    assert_eq!(
        ask(&mut prober, &format!("connect 127.0.0.1:{admin_port}")).await,
        "error: ErrorCode::AccessDenied"
    );
}

/// Finding 14: a DNS-name rule lets the guest look the name up, but what a
/// name resolves to is judged as `*` judges it: `localhost` (127.0.0.1 in
/// /etc/hosts) is refused, while an explicit IP rule still reaches it.
#[tokio::test]
async fn a_name_rule_never_reaches_loopback_but_an_ip_rule_does() {
    let pong = pong_server("loopback").await;
    let port = pong.port();
    let by_name = format!("instances = 1\noutbound = [\"localhost:{port}\"]");
    let by_ip = format!("instances = 1\noutbound = [\"127.0.0.1:{port}\"]");
    let both = format!("instances = 1\noutbound = [\"localhost:{port}\", \"127.0.0.1:{port}\"]");
    let gateway = start(
        "",
        &[
            TestApp {
                name: "by-name",
                guest: "hostile",
                extra: &by_name,
            },
            TestApp {
                name: "by-ip",
                guest: "hostile",
                extra: &by_ip,
            },
            TestApp {
                name: "both",
                guest: "hostile",
                extra: &both,
            },
        ],
        |_| {},
    );
    let mut guest = TcpStream::connect(gateway.addr("by-name")).await.unwrap();
    let resolved = ask(&mut guest, "lookup localhost").await;
    assert!(
        resolved.starts_with("resolved: ") && resolved.contains("127.0.0.1"),
        "{resolved}"
    );
    assert_eq!(
        ask(&mut guest, &format!("connect 127.0.0.1:{port}")).await,
        "error: ErrorCode::AccessDenied",
        "a name rule reached loopback"
    );
    let mut guest = TcpStream::connect(gateway.addr("by-ip")).await.unwrap();
    assert_eq!(
        ask(&mut guest, &format!("connect 127.0.0.1:{port}")).await,
        "connected: pong from loopback"
    );
    let mut guest = TcpStream::connect(gateway.addr("both")).await.unwrap();
    assert!(
        ask(&mut guest, "lookup localhost")
            .await
            .starts_with("resolved: ")
    );
    assert_eq!(
        ask(&mut guest, &format!("connect 127.0.0.1:{port}")).await,
        "connected: pong from loopback"
    );
    assert!(
        gateway.stderr.wait_for(TIMEOUT, |t| t.contains(&format!(
            "outbound access denied: TcpConnect 127.0.0.1:{port}"
        ))),
        "{}",
        gateway.stderr.text()
    );
}

/// Finding 8: guests logging flat out while the gateway's stderr is a pipe
/// nobody reads; a neighbour app answers every request promptly, and the
/// chatty app's own log (`sockgate logs`) still has its lines.
#[tokio::test]
async fn guests_logging_into_a_stderr_nobody_reads_stall_no_other_app() {
    let dir = ScratchDir::new("sec-log");
    let state = dir.0.join("state");
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors, owned below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both are fresh descriptors nothing else owns.
    let (unread, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let gateway = start_in(
        &dir.0,
        &format!(
            "admin = \"127.0.0.1:0\"\nstate_dir = {:?}",
            state.display().to_string()
        ),
        &[
            TestApp {
                name: "chatty",
                guest: "hostile",
                extra: "instances = 2",
            },
            TestApp {
                name: "bystander",
                guest: "echo",
                extra: "instances = 1",
            },
        ],
        |_| {},
        Some(Stdio::from(write_end)),
    );
    let chatty = gateway.addr("chatty");
    let bystander = gateway.addr("bystander");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, mut rounds_done) = tokio::sync::watch::channel(0u32);
    let done = std::sync::Arc::new(done);
    let mut floods = Vec::new();
    for _ in 0..4 {
        let (stop, done) = (stop.clone(), done.clone());
        floods.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(chatty).await.unwrap();
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = ask_within(&mut stream, "log-flood 5000", TIMEOUT).await;
                assert_eq!(reply.as_deref(), Some("logged 5000"));
                rounds += 1;
                done.send_modify(|n| *n += 1);
            }
            rounds
        }));
    }
    // Four floods of 5000 lines of 100 bytes: the pipe (64 KiB) is full
    // many times over. (A gateway writing stderr synchronously never gets
    // there; the neighbour then shows it.)
    let _ = tokio::time::timeout(Duration::from_secs(10), rounds_done.wait_for(|n| *n >= 4)).await;
    let mut neighbour = TcpStream::connect(bystander).await.unwrap();
    let mut slowest = Duration::ZERO;
    for n in 0..100 {
        let started = Instant::now();
        let line = format!("ping {n}");
        let reply = ask_within(&mut neighbour, &line, Duration::from_secs(5)).await;
        assert_eq!(
            reply.as_deref(),
            Some(line.as_str()),
            "the neighbour stopped answering (request {n}) while a guest logs into a full pipe"
        );
        slowest = slowest.max(started.elapsed());
        if n % 10 == 0 {
            assert!(fresh_echo(bystander, n, Duration::from_secs(5)).await);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rounds = 0;
    for flood in floods {
        rounds += flood.await.unwrap();
    }
    eprintln!("{rounds} floods of 5000 lines; slowest neighbour round trip {slowest:?}");
    assert!(rounds >= 4, "the flood did not run");
    // The app's own log kept working.
    let output = Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .args(["logs", "chatty"])
        .env("SOCKGATE_ADMIN", admin_addr(&gateway).to_string())
        .env("SOCKGATE_STATE_DIR", &state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stdout);
    assert!(
        logs.contains(&"x".repeat(100)),
        "no guest lines in the app's log"
    );
    drop(unread);
}

/// Finding 8: past its `log_lines_per_second`, an app's lines stay in its
/// log but not in the gateway's, which says how many it held back.
#[tokio::test]
async fn lines_over_an_apps_rate_are_summarised_in_the_gateways_log() {
    let gateway = start(
        "",
        &[TestApp {
            name: "chatty",
            guest: "hostile",
            extra: "instances = 1\n[app.limits]\nlog_lines_per_second = 50",
        }],
        |_| {},
    );
    let mut stream = TcpStream::connect(gateway.addr("chatty")).await.unwrap();
    assert_eq!(ask(&mut stream, "log-flood 3000").await, "logged 3000");
    assert_eq!(ask(&mut stream, "log-flood 10").await, "logged 10");
    let stderr = &gateway.stderr;
    assert!(
        stderr.wait_for(TIMEOUT, |t| t
            .contains("log lines dropped from the gateway's log")
            && t.contains("log_lines_per_second = 50")),
        "{}",
        stderr.text()
    );
    let traced = stderr.text().matches(&"x".repeat(100)).count();
    assert!(
        traced < 1000,
        "{traced} of 3010 lines reached the gateway's log"
    );
}

/// Finding 9: one `conn-handler-sync` app flooded with 1010 idle
/// connections from two addresses takes its share of the per-connection
/// instance pool, and another such app still gets an instance.
#[tokio::test]
async fn one_sync_app_flooded_to_its_pool_share_leaves_instances_for_another() {
    let gateway = start(
        "",
        &[
            TestApp {
                name: "tenant-a",
                guest: "sync-hostile",
                extra: "",
            },
            TestApp {
                name: "tenant-b",
                guest: "sync-echo",
                extra: "",
            },
        ],
        |_| {},
    );
    let a = gateway.addr("tenant-a");
    let mut flood = Vec::new();
    for n in 0..1010 {
        let local = if n % 2 == 0 { "127.0.0.1" } else { "127.0.0.2" };
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
        flood.push(tokio::spawn(async move {
            let mut stream = socket.connect(a).await.ok()?;
            let reply = ask_within(&mut stream, "hold", Duration::from_secs(20)).await?;
            (reply == "hold").then_some(stream)
        }));
    }
    let mut held = Vec::new();
    for task in flood {
        if let Some(stream) = task.await.unwrap() {
            held.push(stream);
        }
    }
    eprintln!("tenant-a holds {} instances", held.len());
    // limits.max_sync_instances: a quarter of the pool of 1000.
    assert_eq!(held.len(), 250, "tenant-a holds {} instances", held.len());
    let mut b = TcpStream::connect(gateway.addr("tenant-b")).await.unwrap();
    assert_eq!(
        ask_within(&mut b, "hello", Duration::from_secs(10))
            .await
            .as_deref(),
        Some("hello"),
        "tenant-b got no instance while tenant-a is flooded"
    );
    assert!(
        gateway
            .stderr
            .wait_for(TIMEOUT, |t| t.contains("limit max_sync_instances hit")),
        "{}",
        gateway.stderr.text()
    );
}

/// Finding 11: QUIC windows and stream counts beyond their hard maxima are
/// refused before anything is served, the field named.
#[test]
fn quic_windows_and_streams_beyond_their_maxima_are_refused() {
    for (field, value, max) in [
        ("quic_receive_window_kb", "8000000", "16384"),
        ("quic_streams_per_connection", "100000", "1000"),
    ] {
        let dir = ScratchDir::new("sec-quic-limits");
        let config = dir.0.join("sockgate.toml");
        std::fs::write(
            &config,
            format!(
                "[[app]]\nname = \"echo\"\ncomponent = {:?}\nlisten = \"127.0.0.1:0\"\n\
                 [app.limits]\n{field} = {value}\n",
                guest("echo").display().to_string()
            ),
        )
        .unwrap();
        let (code, stderr) =
            run_expecting_failure(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()]);
        assert_ne!(code, 0);
        assert!(
            stderr.contains(&format!("limits.{field} must be at most {max}")),
            "{stderr}"
        );
    }
}

/// Finding 18: a guest creating streams in a loop (no host call needed)
/// is stopped by its store's tables, sized for the instance's connections,
/// long before wasmtime's defaults (100 000 handles, 1 000 000 entries).
#[tokio::test]
async fn a_guest_creating_streams_in_a_loop_is_stopped_by_its_tables() {
    let gateway = start(
        "",
        &[TestApp {
            name: "hoarder",
            guest: "hostile",
            extra: "instances = 1\n[app.limits]\nmax_connections_per_instance = 10\n\
                    cpu_budget_ms = 5000\nwall_budget_ms = 10000",
        }],
        |_| {},
    );
    let mut stream = TcpStream::connect(gateway.addr("hoarder")).await.unwrap();
    let reply = ask_within(&mut stream, "stream-pairs 40000", TIMEOUT).await;
    assert_eq!(reply, None, "40 000 streams were created: {reply:?}");
    assert!(
        gateway
            .stderr
            .wait_for(TIMEOUT, |t| t.contains("instance trapped")),
        "{}",
        gateway.stderr.text()
    );
    // A fresh instance serves again.
    let mut next = TcpStream::connect(gateway.addr("hoarder")).await.unwrap();
    assert_eq!(ask(&mut next, "back").await, "back");
}

/// Finding 19: QUIC negotiates each app's own ALPN preference: another
/// app's list (earlier in the endpoint's union) no longer wins.
#[tokio::test]
async fn quic_negotiates_each_apps_own_protocols() {
    use crate::quic::{connect_quic, echo_stream, quic_client};
    use crate::tls_support::{TlsGateway, dev_ca_root};
    let state = ScratchDir::new("sec-quic-alpn");
    let gw = TlsGateway::start(
        &state.0,
        "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"localhost\"\ncertificates = \"dev-ca\"\n\n\
         [http]\nenabled = false\n\n[quic]\nlisten = \"127.0.0.1:0\"\n",
        &[
            TestApp {
                name: "aaa",
                guest: "echo",
                extra: "alpn = [\"h3\"]",
            },
            TestApp {
                name: "bbb",
                guest: "echo",
                extra: "alpn = [\"x-b\", \"x-c\"]",
            },
        ],
    );
    let addr = gw.quic.expect("no QUIC endpoint");
    let root = dev_ca_root(&state.0);
    // A client of bbb that also speaks h3 (listed first by the client).
    let client = quic_client(std::slice::from_ref(&root), &["h3", "x-c", "x-b"]);
    let conn = connect_quic(&client, addr, "bbb.localhost")
        .await
        .expect("handshake refused");
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .map(|p| String::from_utf8_lossy(&p).into_owned());
    assert_eq!(
        alpn.as_deref(),
        Some("x-b"),
        "bbb's preference was not used"
    );
    assert_eq!(echo_stream(&conn, b"mine".to_vec()).await, b"mine");
    // aaa's clients are unaffected.
    let client = quic_client(std::slice::from_ref(&root), &["x-b", "h3"]);
    let conn = connect_quic(&client, addr, "aaa.localhost").await.unwrap();
    assert_eq!(echo_stream(&conn, b"theirs".to_vec()).await, b"theirs");
}
