//! Lazy start (issue 18, part 2): a restart registers every deployed app
//! *dormant* — listed at once, served by its port and its names — and
//! loads each on its first connection. With 200 apps: all `dormant` right
//! after `ready`, the first connection to any of them served over TCP, TLS
//! (by SNI) and QUIC, HTTP apps over HTTP/2 and HTTP/3 before they are
//! loaded; 50 connections at once to one dormant app; a damaged
//! component failing its app alone; a deploy beating the lazy load.
//!
//! The bulk of the 200 apps are written as the gateway writes them: the
//! record of one deployed app, copied under other names (200 deploys
//! would take a minute; the copies take a moment and are what a restart
//! reads anyway).

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::deploy::{cli, deploy, ls, version_of};
use crate::http_apps::{curl, h3_get_named, https_args};
use crate::quic::{DEFAULT_ALPN, connect_quic, echo_stream, quic_client};
use crate::support::{ScratchDir, ask, guest};
use crate::tls_support::{TlsGateway, client_config, connect, dev_ca_root, echo_through};

const TIMEOUT: Duration = Duration::from_secs(60);
/// How the gateway writes the event of a load on first use.
const LOADED: &str = "loaded on first use (";

/// A dev-CA gateway for base domain `localhost` with an admin API and
/// QUIC, whose state directory is `state`; and its admin address.
fn gateway(state: &Path) -> (TlsGateway, SocketAddr) {
    let gw = TlsGateway::start(
        state,
        "admin = \"127.0.0.1:0\"\n\n[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"localhost\"\n\
         certificates = \"dev-ca\"\n\n[http]\nenabled = false\n\n[quic]\nlisten = \"127.0.0.1:0\"\n",
        &[],
    );
    let admin = sockgate_testkit::output::printed_admin(&gw.gateway.stdout.text())
        .expect("no admin address printed");
    (gw, admin)
}

/// Every app `ls --json` lists (failed ones included), by name.
fn apps(admin: SocketAddr, state: &Path) -> std::collections::BTreeMap<String, Value> {
    ls(admin, state)
        .into_iter()
        .map(|app| (app["name"].as_str().unwrap().to_owned(), app))
        .collect()
}

fn status(admin: SocketAddr, state: &Path, name: &str) -> Value {
    apps(admin, state)
        .remove(name)
        .unwrap_or_else(|| panic!("no app {name}"))
}

/// Writes copies of app `from`'s record as apps `names` (as the gateway
/// writes records: whole, private to its user).
fn copy_record(state: &Path, from: &str, names: impl Iterator<Item = String>) {
    let text = std::fs::read_to_string(state.join(format!("apps/{from}.json"))).unwrap();
    let record: Value = serde_json::from_str(&text).unwrap();
    for name in names {
        let mut copy = record.clone();
        copy["name"] = Value::from(name.as_str());
        for version in copy["versions"].as_array_mut().unwrap() {
            version["config"]["name"] = Value::from(name.as_str());
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(state.join(format!("apps/{name}.json")))
            .unwrap();
        std::io::Write::write_all(&mut file, &serde_json::to_vec_pretty(&copy).unwrap()).unwrap();
    }
}

/// Polls `sockgate events NAME` until an event contains `needle`.
async fn wait_for_event(admin: SocketAddr, state: &Path, name: &str, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (code, stdout, stderr) = cli(admin, state, &["events", name]);
        assert_eq!(code, 0, "{stderr}");
        if stdout.contains(needle) {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "no event {needle:?} in time:\n{stdout}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Echoes a line through app `name` over TLS (SNI `name.localhost`).
async fn echo_over_tls(gw: &TlsGateway, state: &Path, name: &str) {
    let config = client_config(&[dev_ca_root(state)], &[]);
    let mut stream = connect(gw.tls, &format!("{name}.localhost"), config)
        .await
        .unwrap();
    echo_through(&mut stream, format!("{name} over tls\n").as_bytes()).await;
}

/// Echoes a line through app `name` over QUIC.
async fn echo_over_quic(gw: &TlsGateway, state: &Path, name: &str) {
    let client = quic_client(&[dev_ca_root(state)], &[DEFAULT_ALPN]);
    let conn = connect_quic(&client, gw.quic.unwrap(), &format!("{name}.localhost"))
        .await
        .unwrap();
    let line = format!("{name} over quic").into_bytes();
    assert_eq!(echo_stream(&conn, line.clone()).await, line);
}

#[tokio::test]
async fn a_restart_with_200_apps_lists_all_dormant_at_once_and_serves_any_first_connection() {
    let dir = ScratchDir::new("lazy-200");
    let state = dir.0.join("state");
    let echo = guest("echo");
    let (gw, admin) = gateway(&state);
    // Deployed for real: one by name (copied 194 times), three with ports
    // of their own, and two HTTP apps (WASI 0.3 and 0.2).
    deploy(admin, &state, "app-000", &echo, &[]);
    for name in ["port-1", "port-2", "port-3"] {
        deploy(admin, &state, name, &echo, &["--listen", "127.0.0.1:0"]);
    }
    deploy(admin, &state, "web", &guest("wasi-http-probe"), &[]);
    deploy(admin, &state, "web2", &guest("wasi-http-probe-p2"), &[]);
    drop(gw);
    copy_record(&state, "app-000", (1..195).map(|i| format!("app-{i:03}")));

    let started = Instant::now();
    let (gw, admin) = gateway(&state);
    let to_ready = started.elapsed();
    let listed = apps(admin, &state);
    assert_eq!(listed.len(), 200, "{:?}", listed.keys());
    for (name, app) in &listed {
        assert_eq!(app["state"], "running", "{name}: {app}");
        assert_eq!(app["hibernation"], "dormant", "{name}: {app}");
        assert_eq!(app["instances"], 0, "{name}: {app}");
    }
    assert_eq!(listed["web"]["load"]["world"], "http-service");
    assert_eq!(listed["web2"]["load"]["world"], "http-proxy");
    // Nothing was loaded before `ready`: 200 loads from the compile cache
    // would show here; registering them takes well under this.
    assert!(
        to_ready < Duration::from_secs(20),
        "restart to ready took {to_ready:?}"
    );
    let (_, table, _) = cli(admin, &state, &["ls"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("app-137 ") && l.contains("dormant")),
        "{table}"
    );

    // The first connection to any of them is served: TLS by SNI, QUIC,
    // TCP on the app's own port.
    let first = Instant::now();
    echo_over_tls(&gw, &state, "app-137").await;
    let first_byte = first.elapsed();
    assert!(first_byte < Duration::from_secs(10), "{first_byte:?}");
    echo_over_quic(&gw, &state, "app-042").await;
    let tcp: SocketAddr = listed["port-2"]["tcp"].as_str().unwrap().parse().unwrap();
    let mut client = TcpStream::connect(tcp).await.unwrap();
    assert_eq!(ask(&mut client, "own port").await, "own port");
    drop(client);
    for name in ["app-137", "app-042", "port-2"] {
        let events = wait_for_event(admin, &state, name, LOADED).await;
        assert!(events.contains("from the compile cache"), "{events}");
    }

    // HTTP apps are offered h2 and h3 before they are loaded.
    let (args, base) = https_args(&state, &gw, "web");
    let url = format!("{base}/info?via=h2");
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(&["--http2", url.as_str()]);
    let fetched = curl(&all);
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert_eq!(fetched.version, "2", "{}", fetched.body);
    assert!(fetched.body.contains("world: p3"), "{}", fetched.body);
    let root = dev_ca_root(&state);
    let h3 = quic_client(std::slice::from_ref(&root), &["h3"]);
    let (code, body, _) = h3_get_named(&h3, gw.quic.unwrap(), "web2.localhost", "/info").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("world: p2"), "{body}");

    // Those are awake now; every other app is still dormant.
    let listed = apps(admin, &state);
    let awake: Vec<&str> = listed
        .iter()
        .filter(|(_, app)| app["hibernation"] != "dormant")
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        awake,
        ["app-042", "app-137", "port-2", "web", "web2"],
        "{listed:?}"
    );
    for name in &awake {
        assert_eq!(listed[*name]["hibernation"], "awake", "{}", listed[*name]);
    }
    // And a second connection finds the loaded app: no second load.
    echo_over_tls(&gw, &state, "app-137").await;
    let (_, events, _) = cli(admin, &state, &["events", "app-137"]);
    assert_eq!(events.matches(LOADED).count(), 1, "{events}");
}

/// A gateway restarted over `apps` (name, guest, whether it has a port
/// of its own), deployed before the restart.
fn restarted_with(
    label: &str,
    apps: &[(&str, &str, bool)],
) -> (ScratchDir, TlsGateway, SocketAddr) {
    let dir = ScratchDir::new(label);
    let state = dir.0.join("state");
    let (gw, admin) = gateway(&state);
    for (name, component, with_port) in apps {
        let extra: &[&str] = if *with_port {
            &["--listen", "127.0.0.1:0"]
        } else {
            &[]
        };
        deploy(admin, &state, name, &guest(component), extra);
    }
    drop(gw);
    let (gw, admin) = gateway(&state);
    (dir, gw, admin)
}

#[tokio::test]
async fn fifty_connections_at_once_to_a_dormant_app_are_all_served_by_one_load() {
    let (dir, gw, admin) = restarted_with(
        "lazy-50",
        &[("echo", "echo", true), ("named", "echo", false)],
    );
    let state = dir.0.join("state");
    assert_eq!(status(admin, &state, "echo")["hibernation"], "dormant");
    assert_eq!(status(admin, &state, "named")["hibernation"], "dormant");
    let tcp: SocketAddr = status(admin, &state, "echo")["tcp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let config = client_config(&[dev_ca_root(&state)], &[]);
    let tls = gw.tls;
    // 50 on the app's own port and 50 by name over TLS, all at once.
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let config = config.clone();
            tokio::spawn(async move {
                let line = format!("client {i}\n");
                if i % 2 == 0 {
                    let mut client = TcpStream::connect(tcp).await.unwrap();
                    let back = tokio::time::timeout(TIMEOUT, ask(&mut client, line.trim_end()))
                        .await
                        .expect("no echo in time");
                    assert_eq!(back, line.trim_end());
                    client.shutdown().await.unwrap();
                } else {
                    let mut stream = connect(tls, "named.localhost", config).await.unwrap();
                    echo_through(&mut stream, line.as_bytes()).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    for name in ["echo", "named"] {
        let app = status(admin, &state, name);
        assert_eq!(app["hibernation"], "awake", "{app}");
        assert_eq!(app["refused"], 0, "{app}");
        let (_, events, _) = cli(admin, &state, &["events", name]);
        assert_eq!(events.matches(LOADED).count(), 1, "one load: {events}");
    }
    assert!(!gw.gateway.stderr.text().contains("refused"));
}

#[tokio::test]
async fn a_dormant_app_whose_component_was_damaged_fails_alone_on_its_first_connection() {
    let (dir, gw, admin) = restarted_with(
        "lazy-damaged",
        &[("victim", "sync-echo", false), ("neighbour", "echo", false)],
    );
    let state = dir.0.join("state");
    // Damaged while the gateway runs, after the restart registered it.
    let victim = status(admin, &state, "victim");
    assert_eq!(victim["hibernation"], "dormant", "{victim}");
    let blob = Path::new(victim["component"].as_str().unwrap()).to_owned();
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, b"not the component any more").unwrap();

    // Its first connection is closed without a byte.
    let config = client_config(&[dev_ca_root(&state)], &[]);
    let mut stream = connect(gw.tls, "victim.localhost", config).await.unwrap();
    stream.write_all(b"hello\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut buf))
        .await
        .expect("the connection to the failed app was not closed");
    assert!(buf.is_empty(), "{read:?} {buf:?}");

    // It is `failed`, saying why; its events too.
    let deadline = Instant::now() + TIMEOUT;
    let failed = loop {
        let app = status(admin, &state, "victim");
        if app["state"] == "failed" {
            break app;
        }
        assert!(Instant::now() < deadline, "not failed in time: {app}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("damaged or replaced"), "{failed}");
    let events = wait_for_event(admin, &state, "victim", "not started").await;
    assert!(events.contains("damaged or replaced"), "{events}");
    let (_, table, stderr) = cli(admin, &state, &["ls"]);
    assert!(
        format!("{table}{stderr}").contains("app victim not started"),
        "{table}{stderr}"
    );

    // The neighbour serves; the victim's name no longer does.
    echo_over_tls(&gw, &state, "neighbour").await;
    echo_over_quic(&gw, &state, "neighbour").await;
    let config = client_config(&[dev_ca_root(&state)], &[]);
    assert!(connect(gw.tls, "victim.localhost", config).await.is_err());
    // A deploy brings it back.
    deploy(admin, &state, "victim", &guest("echo"), &[]);
    echo_over_tls(&gw, &state, "victim").await;
}

#[tokio::test]
async fn a_deploy_to_a_dormant_app_wins_over_its_load_on_first_use() {
    let (dir, gw, admin) = restarted_with(
        "lazy-deploy",
        &[("echo", "echo", true), ("quiet", "echo", true)],
    );
    let state = dir.0.join("state");
    let tcp = |name: &str| -> SocketAddr {
        status(admin, &state, name)["tcp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // A deploy to a dormant app nobody connected to: the new version
    // serves on the same port.
    let quiet = tcp("quiet");
    deploy(admin, &state, "quiet", &guest("hostile"), &[]);
    let app = status(admin, &state, "quiet");
    assert_eq!(app["version"], 2, "{app}");
    assert_eq!(app["hibernation"], "awake", "{app}");
    let mut client = TcpStream::connect(quiet).await.unwrap();
    assert_eq!(version_of(&mut client).await, "hostile");

    // A connection starts the load of `echo`, and a deploy races it.
    let echo = tcp("echo");
    let mut first = TcpStream::connect(echo).await.unwrap();
    first.write_all(b"compute 1\n").await.unwrap();
    deploy(admin, &state, "echo", &guest("hostile"), &[]);
    // The first connection was served, by one version or the other.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        let n = tokio::time::timeout(TIMEOUT, first.read(&mut byte))
            .await
            .expect("the first connection was not served")
            .unwrap();
        assert_eq!(n, 1, "closed after {line:?}");
        line.push(byte[0]);
    }
    // The load either switched before the deploy or was dropped for it;
    // either way the deploy's version serves from now on.
    assert!(
        gw.gateway.stderr.wait_for(TIMEOUT, |text| {
            text.lines().any(|l| {
                l.contains("app=echo")
                    && (l.contains(LOADED) || l.contains("load on first use was dropped"))
            })
        }),
        "{}",
        gw.gateway.stderr.text()
    );
    let app = status(admin, &state, "echo");
    assert_eq!(app["version"], 2, "{app}");
    assert_eq!(app["hibernation"], "awake", "{app}");
    for _ in 0..3 {
        let mut client = TcpStream::connect(echo).await.unwrap();
        assert_eq!(version_of(&mut client).await, "hostile");
    }
}

#[tokio::test]
async fn an_app_recorded_before_worlds_loads_at_start_once_then_starts_dormant() {
    let dir = ScratchDir::new("lazy-old-record");
    let state = dir.0.join("state");
    let (gw, admin) = gateway(&state);
    deploy(admin, &state, "old", &guest("echo"), &[]);
    drop(gw);
    // The record as a sockgate older than lazy start wrote it: no world.
    let path = state.join("apps/old.json");
    let mut record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for version in record["versions"].as_array_mut().unwrap() {
        assert!(version.as_object_mut().unwrap().remove("world").is_some());
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();

    // Loaded at start, as before; its world is recorded then.
    let (gw, admin) = gateway(&state);
    assert_eq!(status(admin, &state, "old")["hibernation"], "awake");
    echo_over_tls(&gw, &state, "old").await;
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(record["versions"][0]["world"], "conn-handler", "{record}");
    drop(gw);

    // The next restart leaves it dormant.
    let (gw, admin) = gateway(&state);
    assert_eq!(status(admin, &state, "old")["hibernation"], "dormant");
    echo_over_tls(&gw, &state, "old").await;
    wait_for_event(admin, &state, "old", LOADED).await;
}
