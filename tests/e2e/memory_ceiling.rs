//! The gateway-wide memory ceiling (issue 18, part 4): with
//! `max_guest_memory_mb` room for three echo instances and four apps that
//! hibernate, waking one hibernates the least recently used idle app
//! first, and each wake is served; with no idle app to hibernate, the
//! connection is refused with an event that says why.
//!
//! Every wait is for what the gateway reports (`ls`, `/metrics`, events
//! through the admin API), with a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::deploy::{authed, cli, ls, parse_prometheus};
use crate::support::{Gateway, ScratchDir, TestApp, ask};

const TIMEOUT: Duration = Duration::from_secs(60);
const MIB: f64 = (1 << 20) as f64;
const APPS: [&str; 4] = ["a", "b", "c", "d"];

/// A gateway with an admin API, `[gateway]` lines `extra`, and `apps` echo
/// apps that hibernate only when asked (an hour idle).
fn start(state: &Path, extra: &str, apps: &[&str]) -> (Gateway, SocketAddr) {
    let gateway_lines = format!(
        "admin = \"127.0.0.1:0\"\nstate_dir = {:?}\n{extra}",
        state.display().to_string()
    );
    let tables: Vec<TestApp> = apps
        .iter()
        .map(|name| TestApp {
            name,
            guest: "echo",
            extra: "[app.limits]\nhibernate_after_secs = 3600",
        })
        .collect();
    let gateway = Gateway::start_with(&gateway_lines, &tables);
    let admin = sockgate_testkit::output::printed_admin(&gateway.stdout.text())
        .expect("no admin address printed");
    (gateway, admin)
}

/// Linear memory all instances hold, from `/metrics`.
fn memory_used(admin: SocketAddr, state: &Path) -> f64 {
    let raw = authed(admin, state, "GET /metrics HTTP/1.1");
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    parse_prometheus(body)["sockgate_guest_memory_bytes{kind=\"used\"}"]
}

/// Polls `ls` until `check` holds for app `name`'s status.
async fn wait_for_app(
    admin: SocketAddr,
    state: &Path,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let apps = ls(admin, state);
        let app = apps.iter().find(|a| a["name"] == name).unwrap();
        if check(app) {
            return;
        }
        assert!(Instant::now() < deadline, "app {name} never {what}: {app}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One echoed line on app `name`, then the connection closed and its end
/// seen by the gateway (so its recency is recorded before the next).
async fn touch(gateway: &Gateway, admin: SocketAddr, state: &Path, name: &str) {
    let mut conn = TcpStream::connect(gateway.addr(name)).await.unwrap();
    assert_eq!(ask(&mut conn, name).await, name, "app {name}");
    drop(conn);
    wait_for_app(admin, state, name, "let go of its connection", |app| {
        app["active_connections"] == 0
    })
    .await;
    // Recency is kept in milliseconds: two touches in the same one would
    // tie.
    tokio::time::sleep(Duration::from_millis(5)).await;
}

fn states(admin: SocketAddr, state: &Path) -> Vec<String> {
    let apps = ls(admin, state);
    APPS.iter()
        .map(|name| {
            let app = apps.iter().find(|a| a["name"] == *name).unwrap();
            format!("{name}:{}", app["hibernation"].as_str().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn the_memory_ceiling_hibernates_the_least_recently_used_idle_apps_first() {
    // What one echo instance holds, on a gateway without a ceiling.
    let one = {
        let state = ScratchDir::new("ceiling-probe");
        let (gateway, admin) = start(&state.0, "", &["a"]);
        touch(&gateway, admin, &state.0, "a").await;
        memory_used(admin, &state.0)
    };
    assert!(one > 0.0, "an instance holds no memory?");
    // Room for three instances, not four.
    let ceiling_mb = (3.0 * one / MIB).ceil();
    assert!(
        ceiling_mb * MIB < 4.0 * one,
        "one instance holds {one} bytes: no whole MiB fits three and not four"
    );
    let state = ScratchDir::new("ceiling");
    let (gateway, admin) = start(
        &state.0,
        &format!("max_guest_memory_mb = {ceiling_mb}"),
        &APPS,
    );
    // Whatever the start did (four apps, room for three), touching them in
    // order leaves the last three touched awake: each wake makes room by
    // hibernating the least recently used idle one.
    for name in APPS {
        touch(&gateway, admin, &state.0, name).await;
    }
    wait_for_app(admin, &state.0, "a", "hibernated", |app| {
        app["hibernation"] == "hibernated"
    })
    .await;
    assert_eq!(
        states(admin, &state.0),
        ["a:hibernated", "b:awake", "c:awake", "d:awake"]
    );
    assert!(memory_used(admin, &state.0) <= ceiling_mb * MIB);

    // Recency, not order of deployment: c and b used again, so d is the
    // least recently used when a wakes.
    touch(&gateway, admin, &state.0, "c").await;
    touch(&gateway, admin, &state.0, "b").await;
    touch(&gateway, admin, &state.0, "a").await;
    wait_for_app(admin, &state.0, "d", "hibernated", |app| {
        app["hibernation"] == "hibernated"
    })
    .await;
    assert_eq!(
        states(admin, &state.0),
        ["a:awake", "b:awake", "c:awake", "d:hibernated"]
    );
    let (code, events, stderr) = cli(admin, &state.0, &["events", "a"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        events.contains("to hibernate, to make room for this one"),
        "{events}"
    );

    // Nothing idle to hibernate: three connections held open, and a wake
    // of d is refused with an event that says why.
    let mut held = Vec::new();
    for name in ["a", "b", "c"] {
        let mut conn = TcpStream::connect(gateway.addr(name)).await.unwrap();
        assert_eq!(ask(&mut conn, "hold").await, "hold");
        held.push(conn);
    }
    let mut refused = TcpStream::connect(gateway.addr("d")).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(TIMEOUT, refused.read(&mut buf))
        .await
        .expect("the refused connection was never closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let (code, events, stderr) = cli(admin, &state.0, &["events", "d"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        events.contains("limit max_guest_memory_mb hit")
            && events.contains("waiting connections refused")
            && events.contains("Raise max_guest_memory_mb"),
        "{events}"
    );
    // The held connections were never disturbed.
    for conn in &mut held {
        assert_eq!(ask(conn, "still").await, "still");
    }
}
