//! The admin listener under attack: the dashboard's cookie used from a page
//! of another origin (or from another address), half-sent requests, and a
//! deploy that used to panic the gateway at every later start.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::deploy::{blobs, cli, deploy, ls, start_admin};
use crate::limits::connect_from;
use crate::support::{ScratchDir, ask, guest};

const WAIT: Duration = Duration::from_secs(30);

/// Sends `request` from `local_ip` and returns the whole response.
async fn send_from(local_ip: &str, addr: SocketAddr, request: &str) -> String {
    let mut stream = connect_from(local_ip, addr).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("no response")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// The value of header `name` in a raw response.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn token(state: &Path) -> String {
    std::fs::read_to_string(state.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn version_of(admin: SocketAddr, state: &Path, name: &str) -> u64 {
    ls(admin, state)
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no app {name}"))["version"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn the_dashboard_cookie_is_a_session_that_cannot_roll_back_by_itself() {
    let dir = ScratchDir::new("sec-session");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    let echo = guest("echo");
    deploy(admin, &state, "svc", &echo, &["--listen", "127.0.0.1:0"]);
    deploy(admin, &state, "svc", &guest("hostile"), &[]);
    assert_eq!(version_of(admin, &state, "svc"), 2);
    let token = token(&state);
    let host = format!("host: {admin}\r\nconnection: close\r\n");

    // The token in a URL logs nobody in.
    let got = send_from(
        "127.0.0.1",
        admin,
        &format!("GET /login?token={token} HTTP/1.1\r\n{host}\r\n"),
    )
    .await;
    assert!(header(&got, "set-cookie").is_none(), "{got}");
    // Neither does a wrong token.
    let wrong = "token=not-the-token";
    let got = send_from(
        "127.0.0.1",
        admin,
        &format!(
            "POST /login HTTP/1.1\r\n{host}content-type: application/x-www-form-urlencoded\r\n\
             content-length: {}\r\n\r\n{wrong}",
            wrong.len()
        ),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 401"), "{got}");
    assert!(header(&got, "set-cookie").is_none(), "{got}");

    // The form posts the token; the cookie is a session id, not the token.
    let form = format!("token={token}");
    let got = send_from(
        "127.0.0.1",
        admin,
        &format!(
            "POST /login HTTP/1.1\r\n{host}content-type: application/x-www-form-urlencoded\r\n\
             content-length: {}\r\n\r\n{form}",
            form.len()
        ),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 303"), "{got}");
    let set_cookie = header(&got, "set-cookie").expect("no cookie set");
    assert!(!set_cookie.contains(&token), "the cookie holds the token");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = header(&got, "x-sockgate-csrf")
        .expect("no CSRF token")
        .to_owned();

    // The session reads...
    let read = |from: &'static str, path: &'static str| {
        let request = format!("GET {path} HTTP/1.1\r\n{host}cookie: {cookie}\r\n\r\n");
        async move { send_from(from, admin, &request).await }
    };
    let apps = read("127.0.0.1", "/v1/apps").await;
    assert!(apps.starts_with("HTTP/1.1 200"), "{apps}");
    let page = read("127.0.0.1", "/").await;
    assert!(
        page.contains(&csrf),
        "the dashboard does not carry its CSRF token"
    );
    assert_eq!(header(&page, "x-frame-options"), Some("DENY"));
    // ...from the client that logged in only.
    let elsewhere = read("127.0.0.2", "/v1/apps").await;
    assert!(elsewhere.starts_with("HTTP/1.1 401"), "{elsewhere}");

    // A change needs the CSRF header and this origin; the cookie alone, a
    // form from an app's page (another port: another origin), or the
    // header from another origin are all refused.
    let app_origin = format!("http://127.0.0.1:{}", admin.port() + 1);
    let own_origin = format!("http://{admin}");
    let rollback = |extra: String| {
        let request = format!(
            "POST /v1/apps/svc/rollback HTTP/1.1\r\n{host}cookie: {cookie}\r\n{extra}\
             content-length: 0\r\n\r\n"
        );
        async move { send_from("127.0.0.1", admin, &request).await }
    };
    for (extra, why) in [
        (String::new(), "the cookie alone"),
        (format!("origin: {own_origin}\r\n"), "no CSRF header"),
        (
            format!("origin: {app_origin}\r\nx-sockgate-csrf: {csrf}\r\n"),
            "another origin",
        ),
        (
            format!("x-sockgate-csrf: {csrf}\r\n"),
            "no Origin with the header",
        ),
        (
            format!(
                "origin: {own_origin}\r\nsec-fetch-site: same-site\r\nx-sockgate-csrf: {csrf}\r\n"
            ),
            "a same-site page",
        ),
        (
            format!(
                "origin: {own_origin}\r\nx-sockgate-csrf: {}\r\n",
                "0".repeat(64)
            ),
            "a wrong CSRF token",
        ),
    ] {
        let got = rollback(extra).await;
        assert!(got.starts_with("HTTP/1.1 403"), "{why}: {got}");
    }
    assert_eq!(
        version_of(admin, &state, "svc"),
        2,
        "a refused rollback rolled back"
    );
    let got = rollback(format!(
        "origin: {own_origin}\r\nsec-fetch-site: same-origin\r\nx-sockgate-csrf: {csrf}\r\n"
    ))
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(version_of(admin, &state, "svc"), 1);

    // The CLI's bearer token is unaffected; logout ends the session.
    let (code, _, stderr) = cli(admin, &state, &["rollback", "svc"]);
    assert_ne!(code, 4, "{stderr}");
    let got = send_from(
        "127.0.0.1",
        admin,
        &format!(
            "POST /logout HTTP/1.1\r\n{host}cookie: {cookie}\r\norigin: {own_origin}\r\n\
             content-length: 0\r\n\r\n"
        ),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 303"), "{got}");
    let after = read("127.0.0.1", "/v1/apps").await;
    assert!(after.starts_with("HTTP/1.1 401"), "{after}");
}

#[tokio::test]
async fn half_sent_requests_do_not_hold_the_admin_api() {
    let dir = ScratchDir::new("sec-admin-flood");
    let state = dir.0.join("state");
    let (gateway, admin) = start_admin(&state, None);
    let rss_before = gateway.rss_kib();

    // 300 connections from one address, each with a header line that
    // never ends: 200 KiB (over the head limit) or 16 KiB (under it, so
    // only the header deadline ends it).
    let started = Instant::now();
    let mut held = Vec::new();
    for n in 0..300 {
        let mut stream = connect_from("127.0.0.1", admin).await;
        let mut head = b"GET /v1/apps HTTP/1.1\r\nx-pad: ".to_vec();
        head.resize(if n % 2 == 0 { 16 } else { 200 } * 1024, b'a');
        // Refused connections fail the write: that is the point.
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&head)).await;
        held.push(stream);
    }

    // Meanwhile another client is served.
    let token = token(&state);
    let got = send_from(
        "127.0.0.2",
        admin,
        &format!(
            "GET /v1/apps HTTP/1.1\r\nhost: {admin}\r\nauthorization: Bearer {token}\r\n\
             connection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let rss_flooded = gateway.rss_kib();
    println!("admin RSS: {rss_before} KiB before, {rss_flooded} KiB under 300 half-sent requests");

    // Every half-sent request loses its connection (the header deadline is
    // 10 s), none is kept.
    let mut closed = 0;
    for stream in &mut held {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(
                (started + Duration::from_secs(25)).into(),
                stream.read(&mut buf),
            )
            .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    assert_eq!(
        closed,
        held.len(),
        "half-sent requests kept their connections"
    );
    let grown_mib = rss_flooded.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 40,
        "RSS grew by {grown_mib} MiB under 300 half-sent requests"
    );
    // And the API still answers.
    let (code, _, stderr) = cli(admin, &state, &["ls"]);
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn a_deploy_that_used_to_panic_the_gateway_is_refused_and_nothing_is_persisted() {
    let dir = ScratchDir::new("sec-boom");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    let echo = guest("echo");
    let upload = std::fs::read(&echo).unwrap();
    let put = |settings: &str| {
        let mut request = format!(
            "PUT /v1/apps/boom HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             connection: close\r\nsockgate-settings: {settings}\r\ncontent-length: {}\r\n\r\n",
            token(&state),
            upload.len()
        )
        .into_bytes();
        request.extend_from_slice(&upload);
        async move {
            let mut stream = TcpStream::connect(admin).await.unwrap();
            stream.write_all(&request).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            String::from_utf8_lossy(&response).into_owned()
        }
    };
    for (settings, named) in [
        (
            r#"{"listen":"127.0.0.1:0","limits":{"max_connections_per_instance":2305843009213693952}}"#,
            "max_connections_per_instance",
        ),
        (
            r#"{"listen":"127.0.0.1:0","instances":100000}"#,
            "instances",
        ),
        (
            r#"{"listen":"127.0.0.1:0","limits":{"memory_limit_mb":4096}}"#,
            "memory_limit_mb",
        ),
        (
            r#"{"listen":"127.0.0.1:0","limits":{"idle_timeout_secs":0}}"#,
            "idle_timeout_secs",
        ),
        (
            r#"{"listen":"127.0.0.1:0","limits":{"quic_receive_window_kb":18446744073709551615}}"#,
            "quic_receive_window_kb",
        ),
    ] {
        let got = put(settings).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{settings}: {got}");
        assert!(
            got.contains(named),
            "{settings}: the error does not name it: {got}"
        );
    }
    // Nothing was persisted, the gateway is up, and a sane deploy works.
    assert_eq!(blobs(&state), 0);
    assert_eq!(std::fs::read_dir(state.join("apps")).unwrap().count(), 0);
    assert!(ls(admin, &state).is_empty());
    deploy(admin, &state, "fine", &echo, &["--listen", "127.0.0.1:0"]);
}

#[tokio::test]
async fn a_broken_record_is_skipped_at_start_while_the_other_apps_serve() {
    let dir = ScratchDir::new("sec-restore");
    let state = dir.0.join("state");
    let (gateway, admin) = start_admin(&state, None);
    deploy(
        admin,
        &state,
        "good",
        &guest("echo"),
        &["--listen", "127.0.0.1:0"],
    );
    drop(gateway);

    // Records written by hand: one with settings that would panic the
    // gateway, one that is not even JSON.
    let good = std::fs::read_to_string(state.join("apps/good.json")).unwrap();
    let mut boom: serde_json::Value = serde_json::from_str(&good).unwrap();
    boom["name"] = "boom".into();
    for version in boom["versions"].as_array_mut().unwrap() {
        version["config"]["name"] = "boom".into();
        version["config"]["listen"] = "127.0.0.1:0".into();
        version["config"]["limits"]["max_connections_per_instance"] = 2305843009213693952u64.into();
    }
    let write = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let path = state.join("apps").join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write("boom.json", &boom.to_string());
    write("junk.json", "{ not json");

    let (gateway, admin) = start_admin(&state, None);
    let mut conn = TcpStream::connect(crate::deploy::app_addr(admin, &state, "good"))
        .await
        .unwrap();
    assert_eq!(ask(&mut conn, "still here").await, "still here");
    let apps = ls(admin, &state);
    for (name, reason) in [
        ("boom", "max_connections_per_instance"),
        ("junk", "damaged"),
    ] {
        let app = apps
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {apps:?}"));
        assert_eq!(app["state"], "failed", "{app}");
        assert!(
            app["error"].as_str().unwrap().contains(reason),
            "{name}: {app}"
        );
    }
    assert!(
        gateway
            .stderr
            .text()
            .contains("cannot start the deployed app"),
        "{}",
        gateway.stderr.text()
    );
    let (code, events, stderr) = cli(admin, &state, &["events", "boom"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(events.contains("not started"), "{events}");
    let (code, table, _) = cli(admin, &state, &["ls"]);
    assert_eq!(code, 0);
    assert!(table.contains("failed"), "{table}");
    // A failed app can be removed like any other.
    let (code, _, stderr) = cli(admin, &state, &["rm", "boom"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!state.join("apps/boom.json").exists());
}
