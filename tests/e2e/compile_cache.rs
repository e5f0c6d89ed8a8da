//! The compile cache: the second start of the same component loads the
//! compiled artifact instead of compiling, and a changed component misses;
//! apps of the same bytes share one compiled component in memory.

use std::process::Command;

use tokio::net::TcpStream;

use crate::deploy::{app_addr, authed, cli, deploy, ls, parse_prometheus, start_admin};
use crate::support::{Gateway, ScratchDir, ask, guest};

fn start(component: &std::path::Path, cache: &std::path::Path) -> Gateway {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command
        .arg("run")
        .arg(component)
        .args(["--listen", "127.0.0.1:0", "--instances", "1", "--cache-dir"])
        .arg(cache);
    Gateway::spawn(command, ScratchDir::new("cache-run"))
}

fn cache_entries(cache: &std::path::Path) -> usize {
    std::fs::read_dir(cache)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count()
}

#[test]
fn a_second_start_loads_from_the_cache() {
    let dir = ScratchDir::new("compile-cache");
    let cache = dir.0.join("cache");
    let echo = guest("echo");

    let first = start(&echo, &cache);
    assert!(
        first.stdout.text().contains("compiled in"),
        "{}",
        first.stdout.text()
    );
    drop(first);
    assert_eq!(cache_entries(&cache), 1);

    let second = start(&echo, &cache);
    assert!(
        second.stdout.text().contains("loaded from compile cache"),
        "{}",
        second.stdout.text()
    );
    drop(second);

    // Different input bytes, different key: compiled, not confused.
    let chat = guest("chat");
    let third = start(&chat, &cache);
    assert!(
        third.stdout.text().contains("compiled in"),
        "{}",
        third.stdout.text()
    );
    drop(third);
    assert_eq!(cache_entries(&cache), 2);
}

#[test]
fn a_corrupt_cache_entry_is_recompiled() {
    let dir = ScratchDir::new("compile-cache-corrupt");
    let cache = dir.0.join("cache");
    let echo = guest("echo");
    drop(start(&echo, &cache));
    for entry in std::fs::read_dir(&cache).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let gateway = start(&echo, &cache);
    assert!(
        gateway.stdout.text().contains("compiled in"),
        "{}",
        gateway.stdout.text()
    );
    assert!(
        gateway
            .stderr
            .wait_for(std::time::Duration::from_secs(10), |t| t
                .contains("ignoring unusable compile cache entry")),
        "{}",
        gateway.stderr.text()
    );
}

/// `/metrics`' count of distinct compiled components in memory.
fn images_in_memory(admin: std::net::SocketAddr, state: &std::path::Path) -> f64 {
    let raw = authed(admin, state, "GET /metrics HTTP/1.1");
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    parse_prometheus(body)["sockgate_component_images{}"]
}

/// Apps deployed from the same bytes share one compiled component in
/// memory (the deploy says so), each still serving on its own; other bytes
/// get their own; the shared one is freed once no app holds it.
#[tokio::test]
async fn apps_of_the_same_component_share_its_compiled_code() {
    let dir = ScratchDir::new("compile-cache-shared");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    let listen = ["--listen", "127.0.0.1:0"];
    let (code, first, stderr) = cli(
        admin,
        &state,
        &[
            "deploy",
            "one",
            guest("echo").to_str().unwrap(),
            listen[0],
            listen[1],
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(!first.contains("shared"), "{first}");
    let (code, second, stderr) = cli(
        admin,
        &state,
        &[
            "deploy",
            "two",
            guest("echo").to_str().unwrap(),
            listen[0],
            listen[1],
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        second.contains("compiled code shared with an app of the same component"),
        "{second}"
    );
    let app = |name: &str| {
        ls(admin, &state)
            .into_iter()
            .find(|a| a["name"] == name)
            .unwrap()
    };
    assert_eq!(app("one")["load"]["shared"], false);
    assert_eq!(app("two")["load"]["shared"], true);
    assert_eq!(images_in_memory(admin, &state), 1.0);

    deploy(admin, &state, "other", &guest("chat"), &listen);
    assert_eq!(app("other")["load"]["shared"], false);
    assert_eq!(images_in_memory(admin, &state), 2.0);

    // Sharing code shares nothing else: each app serves on its own.
    for name in ["one", "two"] {
        let mut conn = TcpStream::connect(app_addr(admin, &state, name))
            .await
            .unwrap();
        assert_eq!(ask(&mut conn, name).await, name);
    }

    // The image lives while one app holds it, and goes with the last.
    let (code, _, stderr) = cli(admin, &state, &["rm", "one"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(images_in_memory(admin, &state), 2.0);
    let mut conn = TcpStream::connect(app_addr(admin, &state, "two"))
        .await
        .unwrap();
    assert_eq!(ask(&mut conn, "still").await, "still");
    drop(conn);
    let (code, _, stderr) = cli(admin, &state, &["rm", "two"]);
    assert_eq!(code, 0, "{stderr}");
    // Its instances stop after `rm` returns (draining): the count follows.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while images_in_memory(admin, &state) != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed apps' compiled code was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
