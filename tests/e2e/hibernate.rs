//! Hibernation (issue 18, part 1): an app idle for its
//! `hibernate_after_secs` drops its instances and the next connection
//! wakes a fresh one — over TCP, TLS and QUIC, for a deployed app (state
//! on `ls`, events, the wake histogram) and a configured one, under 100
//! connections at once; and what keeps an app awake: an open connection,
//! an event-world guest's pending timer.
//!
//! Every wait is for what the gateway reports (its events, on stderr or
//! through the admin API), with a deadline; the only fixed waits are the
//! ones that show something does *not* happen.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::deploy::{cli, deploy, ls, start_admin};
use crate::quic::{DEFAULT_ALPN, connect_quic, echo_stream, quic_client};
use crate::support::{Gateway, ScratchDir, TestApp, ask, guest};
use crate::tls_support::{TlsGateway, client_config, connect, dev_ca_root, echo_through};

const TIMEOUT: Duration = Duration::from_secs(60);
/// How the gateway writes these events (`EventKind`'s text).
const HIBERNATED: &str = "hibernated after";
const WOKE: &str = "woke (";

/// An app table hibernating after one second idle.
const AFTER_1S: &str = "[app.limits]\nhibernate_after_secs = 1";

/// Polls `sockgate events NAME` until `count` events contain `needle`.
async fn wait_for_event(
    admin: std::net::SocketAddr,
    state: &ScratchDir,
    needle: &str,
    count: usize,
) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (code, stdout, stderr) = cli(admin, &state.0, &["events", "echo"]);
        assert_eq!(code, 0, "{stderr}");
        if stdout.matches(needle).count() >= count {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "no {count} event(s) {needle:?} in time:\n{stdout}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn echo_status(admin: std::net::SocketAddr, state: &ScratchDir) -> serde_json::Value {
    ls(admin, &state.0)
        .into_iter()
        .find(|a| a["name"] == "echo")
        .expect("no app echo")
}

#[tokio::test]
async fn a_deployed_app_hibernates_when_idle_and_wakes_on_the_next_connection() {
    let state = ScratchDir::new("hibernate-state");
    let (gateway, admin) = start_admin(&state.0, None);
    deploy(
        admin,
        &state.0,
        "echo",
        &guest("echo"),
        &["--listen", "127.0.0.1:0", "--hibernate-after-secs", "1"],
    );
    let addr: std::net::SocketAddr = echo_status(admin, &state)["tcp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut client, "before").await, "before");
    drop(client);

    wait_for_event(admin, &state, HIBERNATED, 1).await;
    let status = echo_status(admin, &state);
    assert_eq!(status["hibernation"], "hibernated", "{status}");
    assert_eq!(status["instances"], 0, "{status}");
    let (_, table, _) = cli(admin, &state.0, &["ls"]);
    assert!(table.contains("hibernated"), "{table}");

    // The next connection is served its first byte by a fresh instance.
    let mut client = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut client, "after").await, "after");
    let events = wait_for_event(admin, &state, WOKE, 1).await;
    let status = echo_status(admin, &state);
    assert_eq!(status["hibernation"], "awake", "{status}");
    assert_eq!(status["instances"], 1, "{status}");
    let metrics = crate::deploy::authed(admin, &state.0, "GET /metrics HTTP/1.1");
    assert!(
        metrics.contains("sockgate_wake_seconds_count{app=\"echo\"} 1"),
        "{metrics}"
    );
    let woke = events.lines().find(|l| l.contains(WOKE)).unwrap();
    eprintln!("wake over TCP: {woke}");
    drop(gateway);
}

#[tokio::test]
async fn a_hibernated_app_wakes_over_tls_and_quic() {
    let state = ScratchDir::new("hibernate-tls");
    let gw = TlsGateway::start(
        &state.0,
        "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"localhost\"\ncertificates = \"dev-ca\"\n\n\
         [http]\nenabled = false\n\n[quic]\nlisten = \"127.0.0.1:0\"\n",
        &[TestApp {
            name: "echo",
            guest: "echo",
            extra: AFTER_1S,
        }],
    );
    let stderr = &gw.gateway.stderr;
    assert!(
        stderr.wait_for_count(TIMEOUT, HIBERNATED, 1),
        "{}",
        stderr.text()
    );

    let config = client_config(&[dev_ca_root(&state.0)], &[]);
    let mut stream = connect(gw.tls, "echo.localhost", config).await.unwrap();
    echo_through(&mut stream, b"over tls\n").await;
    assert!(stderr.wait_for_count(TIMEOUT, WOKE, 1), "{}", stderr.text());
    drop(stream);

    assert!(
        stderr.wait_for_count(TIMEOUT, HIBERNATED, 2),
        "{}",
        stderr.text()
    );
    let client = quic_client(&[dev_ca_root(&state.0)], &[DEFAULT_ALPN]);
    let conn = connect_quic(&client, gw.quic.unwrap(), "echo.localhost")
        .await
        .unwrap();
    assert_eq!(
        echo_stream(&conn, b"over quic".to_vec()).await,
        b"over quic"
    );
    assert!(stderr.wait_for_count(TIMEOUT, WOKE, 2), "{}", stderr.text());
}

#[tokio::test]
async fn a_hundred_connections_to_a_hibernated_app_all_succeed_with_one_wake() {
    let gateway = Gateway::start(&[TestApp {
        name: "echo",
        guest: "echo",
        extra: AFTER_1S,
    }]);
    assert!(
        gateway.stderr.wait_for_count(TIMEOUT, HIBERNATED, 1),
        "{}",
        gateway.stderr.text()
    );
    let addr = gateway.addr("echo");
    let clients: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                let mut client = TcpStream::connect(addr).await.unwrap();
                let line = format!("client {i}");
                let back = tokio::time::timeout(TIMEOUT, ask(&mut client, &line))
                    .await
                    .expect("no echo in time");
                assert_eq!(back, line);
                client.shutdown().await.unwrap();
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    // One instance, one wake: the connections that arrived during it
    // waited in the shard's queue.
    let text = gateway.stderr.text();
    assert_eq!(text.matches(WOKE).count(), 1, "{text}");
    assert!(!text.contains("refused"), "{text}");
}

#[tokio::test]
async fn an_app_with_an_open_connection_does_not_hibernate() {
    let gateway = Gateway::start(&[TestApp {
        name: "echo",
        guest: "echo",
        extra: AFTER_1S,
    }]);
    let mut client = TcpStream::connect(gateway.addr("echo")).await.unwrap();
    assert_eq!(ask(&mut client, "hello").await, "hello");
    // Three idle periods with the connection open and silent: no
    // hibernation (a fixed wait: it shows something does not happen).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = gateway.stderr.text();
    assert!(!text.contains(HIBERNATED), "{text}");
    assert_eq!(ask(&mut client, "still here").await, "still here");
    // Once it closes, the app hibernates.
    drop(client);
    assert!(
        gateway.stderr.wait_for_count(TIMEOUT, HIBERNATED, 1),
        "{}",
        gateway.stderr.text()
    );
}

#[tokio::test]
async fn an_event_world_guest_with_a_pending_timer_does_not_hibernate() {
    let gateway = Gateway::start(&[TestApp {
        name: "probe",
        guest: "events-probe",
        extra: AFTER_1S,
    }]);
    // The event world hibernates like the others: first, idle from start.
    assert!(
        gateway.stderr.wait_for_count(TIMEOUT, HIBERNATED, 1),
        "{}",
        gateway.stderr.text()
    );
    let mut client = TcpStream::connect(gateway.addr("probe")).await.unwrap();
    assert_eq!(ask(&mut client, "hello").await, "hello");
    assert!(gateway.stderr.wait_for_count(TIMEOUT, WOKE, 1));
    // A timer three seconds out, then the connection goes: the guest still
    // has work pending, so the instance stays until the timer fired and
    // the idle time passed after it.
    client.write_all(b"timer 3000\n").await.unwrap();
    let set = Instant::now();
    drop(client);
    assert!(
        gateway.stderr.wait_for_count(TIMEOUT, HIBERNATED, 2),
        "{}",
        gateway.stderr.text()
    );
    assert!(
        set.elapsed() >= Duration::from_secs(3),
        "hibernated {:?} after a 3 s timer was set",
        set.elapsed()
    );
}

#[tokio::test]
async fn a_hibernated_wasi_http_service_wakes_on_the_next_request() {
    let gateway = Gateway::start(&[TestApp {
        name: "svc",
        guest: "wasi-http-hello-p3",
        extra: AFTER_1S,
    }]);
    let stderr = &gateway.stderr;
    assert!(
        stderr.wait_for_count(TIMEOUT, HIBERNATED, 1),
        "{}",
        stderr.text()
    );
    let mut stream = TcpStream::connect(gateway.addr("svc")).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        TIMEOUT,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
    )
    .await
    .expect("no answer in time")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(stderr.wait_for_count(TIMEOUT, WOKE, 1), "{}", stderr.text());
}

#[tokio::test]
async fn a_guest_holding_sockets_does_not_hibernate_until_it_releases_them() {
    let gateway = Gateway::start(&[TestApp {
        name: "hostile",
        guest: "hostile",
        // An outbound rule, so that the guest may create sockets at all.
        extra: "outbound = [\"192.0.2.1:9\"]\n[app.limits]\nhibernate_after_secs = 1",
    }]);
    let stderr = &gateway.stderr;
    assert!(
        stderr.wait_for_count(TIMEOUT, HIBERNATED, 1),
        "{}",
        stderr.text()
    );
    // The woken instance keeps two outbound sockets in a global after the
    // connection that opened them is gone: WASI resources beyond those
    // it started with keep it awake.
    let mut client = TcpStream::connect(gateway.addr("hostile")).await.unwrap();
    assert_eq!(ask(&mut client, "sockets 2").await, "sockets: opened 2");
    drop(client);
    // Three idle periods (a fixed wait: it shows something does not
    // happen).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = stderr.text();
    assert_eq!(text.matches(HIBERNATED).count(), 1, "{text}");
    let mut client = TcpStream::connect(gateway.addr("hostile")).await.unwrap();
    assert_eq!(ask(&mut client, "release").await, "released");
    drop(client);
    assert!(
        stderr.wait_for_count(TIMEOUT, HIBERNATED, 2),
        "{}",
        stderr.text()
    );
    // It never had to wake again: the same instance served both.
    assert_eq!(stderr.text().matches(WOKE).count(), 1);
}
