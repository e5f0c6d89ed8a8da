//! The gateway's own ports and host under attack: idle connections from one
//! address against the TLS and plain-HTTP ports, one app taking every
//! gateway-wide slot, directories of the wrong owner, guest bytes aimed at
//! the operator's terminal, components never collected, an admin API on
//! the network.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::deploy::{blobs, cli, deploy, start_admin};
use crate::limits::{closed_within, connect_from};
use crate::support::{
    Gateway, ScratchDir, TestApp, ask, guest, run_expecting_failure, shared_cache_dir,
};
use crate::tls_support::{TlsGateway, WAIT, client_config, dev_ca_root, echo_through};

/// Lets this process (and the gateways it starts) open as many
/// descriptors as the hard limit allows.
fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// Opens `count` connections to `addr` from 127.0.0.1 that send nothing.
async fn idle_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let batch = futures::future::join_all(
            chunk
                .iter()
                .map(|_| async { tokio::time::timeout(WAIT, TcpStream::connect(addr)).await }),
        )
        .await;
        held.extend(batch.into_iter().filter_map(|c| c.ok()?.ok()));
    }
    held
}

#[tokio::test]
async fn a_handshake_completes_while_one_address_holds_5000_idle_connections() {
    const IDLE: usize = 5000;
    assert!(
        raise_descriptor_limit() > 2 * IDLE as u64 + 1000,
        "the descriptor limit is too low for this test"
    );
    let state = ScratchDir::new("sec-idle");
    let gw = TlsGateway::start(
        &state.0,
        "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"localhost\"\ncertificates = \"dev-ca\"\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
        &[TestApp {
            name: "echo",
            guest: "echo",
            extra: "",
        }],
    );
    let config = client_config(&[dev_ca_root(&state.0)], &[]);

    let idle = idle_connections(gw.tls, IDLE).await;
    assert!(idle.len() > IDLE * 9 / 10, "only {} connected", idle.len());
    // A client at another address completes its handshake at once, well
    // within the 10 s the idle ones would hold their slots for.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = tokio::time::timeout(Duration::from_secs(5), socket.connect(gw.tls))
        .await
        .expect("connect timed out")
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("echo.localhost").unwrap();
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("the handshake waited for the idle connections")
    .expect("the handshake was refused");
    echo_through(&mut stream, b"through the flood\n").await;
    drop(idle);

    // The same on the plain-HTTP port (ACME HTTP-01 lives there).
    let http = gw.http.expect("no http listener");
    let idle = idle_connections(http, IDLE).await;
    let mut other = connect_from("127.0.0.2", http).await;
    other
        .write_all(b"GET /x HTTP/1.1\r\nHost: echo.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_end(&mut answer))
        .await
        .expect("the request waited for the idle connections")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 308 "), "{answer}");
    // And the idle ones lose their connections after the first-byte
    // deadline (3 s), not after the 10 s request deadline.
    let mut sample = idle.into_iter().take(64).collect::<Vec<_>>();
    for stream in &mut sample {
        assert!(
            closed_within(stream, Duration::from_secs(8))
                .await
                .is_some(),
            "an idle connection was kept"
        );
    }
}

#[tokio::test]
async fn no_app_takes_every_gateway_wide_connection() {
    let gateway = Gateway::start_with(
        "max_connections = 20\n",
        &[
            TestApp {
                name: "greedy",
                guest: "echo",
                extra: "instances = 1\n[app.limits]\nmax_connections_per_ip = 100",
            },
            TestApp {
                name: "other",
                guest: "echo",
                extra: "instances = 1",
            },
        ],
    );
    // The greedy app gets 80 % of the gateway's 20 slots, no more.
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        let mut stream = TcpStream::connect(gateway.addr("greedy")).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), async {
            stream.write_all(b"x\n").await?;
            let mut back = [0u8; 2];
            stream.read_exact(&mut back).await
        })
        .await;
        match echoed {
            Ok(Ok(_)) => served.push(stream),
            _ => refused += 1,
        }
    }
    assert_eq!(served.len(), 16, "greedy held {} slots", served.len());
    assert_eq!(refused, 4);
    assert!(
        gateway.stderr.wait_for(WAIT, |t| t
            .contains("limit gateway.reserved_connections_percent hit")),
        "{}",
        gateway.stderr.text()
    );
    // Another app is still served.
    let mut other = TcpStream::connect(gateway.addr("other")).await.unwrap();
    assert_eq!(ask(&mut other, "still served").await, "still served");
}

#[test]
fn the_cache_directory_must_be_the_gateways_own_and_never_a_shared_default() {
    let echo = guest("echo");
    // No HOME, no XDG_CACHE_HOME, no cache_dir: refused, no /tmp fallback.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .args(["run", "--listen", "127.0.0.1:0"])
        .arg(&echo)
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("started without a cache directory (a shared default was used)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("no directory for the compile cache"),
        "{stderr}"
    );

    // A directory open to everyone is narrowed to the owner.
    let dir = ScratchDir::new("sec-cache");
    let cache = dir.0.join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command
        .args(["run", "--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(&cache)
        .arg(&echo);
    let _gateway = Gateway::spawn(command, ScratchDir::new("sec-cache-run"));
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the open cache directory was used as it was");

    // A directory of another user is refused (only root can make one).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let foreign = dir.0.join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        let (code, stderr) = run_expecting_failure(&[
            "run".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--cache-dir".as_ref(),
            foreign.as_os_str(),
            echo.as_os_str(),
        ]);
        assert_ne!(code, 0);
        assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    }
}

#[tokio::test]
async fn guest_bytes_cannot_drive_the_operators_terminal() {
    let dir = ScratchDir::new("sec-escape");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    deploy(
        admin,
        &state,
        "talker",
        &guest("hostile"),
        &["--listen", "127.0.0.1:0"],
    );
    let mut conn = TcpStream::connect(crate::deploy::app_addr(admin, &state, "talker"))
        .await
        .unwrap();
    let evil = "log \u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31mred\u{202e}txt";
    assert_eq!(ask(&mut conn, evil).await, evil);
    let (code, stdout, stderr) = cli(admin, &state, &["logs", "talker"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("red"), "{stdout}");
    for raw in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(!stdout.contains(raw), "{raw:?} printed raw: {stdout:?}");
    }
    assert!(stdout.contains("\\u{1b}]0;owned\\u{7}"), "{stdout}");
    // JSON output keeps the text exactly (escaped by JSON).
    let (_, json, _) = cli(admin, &state, &["logs", "talker", "--json"]);
    assert!(json.contains("\\u001b]0;owned"), "{json}");
}

#[tokio::test]
async fn components_no_version_uses_are_collected() {
    let dir = ScratchDir::new("sec-blobs");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    let listen = ["--listen", "127.0.0.1:0"];
    deploy(admin, &state, "a", &guest("echo"), &listen);
    deploy(admin, &state, "a", &guest("hostile"), &[]);
    deploy(admin, &state, "b", &guest("echo"), &listen);
    assert_eq!(blobs(&state), 2);
    // `a`'s versions go; echo stays for `b`.
    let (code, _, stderr) = cli(admin, &state, &["rm", "a"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(blobs(&state), 1);
    let (code, _, stderr) = cli(admin, &state, &["rm", "b"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(blobs(&state), 0, "a removed app left its component");
}

#[test]
fn an_admin_api_off_loopback_is_refused_unless_allowed() {
    let dir = ScratchDir::new("sec-remote-admin");
    let (code, stderr) = run_expecting_failure(&[
        "serve".as_ref(),
        "--admin".as_ref(),
        "0.0.0.0:0".as_ref(),
        "--state-dir".as_ref(),
        dir.0.join("state").as_os_str(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("allow_remote_admin"), "{stderr}");

    // Allowed by the operator: it serves, and says how exposed it is.
    let config = dir.0.join("sockgate.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nadmin = \"0.0.0.0:0\"\nallow_remote_admin = true\nstate_dir = {:?}\n\
             cache_dir = {:?}\n",
            dir.0.join("state").display().to_string(),
            shared_cache_dir().display().to_string()
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command.arg("serve").arg("--config").arg(&config);
    let gateway = Gateway::spawn(command, ScratchDir::new("sec-remote-admin-run"));
    assert!(
        gateway.stderr.wait_for(WAIT, |t| t.contains("clear text")),
        "{}",
        gateway.stderr.text()
    );
}
