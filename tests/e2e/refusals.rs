//! A bad configuration or component is refused at start, with a message
//! that names the file, the app and the reason, and no Rust or wasm
//! backtrace.

use std::ffi::OsStr;
use std::path::Path;

use crate::support::{ScratchDir, guest, run_expecting_failure};

/// Runs `sockgate run COMPONENT` as app `bad`, expecting a refusal; returns
/// stderr after checking the common shape of every refusal.
fn refuse_component(component: &Path, dir: &ScratchDir) -> String {
    let cache = dir.0.join("cache");
    let (code, stderr) = run_expecting_failure(&[
        OsStr::new("run"),
        component.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--name"),
        OsStr::new("bad"),
        OsStr::new("--cache-dir"),
        cache.as_os_str(),
    ]);
    assert_eq!(code, 1, "exit code; stderr:\n{stderr}");
    assert_common_shape(&stderr);
    assert!(stderr.contains("app `bad`"), "app not named:\n{stderr}");
    assert!(
        stderr.contains(&component.display().to_string()),
        "file not named:\n{stderr}"
    );
    stderr
}

fn assert_common_shape(stderr: &str) {
    assert!(
        stderr.starts_with("error: "),
        "not an error message:\n{stderr}"
    );
    for noise in [
        "panicked",
        "stack backtrace",
        "RUST_BACKTRACE",
        "wasm backtrace",
    ] {
        assert!(!stderr.contains(noise), "{noise:?} in refusal:\n{stderr}");
    }
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let dir = ScratchDir::new("refuse-core");
    let file = dir.0.join("module.wasm");
    // The smallest valid core module: magic and version 1.
    std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
    let stderr = refuse_component(&file, &dir);
    assert!(
        stderr.contains("core WebAssembly module, not a component"),
        "{stderr}"
    );
    assert!(stderr.contains("wasm32-wasip2"), "no advice:\n{stderr}");
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let dir = ScratchDir::new("refuse-text");
    let file = dir.0.join("notes.wasm");
    std::fs::write(&file, "these are my notes, not a program\n").unwrap();
    let stderr = refuse_component(&file, &dir);
    assert!(stderr.contains("not a WebAssembly file"), "{stderr}");
}

#[test]
fn an_unreadable_file_is_refused() {
    let dir = ScratchDir::new("refuse-missing");
    let file = dir.0.join("does-not-exist.wasm");
    let stderr = refuse_component(&file, &dir);
    assert!(stderr.contains("cannot read"), "{stderr}");
    assert!(stderr.contains("No such file"), "{stderr}");
}

#[test]
fn a_malformed_component_is_refused() {
    let dir = ScratchDir::new("refuse-malformed");
    let file = dir.0.join("truncated.wasm");
    let mut bytes = std::fs::read(guest("echo")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&file, bytes).unwrap();
    let stderr = refuse_component(&file, &dir);
    assert!(stderr.contains("is not a valid component"), "{stderr}");
}

#[test]
fn a_component_without_the_handler_export_is_refused() {
    let dir = ScratchDir::new("refuse-noexport");
    let file = dir.0.join("empty-component.wasm");
    // The smallest valid component: magic, version 0xd, layer 1; it
    // exports nothing.
    std::fs::write(&file, b"\0asm\x0d\0\x01\0").unwrap();
    let stderr = refuse_component(&file, &dir);
    assert!(stderr.contains("implements no sockgate world"), "{stderr}");
    // Both worlds' exports are named, so either kind of guest knows what
    // to implement.
    assert!(
        stderr.contains("sockgate:gateway/handler@0.1.0")
            && stderr.contains("`conn-handler`")
            && stderr.contains("sockgate:gateway/sync-handler@0.1.0")
            && stderr.contains("`conn-handler-sync`"),
        "missing exports not named:\n{stderr}"
    );
    assert!(stderr.contains("it exports: nothing"), "{stderr}");
}

#[test]
fn a_component_with_an_unsupported_import_is_refused() {
    let dir = ScratchDir::new("refuse-import");
    let stderr = refuse_component(&guest("wrong-world"), &dir);
    assert!(
        stderr.contains("imports interfaces the gateway does not provide"),
        "{stderr}"
    );
    assert!(
        stderr.contains("test:wrong-world/database"),
        "unsupported import not named:\n{stderr}"
    );
}

#[test]
fn a_port_in_use_is_refused() {
    let dir = ScratchDir::new("refuse-port");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let config = dir.0.join("sockgate.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ncache_dir = {:?}\n[[app]]\nname = \"echo\"\ncomponent = {:?}\nlisten = {addr:?}\n",
            dir.0.join("cache").display().to_string(),
            guest("echo").display().to_string()
        ),
    )
    .unwrap();
    let (code, stderr) = run_expecting_failure(&[
        OsStr::new("serve"),
        OsStr::new("--config"),
        config.as_os_str(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert_common_shape(&stderr);
    assert!(stderr.contains("app `echo`"), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on tcp {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("already in use"), "{stderr}");
    drop(holder);
}

#[test]
fn a_bad_configuration_file_is_refused_with_its_name() {
    let dir = ScratchDir::new("refuse-config");
    let cases = [
        (
            "typo.toml",
            "[[app]]\nname = \"echo\"\ncomponent = \"e.wasm\"\nlisten = \"127.0.0.1:0\"\nlisten_port = 3\n",
            "unknown field `listen_port`",
        ),
        (
            "syntax.toml",
            "[[app]\nname = \"echo\"\n",
            "invalid configuration file",
        ),
        (
            "name.toml",
            "[[app]]\nname = \"../x\"\ncomponent = \"e.wasm\"\nlisten = \"127.0.0.1:0\"\n",
            "invalid app name `../x`",
        ),
        ("empty.toml", "", "no apps configured"),
    ];
    for (name, text, reason) in cases {
        let config = dir.0.join(name);
        std::fs::write(&config, text).unwrap();
        let (code, stderr) = run_expecting_failure(&[
            OsStr::new("serve"),
            OsStr::new("--config"),
            config.as_os_str(),
        ]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert_common_shape(&stderr);
        assert!(
            stderr.contains(&config.display().to_string()),
            "{name}: file not named:\n{stderr}"
        );
        assert!(
            stderr.contains(reason),
            "{name}: expected {reason:?}:\n{stderr}"
        );
    }
    // A component refusal through a configuration names the app too.
    let config = dir.0.join("missing-component.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ncache_dir = {:?}\n[[app]]\nname = \"ghost\"\ncomponent = \"ghost.wasm\"\nlisten = \"127.0.0.1:0\"\n",
            dir.0.join("cache").display().to_string()
        ),
    )
    .unwrap();
    let (code, stderr) = run_expecting_failure(&[
        OsStr::new("serve"),
        OsStr::new("--config"),
        config.as_os_str(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("app `ghost`"), "{stderr}");
    assert!(
        stderr.contains(&dir.0.join("ghost.wasm").display().to_string()),
        "{stderr}"
    );
}
