//! The compile cache: the second start of the same component loads the
//! compiled artifact instead of compiling, and a changed component misses.

use std::process::Command;

use crate::support::{Gateway, ScratchDir, guest};

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
