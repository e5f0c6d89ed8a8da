//! The event world (`conn-events`, wit/events/conn-events.wit) around the
//! guest: what the gateway does for a guest that does no I/O of its own —
//! backpressure and the send queue's hard cap, timers, outbound connects
//! under the app's policy, and supervision (a trapping and a spinning
//! guest beside a neighbour that must not notice). The shared suites (echo,
//! chat over TCP, TLS and QUIC, HTTP/1.1) run the event-world guests in
//! `echo.rs`, `chat.rs`, `quic.rs` and `http_hello.rs`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::{Gateway, TestApp, ask};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Reads until the gateway closes the connection; what arrived.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection stayed open"),
        }
    }
}

#[tokio::test]
async fn the_guest_sees_its_connection_and_its_timers_fire() {
    let gateway = Gateway::start(&[TestApp {
        name: "probe",
        guest: "events-probe",
        extra: "",
    }]);
    let addr = gateway.addr("probe");
    let mut client = TcpStream::connect(addr).await.unwrap();
    let info = ask(&mut client, "info").await;
    let local = client.local_addr().unwrap().to_string();
    assert!(info.contains("transport=tcp"), "{info}");
    assert!(info.contains(&format!("peer={local}")), "{info}");
    assert!(info.contains(&format!("local={addr}")), "{info}");

    let asked = Instant::now();
    assert_eq!(ask(&mut client, "timer 200").await, "tick");
    assert!(asked.elapsed() >= Duration::from_millis(200));
    // Anything else comes back as it was sent.
    assert_eq!(ask(&mut client, "hello").await, "hello");
}

#[tokio::test]
async fn the_guests_half_close_reaches_the_client_which_can_still_send() {
    let gateway = Gateway::start(&[TestApp {
        name: "probe",
        guest: "events-probe",
        extra: "",
    }]);
    let mut stream = TcpStream::connect(gateway.addr("probe")).await.unwrap();
    stream.write_all(b"close-write\n").await.unwrap();
    // The guest echoes the command, then shuts down its sending side: we
    // see end of stream...
    let mut received = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut received))
        .await
        .expect("the guest's half-close did not reach the client")
        .unwrap();
    assert_eq!(received, b"close-write\n");
    // ...while our side stays open and the guest still hears it.
    stream.write_all(b"still here\n").await.unwrap();
    assert!(
        gateway.stderr.wait_for(TIMEOUT, |t| t
            .contains("received after close-write: still here")),
        "the guest did not receive data sent after its half-close:\n{}",
        gateway.stderr.text()
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_paused_and_the_gateway_memory_stays_flat() {
    let gateway = Gateway::start(&[TestApp {
        name: "echo",
        guest: "events-echo",
        extra: "",
    }]);
    let addr = gateway.addr("echo");
    let before = gateway.rss_kib();
    // Writes as much as the gateway takes, never reading the echo: once
    // the guest's replies pass the send queue's high-water mark, the
    // gateway stops reading, the socket buffers fill, and writing stalls.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0usize;
    // A write that makes no progress for 2 s: the gateway stopped reading.
    while let Ok(result) =
        tokio::time::timeout(Duration::from_secs(2), stream.write_all(&chunk)).await
    {
        result.unwrap();
        written += chunk.len();
        assert!(
            written < 256 << 20,
            "the gateway took 256 MiB from a client that never reads"
        );
    }
    let grown_kib = gateway.rss_kib().saturating_sub(before);
    assert!(
        grown_kib < 16 * 1024,
        "the gateway grew by {grown_kib} KiB holding a stalled client's echo \
         ({written} bytes written)"
    );
    // The connection is paused, not lost: reading drains the echo, and
    // the client's next bytes come back too.
    let mut echoed = 0usize;
    let mut buf = vec![0; 64 * 1024];
    while echoed < written {
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
            .await
            .expect("the echo did not resume")
            .unwrap();
        assert!(n > 0, "closed after {echoed} of {written} bytes");
        assert!(buf[..n].iter().all(|&b| b == 7));
        echoed += n;
    }
}

#[tokio::test]
async fn a_guest_sending_past_the_hard_cap_loses_that_connection_only() {
    let gateway = Gateway::start(&[TestApp {
        name: "probe",
        guest: "events-probe",
        extra: "instances = 1",
    }]);
    let addr = gateway.addr("probe");
    let mut neighbour = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut neighbour, "before").await, "before");

    // 4 MiB at once to a client that does not read: past the 1 MiB cap.
    let mut flooded = TcpStream::connect(addr).await.unwrap();
    flooded.write_all(b"flood 4096\n").await.unwrap();
    assert!(
        gateway
            .stderr
            .wait_for(TIMEOUT, |t| t.contains("limit event send queue hit")),
        "no limit event:\n{}",
        gateway.stderr.text()
    );
    let got = read_until_closed(&mut flooded).await;
    assert!(got.len() < 4096 * 1024, "all {} bytes arrived", got.len());
    // The instance and its other connection go on.
    assert_eq!(ask(&mut neighbour, "after").await, "after");
}

/// A TCP server that echoes what it receives, for outbound connects.
async fn echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn outbound_connects_follow_the_apps_policy() {
    let allowed = echo_server().await;
    let denied = echo_server().await;
    let extra = format!("outbound = [\"127.0.0.1:{}\"]", allowed.port());
    let gateway = Gateway::start(&[TestApp {
        name: "probe",
        guest: "events-probe",
        extra: &extra,
    }]);
    let addr = gateway.addr("probe");

    let mut client = TcpStream::connect(addr).await.unwrap();
    let refused = ask(&mut client, &format!("connect 127.0.0.1 {}", denied.port())).await;
    assert!(
        refused.starts_with("connect-failed: denied by the app's outbound policy"),
        "{refused}"
    );
    let refused = ask(
        &mut client,
        &format!("connect localhost {}", allowed.port()),
    )
    .await;
    assert!(refused.starts_with("connect-failed: denied"), "{refused}");

    assert_eq!(
        ask(
            &mut client,
            &format!("connect 127.0.0.1 {}", allowed.port())
        )
        .await,
        "connected"
    );
    // Relayed through the guest to the echo server and back.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = client.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(TIMEOUT, rd.read_to_end(&mut back))
        .await
        .expect("the relay did not finish")
        .unwrap();
    writer.await.unwrap();
    assert!(
        back == data,
        "relayed {} of {} bytes",
        back.len(),
        data.len()
    );
}

/// Round trips of one line on `stream` until `stop` is set; the worst.
async fn round_trips(
    mut stream: TcpStream,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, Duration) {
    let (rd, mut wr) = stream.split();
    let mut lines = BufReader::new(rd).lines();
    let (mut count, mut worst) = (0, Duration::ZERO);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let started = Instant::now();
        wr.write_all(b"ping\n").await.unwrap();
        let line = tokio::time::timeout(TIMEOUT, lines.next_line())
            .await
            .expect("the neighbour got no answer")
            .unwrap()
            .expect("the neighbour was closed");
        assert_eq!(line, "ping");
        worst = worst.max(started.elapsed());
        count += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (count, worst)
}

#[tokio::test]
async fn a_spinning_and_a_trapping_event_guest_leave_their_neighbour_alone() {
    let gateway = Gateway::start(&[
        TestApp {
            name: "probe",
            guest: "events-probe",
            extra: "instances = 2\n[app.limits]\ncpu_budget_ms = 100",
        },
        TestApp {
            name: "neighbour",
            guest: "events-echo",
            extra: "",
        },
    ]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let neighbour = TcpStream::connect(gateway.addr("neighbour")).await.unwrap();
    let measuring = tokio::spawn(round_trips(neighbour, stop.clone()));

    let addr = gateway.addr("probe");
    let mut spinner = TcpStream::connect(addr).await.unwrap();
    let mut trapper = TcpStream::connect(addr).await.unwrap();
    spinner.write_all(b"spin\n").await.unwrap();
    trapper.write_all(b"trap\n").await.unwrap();
    // Both instances end: the spinner at its CPU budget, the trapper at
    // once; each closes its own connection.
    read_until_closed(&mut spinner).await;
    read_until_closed(&mut trapper).await;
    let stderr = &gateway.stderr;
    assert!(
        stderr.wait_for(TIMEOUT, |t| t.contains("trap requested by the client")),
        "no trap reason in the log:\n{}",
        stderr.text()
    );
    assert!(
        stderr.wait_for(TIMEOUT, |t| t.contains("instance trapped (cpu-budget)")),
        "no CPU budget event:\n{}",
        stderr.text()
    );
    // Fresh instances serve the app again.
    let mut next = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut next, "served again").await, "served again");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (count, worst) = measuring.await.unwrap();
    assert!(count > 0, "the neighbour made no round trip");
    // The bound of tests/e2e/fairness.rs: a slower round trip means a
    // guest held a thread the neighbour needed (a time slice is 1-2 ms).
    assert!(
        worst < Duration::from_millis(100),
        "the neighbour waited {worst:?} for a round trip"
    );
}

#[tokio::test]
async fn an_event_world_app_deploys_reports_its_world_and_drains_on_redeploy() {
    use crate::deploy::{app_addr, cli, deploy, ls, start_admin};
    use crate::support::{ScratchDir, guest};

    let dir = ScratchDir::new("deploy-events");
    let state = dir.0.join("state");
    let (gateway, admin) = start_admin(&state, None);
    let echo = guest("events-echo").display().to_string();
    let (code, stdout, stderr) = cli(
        admin,
        &state,
        &["deploy", "ev", &echo, "--listen", "127.0.0.1:0"],
    );
    assert_eq!(code, 0, "deploy failed: {stdout}{stderr}");
    assert!(
        stdout.contains("world conn-events"),
        "deploy did not report the world: {stdout}"
    );
    let apps = ls(admin, &state);
    let app = apps.iter().find(|a| a["name"] == "ev").unwrap();
    assert_eq!(app["load"]["world"], "conn-events");

    // A connection of version 1 (the echo) stays on it across the
    // redeploy; new connections get version 2 (the probe).
    let addr = app_addr(admin, &state, "ev");
    let mut old = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut old, "info").await, "info");
    deploy(admin, &state, "ev", &guest("events-probe"), &[]);
    let mut new = TcpStream::connect(app_addr(admin, &state, "ev"))
        .await
        .unwrap();
    assert!(ask(&mut new, "info").await.starts_with("id="));
    assert_eq!(ask(&mut old, "info").await, "info");
    drop(gateway);
}
