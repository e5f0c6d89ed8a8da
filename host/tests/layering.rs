//! The house rules of `host/src`, checked on the source itself (no build
//! of the gateway involved), so that `cargo test -p sockgate-host --test
//! layering` fails as soon as a change breaks them:
//!
//! - **One direction.** The top-level modules stand on floors
//!   ([`FLOORS`], bottom first, the same list as `ARCHITECTURE.md`'s code
//!   map); a module may name (`crate::x`) only modules on a lower floor.
//!   An import up a floor is how the cycles of the old flat layout began.
//! - **Files of one responsibility.** No file in `host/src` is longer than
//!   [`MAX_LINES`] lines, but for a module's `tests.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The top-level modules of `host/src`, bottom floor first. Each may use
/// only those before it. `lib.rs` (the crate root) stands above all.
const FLOORS: &[&str] = &[
    "base",    // vocabulary: the connection type, clock, names, back-off, locks, files
    "limits",  // every bound, with the threat it bounds: plain numbers
    "tenant",  // what the gateway keeps per app, handed to the runtime as inputs
    "certs",   // certificates: ACME, files, the dev CA; told which names to serve
    "config",  // settings: plain data, validated once, read by what sits above
    "http",    // the HTTP protocol side of HTTP apps (hyper, h3): knows no wasm
    "runtime", // WebAssembly: engine, loading, instances, supervision, WASI
    "apps",    // the apps being served and the table that routes to them
    "listen",  // TCP, TLS, QUIC and port-80 listeners: accept, handshake, route
    "state",   // persistence of deployed apps
    "cluster", // cluster mode: apps and their holders in etcd, components between nodes
    "gateway", // the assembly: builds, switches and drains all of the above
    "admin",   // the admin API, dashboard and metrics
    "fuzzing", // entry points of the fuzz targets (feature `fuzzing`): reach into any floor
];

/// The longest a file in `host/src` may be (`tests.rs` files aside).
const MAX_LINES: usize = 600;

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for `lib.rs`).
fn module_of(root: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(root).expect("file under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_owned())
}

/// The top-level modules `source` names as `crate::x`, outside comments.
fn named_modules(source: &str) -> Vec<String> {
    let mut named = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let preceded_by_ident = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !preceded_by_ident && !name.is_empty() {
                named.push(name);
            }
        }
    }
    named
}

#[test]
fn every_module_imports_only_the_floors_below_it() {
    let root = source_root();
    let floor: BTreeMap<&str, usize> = FLOORS.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let Some(module) = module_of(&root, file) else {
            continue;
        };
        let Some(&own) = floor.get(module.as_str()) else {
            panic!(
                "{}: top-level module `{module}` is on no floor; add it to FLOORS in \
                 host/tests/layering.rs and to ARCHITECTURE.md's code map",
                file.display()
            );
        };
        let source = std::fs::read_to_string(file).expect("readable source");
        for named in named_modules(&source) {
            match floor.get(named.as_str()) {
                Some(&other) if other > own => upward.push(format!(
                    "{}: `{module}` (floor {own}) names `crate::{named}` (floor {other})",
                    file.strip_prefix(&root).unwrap_or(file).display()
                )),
                Some(_) => {}
                // Re-exports at the crate root (`crate::Config`).
                None if named.starts_with(char::is_uppercase) => {}
                None => panic!("{}: names unknown module `crate::{named}`", file.display()),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run up a floor (move the item down, or have the lower module define a \
         narrow trait the upper one implements):\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_file_holds_more_than_one_responsibility_by_size() {
    let root = source_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter(|file| !file.ends_with("tests.rs"))
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).ok()?.lines().count();
            (lines > MAX_LINES).then(|| {
                format!(
                    "{}: {lines} lines",
                    file.strip_prefix(&root).unwrap_or(file).display()
                )
            })
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split them by responsibility; a module's tests may \
         move to a tests.rs beside it):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checker_sees_imports_and_skips_comments() {
    let source = "use crate::runtime::x;\n// crate::admin in a comment\nlet a = crate::apps::y; \
                  my_crate::nope();";
    assert_eq!(named_modules(source), ["runtime", "apps"]);
}
