//! What every benchmark shares: where the repository is, building a guest,
//! and writing a result table next to the printed one.

use std::path::PathBuf;
use std::process::Command;

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
