//! Embeds the Go support module that generated Go bindings import
//! (`go.bytecodealliance.org/pkg`: the canonical ABI runtime, the WIT types
//! and the async glue), so that `sockgate go-guest` can give a Go project
//! everything it needs without the Go module proxy.
//!
//! The module ships inside the `wit-bindgen-go` crate (`src/pkg`), at the
//! version its generated code requires; `cargo metadata` says where cargo
//! unpacked that crate. The files are written into `$OUT_DIR/go_pkg.rs` as
//! `GO_PKG: &[(&str, &str)]` (path inside the module, contents).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of the module a Go build uses: sources, assembly stubs, the
/// module file and the licence. (Not its docs, CI files or web pages.)
fn wanted(relative: &Path) -> bool {
    let name = relative.to_string_lossy();
    name == "go.mod"
        || name == "LICENSE"
        || (name.starts_with("wit/") && (name.ends_with(".go") || name.ends_with(".s")))
}

/// `cargo metadata` for this crate's own workspace: offline first (the
/// build that runs this script has downloaded its dependencies), then
/// online, in case this workspace's lock file names a version of some
/// crate that the including workspace's does not.
fn metadata(manifest: &Path) -> Vec<u8> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut failures = String::new();
    for offline in [true, false] {
        let mut command = Command::new(&cargo);
        command.args(["metadata", "--format-version", "1", "--manifest-path"]);
        command.arg(manifest);
        if offline {
            command.arg("--offline");
        }
        let output = command.output().expect("cannot run `cargo metadata`");
        if output.status.success() {
            return output.stdout;
        }
        failures.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    panic!("`cargo metadata` failed: {failures}");
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let output = metadata(&manifest_dir.join("Cargo.toml"));
    let metadata: serde_json::Value =
        serde_json::from_slice(&output).expect("`cargo metadata` printed no JSON");
    let crate_dir = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "wit-bindgen-go")
        .and_then(|p| p["manifest_path"].as_str())
        .map(|m| Path::new(m).parent().unwrap().to_path_buf())
        .expect("wit-bindgen-go is not among this crate's dependencies");
    let pkg = crate_dir.join("src/pkg");

    let mut files = Vec::new();
    let mut stack = vec![pkg.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if wanted(path.strip_prefix(&pkg).unwrap()) {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("go.mod")),
        "no Go module in {}",
        pkg.display()
    );
    let mut out = String::from(
        "/// The Go support module, as (path, contents).\npub const GO_PKG: &[(&str, &str)] = &[\n",
    );
    for file in &files {
        let relative = file
            .strip_prefix(&pkg)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        out.push_str(&format!(
            "    ({relative:?}, include_str!({:?})),\n",
            file.display().to_string()
        ));
        println!("cargo::rerun-if-changed={}", file.display());
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    std::fs::write(out_dir.join("go_pkg.rs"), out).unwrap();
    println!("cargo::rerun-if-changed=Cargo.lock");
    println!("cargo::rerun-if-changed=build.rs");
}
