//! The build steps `sockgate go-guest` and `sockgate ts-guest` refuse what
//! they cannot build from, saying what was wrong and what to do: a Go
//! toolchain whose runtime the hooks do not fit (rather than a module that
//! builds and then hangs), and a world the WIT does not have. (Their
//! successful use is every Go and TypeScript guest and template build.)

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::{ScratchDir, root};

/// Runs `sockgate ARGS`; returns its exit code and stderr.
fn sockgate(args: &[&str], env: &[(&str, &std::path::Path)]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("cannot run sockgate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn go_bindings_refuse_a_toolchain_whose_runtime_the_hooks_do_not_fit() {
    let scratch = ScratchDir::new("go-bindings-old-go");
    // A "Go" whose runtime has the wasip1 files, but not the functions the
    // hooks replace (as a Go older than 1.24, or a future one, would).
    let goroot = scratch.0.join("goroot");
    let runtime = goroot.join("src/runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::write(runtime.join("lock_wasip1.go"), "package runtime\n").unwrap();
    std::fs::write(runtime.join("os_wasip1.go"), "package runtime\n").unwrap();
    let go = scratch.0.join("go");
    std::fs::write(&go, format!("#!/bin/sh\necho {}\n", goroot.display())).unwrap();
    std::fs::set_permissions(&go, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = scratch.0.join("build");
    let wit = root().join("wit");
    let (code, stderr) = sockgate(
        &[
            "go-guest",
            "bindings",
            wit.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &[("GO", &go)],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("lock_wasip1.go has no `func beforeIdle(")
            && stderr.contains("use Go 1.27"),
        "does not say what is wrong and what to do:\n{stderr}"
    );
    assert!(
        !out.join("overlay.json").exists(),
        "an overlay was written for a runtime it does not fit"
    );

    // No Go at all: the error names the command it tried.
    let missing = scratch.0.join("no-such-go");
    let (code, stderr) = sockgate(
        &[
            "go-guest",
            "bindings",
            wit.to_str().unwrap(),
            out.to_str().unwrap(),
            "--go",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no-such-go env GOROOT") && stderr.contains("set GO"),
        "{stderr}"
    );
}

#[test]
fn ts_types_name_the_world_that_is_missing() {
    let scratch = ScratchDir::new("ts-types-no-world");
    let wit = root().join("wit");
    let (code, stderr) = sockgate(
        &[
            "ts-guest",
            "types",
            wit.to_str().unwrap(),
            scratch.0.to_str().unwrap(),
            "--world",
            "no-such-world",
        ],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no world no-such-world in"),
        "does not name the missing world:\n{stderr}"
    );
    assert!(std::fs::read_dir(&scratch.0).unwrap().next().is_none());
}
