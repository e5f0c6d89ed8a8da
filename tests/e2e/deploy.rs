//! Deploy and operate: the admin API and the CLI on it, hot swap with
//! draining, rollback, persistence across restarts and `kill -9`, the
//! dashboard in a real browser, and metrics.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpStream;

use crate::browser::{Browser, LOAD_TIMEOUT};
use crate::support::{Gateway, Output, ScratchDir, ask, guest, root};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A gateway with an admin API and state directory `state`.
pub(crate) fn start_admin(state: &Path, failpoint: Option<&str>) -> (Gateway, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command
        .args(["serve", "--admin", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .env("XDG_CACHE_HOME", root().join("target/sockgate-test-xdg"));
    if let Some(point) = failpoint {
        command.env("SOCKGATE_FAILPOINT", point);
    }
    let gateway = Gateway::spawn(command, ScratchDir::new("admin"));
    let admin = gateway
        .stdout
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("admin API and dashboard on http://"))
        .and_then(|rest| rest.split('/').next())
        .expect("no admin address printed")
        .parse()
        .unwrap();
    (gateway, admin)
}

/// Runs the CLI against `admin`; returns exit code, stdout, stderr.
pub(crate) fn cli(admin: SocketAddr, state: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .args(args)
        .env("SOCKGATE_ADMIN", admin.to_string())
        .env("SOCKGATE_STATE_DIR", state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub(crate) fn deploy(
    admin: SocketAddr,
    state: &Path,
    name: &str,
    component: &Path,
    extra: &[&str],
) {
    let component = component.display().to_string();
    let mut args = vec!["deploy", name, component.as_str()];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = cli(admin, state, &args);
    assert_eq!(code, 0, "deploy failed: {stdout}{stderr}");
}

pub(crate) fn ls(admin: SocketAddr, state: &Path) -> Vec<Value> {
    let (code, stdout, stderr) = cli(admin, state, &["ls", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str::<Value>(&stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn app_addr(admin: SocketAddr, state: &Path, name: &str) -> SocketAddr {
    ls(admin, state)
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no app {name}"))["tcp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// `echo` answers `compute 1` with itself, `hostile` computes: the two
/// versions are told apart by one request.
pub(crate) async fn version_of(stream: &mut TcpStream) -> &'static str {
    match ask(stream, "compute 1").await.as_str() {
        "compute 1" => "echo",
        reply if reply.starts_with("computed ") => "hostile",
        other => panic!("unexpected reply {other:?}"),
    }
}

pub(crate) fn blobs(state: &Path) -> usize {
    std::fs::read_dir(state.join("blobs")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn a_redeploy_takes_new_connections_while_old_ones_keep_their_version() {
    let dir = ScratchDir::new("deploy-swap");
    let state = dir.0.join("state");
    let (gateway, admin) = start_admin(&state, None);
    deploy(
        admin,
        &state,
        "svc",
        &guest("echo"),
        &["--listen", "127.0.0.1:0", "--instances", "1"],
    );
    let addr = app_addr(admin, &state, "svc");
    let mut old = TcpStream::connect(addr).await.unwrap();
    assert_eq!(version_of(&mut old).await, "echo");

    deploy(admin, &state, "svc", &guest("hostile"), &[]);
    assert_eq!(app_addr(admin, &state, "svc"), addr, "the address changed");
    let mut new = TcpStream::connect(addr).await.unwrap();
    assert_eq!(version_of(&mut new).await, "hostile");
    assert_eq!(
        version_of(&mut old).await,
        "echo",
        "the old connection lost its version"
    );

    let (code, stdout, stderr) = cli(admin, &state, &["rollback", "svc"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("back at version 1"), "{stdout}");
    let mut after = TcpStream::connect(addr).await.unwrap();
    assert_eq!(version_of(&mut after).await, "echo");
    assert_eq!(
        version_of(&mut new).await,
        "hostile",
        "rollback broke a version-2 connection"
    );
    assert_eq!(version_of(&mut old).await, "echo");

    let (code, events, _) = cli(admin, &state, &["events", "svc"]);
    assert_eq!(code, 0);
    let deploys: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("deployed version"))
        .collect();
    assert_eq!(deploys.len(), 3, "{events}");
    assert!(deploys[2].contains("deployed version 1"), "{events}");
    drop(gateway);
}

/// Once `rm` has returned, the app's port refuses connections: its
/// listener is closed, not merely asked to close (a connection the kernel
/// completed meanwhile would be reset). Its open connections drain.
#[tokio::test]
async fn a_removed_apps_port_refuses_connections_once_rm_returns() {
    let dir = ScratchDir::new("deploy-rm");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    for round in 0..5 {
        deploy(
            admin,
            &state,
            "gone",
            &guest("echo"),
            &["--listen", "127.0.0.1:0"],
        );
        let addr = app_addr(admin, &state, "gone");
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut open, "before").await, "before");
        let (code, _, stderr) = cli(admin, &state, &["rm", "gone"]);
        assert_eq!(code, 0, "{stderr}");
        match TcpStream::connect(addr).await {
            Err(err) => assert_eq!(
                err.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "round {round}: {err}"
            ),
            Ok(_) => panic!("round {round}: {addr} took a connection after `rm` returned"),
        }
        assert_eq!(ask(&mut open, "after").await, "after", "round {round}");
    }
}

#[tokio::test]
async fn a_sync_world_component_deploys_and_its_world_is_reported() {
    let dir = ScratchDir::new("deploy-sync");
    let state = dir.0.join("state");
    let (gateway, admin) = start_admin(&state, None);
    let component = guest("sync-echo").display().to_string();
    let (code, stdout, stderr) = cli(
        admin,
        &state,
        &["deploy", "sync", &component, "--listen", "127.0.0.1:0"],
    );
    assert_eq!(code, 0, "deploy failed: {stdout}{stderr}");
    assert!(
        stdout.contains("world conn-handler-sync"),
        "deploy did not report the world: {stdout}"
    );
    deploy(
        admin,
        &state,
        "shared",
        &guest("echo"),
        &["--listen", "127.0.0.1:0"],
    );

    let apps = ls(admin, &state);
    let world_of = |name: &str| {
        apps.iter().find(|a| a["name"] == name).unwrap()["load"]["world"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(world_of("sync"), "conn-handler-sync");
    assert_eq!(world_of("shared"), "conn-handler");

    // Served, one instance per connection.
    let addr = app_addr(admin, &state, "sync");
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut first, "one").await, "one");
    assert_eq!(ask(&mut second, "two").await, "two");
    let (code, events, _) = cli(admin, &state, &["events", "sync"]);
    assert_eq!(code, 0);
    assert!(
        events.contains("deployed version 1") && events.contains("world conn-handler-sync"),
        "{events}"
    );
    drop(gateway);
}

#[tokio::test]
async fn a_replaced_sync_apps_connections_drain_then_close_at_the_deadline() {
    let dir = ScratchDir::new("deploy-sync-drain");
    let state = dir.0.join("state");
    let config = dir.0.join("sockgate.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ncache_dir = {:?}\nadmin = \"127.0.0.1:0\"\nstate_dir = {:?}\n\
             drain_secs = 1\n",
            crate::support::shared_cache_dir().display().to_string(),
            state.display().to_string()
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command.arg("serve").arg("--config").arg(&config);
    let gateway = Gateway::spawn(command, ScratchDir::new("admin"));
    let admin: SocketAddr = gateway
        .stdout
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("admin API and dashboard on http://"))
        .and_then(|rest| rest.split('/').next())
        .expect("no admin address printed")
        .parse()
        .unwrap();
    deploy(
        admin,
        &state,
        "svc",
        &guest("sync-echo"),
        &["--listen", "127.0.0.1:0"],
    );
    let addr = app_addr(admin, &state, "svc");
    let mut old = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut old, "before").await, "before");

    deploy(admin, &state, "svc", &guest("echo"), &[]);
    // The old version's connection goes on for the drain period...
    assert_eq!(ask(&mut old, "draining").await, "draining");
    // ...and is closed once the deadline passes, with an event saying so.
    let mut buf = [0; 16];
    let closed = tokio::time::timeout(TIMEOUT, tokio::io::AsyncReadExt::read(&mut old, &mut buf))
        .await
        .expect("the drain deadline did not close the old connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let (code, events, _) = cli(admin, &state, &["events", "svc"]);
    assert_eq!(code, 0);
    assert!(events.contains("drain deadline passed"), "{events}");
    // New connections get the new version.
    let mut new = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut new, "after").await, "after");
    drop(gateway);
}

#[tokio::test]
async fn a_restart_restores_every_app_as_it_was() {
    let dir = ScratchDir::new("deploy-restart");
    let state = dir.0.join("state");
    let (gateway, admin) = start_admin(&state, None);
    deploy(
        admin,
        &state,
        "one",
        &guest("echo"),
        &["--listen", "127.0.0.1:0"],
    );
    deploy(
        admin,
        &state,
        "two",
        &guest("echo"),
        &["--listen", "127.0.0.1:0"],
    );
    deploy(admin, &state, "two", &guest("hostile"), &[]);
    let before = ls(admin, &state);
    drop(gateway); // SIGKILL

    let (_gateway, admin) = start_admin(&state, None);
    let after = ls(admin, &state);
    for (b, a) in before.iter().zip(&after) {
        for field in ["name", "version", "digest", "tcp"] {
            assert_eq!(a[field], b[field], "{field} changed over the restart");
        }
    }
    let mut two = TcpStream::connect(app_addr(admin, &state, "two"))
        .await
        .unwrap();
    assert_eq!(version_of(&mut two).await, "hostile");
    let mut one = TcpStream::connect(app_addr(admin, &state, "one"))
        .await
        .unwrap();
    assert_eq!(version_of(&mut one).await, "echo");
}

#[tokio::test]
async fn kill_9_at_any_point_of_a_deploy_leaves_the_old_or_the_new_version() {
    for (point, survivor) in [
        ("deploy-after-blob", "echo"),
        ("deploy-before-record", "echo"),
        ("deploy-before-record-rename", "echo"),
        ("deploy-after-record", "hostile"),
    ] {
        let dir = ScratchDir::new("deploy-kill");
        let state = dir.0.join("state");
        let (gateway, admin) = start_admin(&state, None);
        deploy(
            admin,
            &state,
            "svc",
            &guest("echo"),
            &["--listen", "127.0.0.1:0"],
        );
        drop(gateway);

        let (gateway, admin) = start_admin(&state, Some(point));
        let hostile = guest("hostile").display().to_string();
        let state_for_cli = state.clone();
        let deploying =
            std::thread::spawn(move || cli(admin, &state_for_cli, &["deploy", "svc", &hostile]));
        assert!(
            gateway.stderr.wait_for(TIMEOUT, |t| t
                .contains(&format!("failpoint {point} reached"))),
            "{point} not reached:\n{}",
            gateway.stderr.text()
        );
        drop(gateway); // kill -9 while frozen at the point
        let (code, _, _) = deploying.join().unwrap();
        assert_ne!(
            code, 0,
            "{point}: the deploy claims success although the gateway died"
        );

        let (_gateway, admin) = start_admin(&state, None);
        let mut conn = TcpStream::connect(app_addr(admin, &state, "svc"))
            .await
            .unwrap();
        assert_eq!(
            version_of(&mut conn).await,
            survivor,
            "after a kill at {point}"
        );
        // A component stored for a version never recorded is collected by
        // the next start (in the background): only the survivor's stays.
        let expected = if survivor == "echo" { 1 } else { 2 };
        let deadline = std::time::Instant::now() + TIMEOUT;
        while blobs(&state) != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "after a kill at {point}: {} components kept, {expected} expected",
                blobs(&state)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let dir = ScratchDir::new("deploy-refuse");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    deploy(
        admin,
        &state,
        "svc",
        &guest("echo"),
        &["--listen", "127.0.0.1:0"],
    );
    let before = ls(admin, &state);
    let blobs_before = blobs(&state);

    // Authentication.
    let (code, _, stderr) = cli(admin, &state, &["ls", "--token", "not-the-token"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("wrong admin token"), "{stderr}");
    let raw = raw_request(
        admin,
        "GET /v1/apps HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");

    // Not wasm, wrong world, bad name, too large.
    let text = dir.0.join("notes.wasm");
    std::fs::write(&text, "not a component").unwrap();
    let (code, _, stderr) = cli(admin, &state, &["deploy", "svc", text.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not a WebAssembly file"), "{stderr}");
    let wrong = guest("wrong-world").display().to_string();
    let (code, _, stderr) = cli(admin, &state, &["deploy", "svc", &wrong]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("test:wrong-world/database"), "{stderr}");
    let echo = guest("echo").display().to_string();
    let (code, _, stderr) = cli(admin, &state, &["deploy", "../x", &echo, "--port", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("invalid app name"), "{stderr}");
    let raw = authed(
        admin,
        &state,
        "PUT /v1/apps/svc HTTP/1.1\r\nsockgate-settings: {\"listen\":\"127.0.0.1:0\"}\r\n\
         content-length: 999999999\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    let raw = authed(admin, &state, "GET /v1/apps/..%2Fx HTTP/1.1");
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");

    // Nothing changed.
    let after = ls(admin, &state);
    assert_eq!(after.len(), before.len());
    assert_eq!(after[0]["version"], before[0]["version"]);
    assert_eq!(after[0]["digest"], before[0]["digest"]);
    assert_eq!(blobs(&state), blobs_before, "a refused upload left a blob");
}

/// A request to the admin API with the token of `state`: `head` is the
/// request line, optionally followed by header lines.
pub(crate) fn authed(admin: SocketAddr, state: &Path, head: &str) -> String {
    let token = std::fs::read_to_string(state.join("admin-token")).unwrap();
    let (request_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    raw_request(
        admin,
        &format!(
            "{request_line}\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n{headers}\r\n",
            token.trim()
        ),
    )
}

pub(crate) fn raw_request(addr: SocketAddr, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[tokio::test]
async fn logs_follow_streams_a_guests_output() {
    let dir = ScratchDir::new("deploy-logs");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    deploy(
        admin,
        &state,
        "talker",
        &guest("hostile"),
        &["--listen", "127.0.0.1:0"],
    );
    let mut follower = Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .args(["logs", "talker", "-f"])
        .env("SOCKGATE_ADMIN", admin.to_string())
        .env("SOCKGATE_STATE_DIR", &state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let output = Output::default();
    output.collect_from(follower.stdout.take().unwrap());
    let mut conn = TcpStream::connect(app_addr(admin, &state, "talker"))
        .await
        .unwrap();
    // Lines printed after the follower started arrive while it runs.
    for i in 0..3 {
        assert_eq!(
            ask(&mut conn, &format!("log followed line {i}")).await,
            format!("log followed line {i}")
        );
        assert!(
            output.wait_for(TIMEOUT, |t| t.contains(&format!("followed line {i}"))),
            "line {i} not streamed: {}",
            output.text()
        );
    }
    assert!(follower.try_wait().unwrap().is_none(), "logs -f exited");
    let _ = follower.kill();
    let _ = follower.wait();
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let dir = ScratchDir::new("deploy-metrics");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    deploy(
        admin,
        &state,
        "echo",
        &guest("echo"),
        &["--listen", "127.0.0.1:0"],
    );
    let scrape = || {
        let raw = authed(admin, &state, "GET /metrics HTTP/1.1");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        parse_prometheus(body)
    };
    let before = scrape();
    let mut conn = TcpStream::connect(app_addr(admin, &state, "echo"))
        .await
        .unwrap();
    assert_eq!(ask(&mut conn, "hello metrics").await, "hello metrics");
    let after = scrape();
    let key = "sockgate_bytes_total{app=\"echo\",direction=\"in\"}";
    assert!(
        after[key] >= before[key] + 14.0,
        "{key}: {} → {}",
        before[key],
        after[key]
    );
    assert_eq!(after["sockgate_connections_active{app=\"echo\"}"], 1.0);
    assert!(after.contains_key("sockgate_traps_total{app=\"echo\",cause=\"cpu-budget\"}"));
    assert!(
        after["sockgate_compile_cache_total{result=\"hit\"}"]
            + after["sockgate_compile_cache_total{result=\"miss\"}"]
            >= 1.0
    );
}

/// Parses the text exposition format strictly enough to catch mistakes:
/// every family has HELP and TYPE, every sample `name{labels} number`.
pub(crate) fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut samples = std::collections::HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            typed.insert(parts.next().unwrap().to_owned());
            assert!(
                matches!(parts.next(), Some("counter" | "gauge" | "histogram")),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample {line}"));
        let name = series.split('{').next().unwrap();
        // A histogram's samples are its name with `_bucket`, `_sum`, `_count`.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its TYPE: {line}");
        assert!(series.ends_with('}') || !series.contains('{'), "{line}");
        samples.insert(
            series.to_owned(),
            value.parse::<f64>().unwrap_or_else(|_| panic!("{line}")),
        );
    }
    samples
}

/// The overview lists the apps with their events (the live charts have
/// their own test: `dashboard.rs`).
#[test]
fn the_dashboard_shows_the_apps_in_chromium() {
    let dir = ScratchDir::new("deploy-dashboard");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    deploy(
        admin,
        &state,
        "alpha",
        &guest("echo"),
        &["--listen", "127.0.0.1:0"],
    );
    deploy(
        admin,
        &state,
        "beta",
        &guest("hostile"),
        &["--listen", "127.0.0.1:0"],
    );
    let mut browser = Browser::start(
        &dir.0.join("profile"),
        &dir.0.join("chromium.log"),
        1200,
        900,
    );
    browser.log_in(admin, &state);
    let dom = browser.wait_for(
        "both apps and their events",
        "document.body.innerText.includes('beta') \
         && document.body.innerText.includes('instance started') \
         && document.documentElement.outerHTML",
        LOAD_TIMEOUT,
    );
    let dom = dom.as_str().unwrap();
    for expected in [
        "<h1>sockgate</h1>",
        ">alpha<",
        ">beta<",
        "deployed version 1",
        "instance started",
    ] {
        assert!(
            dom.contains(expected),
            "{expected:?} missing from the dashboard:\n{dom}"
        );
    }
    let png = browser.screenshot();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5000,
        "not a real screenshot"
    );
    std::fs::write(root().join("target/dashboard.png"), png).unwrap();
}
