//! A Go guest that panics: its instance traps cleanly (the gateway
//! replaces it and serves on), and an operator reading `sockgate events`
//! and `sockgate logs` sees Go's own words: the trap's backtrace names
//! `runtime.gopanic` and the guest's function, the log has the `panic:`
//! line and the goroutine trace Go printed.
//!
//! The Go guests' echo behaviour is tested with every other language's in
//! `echo.rs`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::{Gateway, ScratchDir, lang_guest, root};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway's admin API, and its state directory (where the CLI finds
/// the admin token).
struct Admin {
    addr: SocketAddr,
    state: ScratchDir,
}

/// Runs `sockgate ARGS` against the admin API; returns its stdout, failing
/// the test if it fails.
fn cli(admin: &Admin, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .args(args)
        .env("SOCKGATE_ADMIN", admin.addr.to_string())
        .env("SOCKGATE_STATE_DIR", &admin.state.0)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run sockgate");
    assert!(
        output.status.success(),
        "sockgate {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends `line` and expects it back.
async fn echo_line(stream: &mut TcpStream, line: &str) {
    stream.write_all(line.as_bytes()).await.unwrap();
    let mut back = String::new();
    tokio::time::timeout(TIMEOUT, BufReader::new(&mut *stream).read_line(&mut back))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(back, line);
}

/// The app's TCP address, from `sockgate ls --json`.
fn app_addr(admin: &Admin, name: &str) -> SocketAddr {
    let ls: serde_json::Value = serde_json::from_str(&cli(admin, &["ls", "--json"])).unwrap();
    ls.as_array()
        .into_iter()
        .flatten()
        .find(|app| app["name"] == name)
        .and_then(|app| app["tcp"].as_str())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no tcp address for {name} in {ls}"))
}

#[tokio::test]
async fn a_go_panic_traps_its_instance_and_events_and_logs_say_so_in_go_terms() {
    let component = lang_guest("go", "panic");
    let state = ScratchDir::new("go-panic-state");
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command
        .args(["serve", "--admin", "127.0.0.1:0", "--state-dir"])
        .arg(&state.0)
        .env("XDG_CACHE_HOME", root().join("target/sockgate-test-xdg"));
    let gateway = Gateway::spawn(command, ScratchDir::new("go-panic"));
    let addr: SocketAddr = gateway
        .stdout
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("admin API and dashboard on http://"))
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .expect("no admin address printed");
    let admin = Admin { addr, state };
    cli(
        &admin,
        &[
            "deploy",
            "gopanic",
            &component.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--instances",
            "1",
        ],
    );
    let addr = app_addr(&admin, "gopanic");

    // A bystander on the same instance, proven to be served.
    let mut bystander = TcpStream::connect(addr).await.unwrap();
    echo_line(&mut bystander, "hello\n").await;
    let mut attacker = TcpStream::connect(addr).await.unwrap();
    echo_line(&mut attacker, "first a line\n").await;
    attacker.write_all(b"panic\n").await.unwrap();
    let mut buf = [0; 64];
    let closed = tokio::time::timeout(TIMEOUT, attacker.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the panicking connection was not closed: {closed:?}"
    );

    // The gateway also prints its events: wait there for the trap and the
    // replacement instance, then ask the admin API as an operator would.
    assert!(
        gateway
            .stderr
            .wait_for(TIMEOUT, |t| t.contains("instance trapped")
                && t.matches("instance started").count() >= 2),
        "no trap and restart:\n{}",
        gateway.stderr.text()
    );
    // The event: a trap whose backtrace reads as Go.
    let events = cli(&admin, &["events", "gopanic"]);
    for wanted in [
        "instance trapped (guest)",
        "runtime.gopanic",
        "export_sockgate_gateway_handler.explode",
    ] {
        assert!(
            events.contains(wanted),
            "no `{wanted}` in the events:\n{events}"
        );
    }
    // The log: what Go printed when it panicked.
    let logs = cli(&admin, &["logs", "gopanic"]);
    for wanted in [
        "panic: go guest asked to panic on connection",
        "goroutine",
        "export_sockgate_gateway_handler.explode",
    ] {
        assert!(logs.contains(wanted), "no `{wanted}` in the log:\n{logs}");
    }

    // The bystander went down with the instance; a fresh instance serves
    // new connections.
    let closed = tokio::time::timeout(TIMEOUT, bystander.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the bystander on the trapped instance was not closed: {closed:?}"
    );
    let mut next = TcpStream::connect(addr).await.unwrap();
    echo_line(&mut next, "served again\n").await;
    drop(gateway);
}
