//! What every benchmark shares: where the repository is, building a guest,
//! and writing a result table next to the printed one.

// Each benchmark uses part of this module.
#![allow(dead_code)]

pub mod tls;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the Rust guest `guests/<name>` and returns its component.
pub fn build_guest(name: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .current_dir(root().join("guests"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "wasm32-wasip2",
            "-p",
            name,
        ])
        .status()
        .expect("cannot run cargo");
    assert!(status.success(), "building the {name} guest failed");
    root()
        .join("guests/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

/// Prints the markdown table and writes it, with the JSON rows, to
/// `target/bench-results/<bench>.{md,json}`.
pub fn publish(bench: &str, markdown: &str, json_rows: &[String]) {
    println!("\n{markdown}");
    let dir = root().join("target/bench-results");
    std::fs::create_dir_all(&dir).expect("cannot create target/bench-results");
    std::fs::write(dir.join(format!("{bench}.md")), markdown).expect("cannot write results");
    std::fs::write(
        dir.join(format!("{bench}.json")),
        format!("[{}]\n", json_rows.join(",\n")),
    )
    .expect("cannot write results");
}

/// User plus system CPU time of process `pid` so far (zero once it is gone).
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces).
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    Duration::from_millis((field(11) + field(12)) * 10)
}

/// Whether servers and load generators can be pinned to separate CPUs.
pub fn has_taskset() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Pins every thread of process `pid` to `cpus` (a taskset CPU list).
pub fn pin(pid: u32, cpus: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status();
}
