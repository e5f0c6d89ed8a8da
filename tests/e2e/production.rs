//! Run in production: the binary needs nothing of the checkout, the
//! systemd unit in dist/ passes `systemd-analyze verify`, and the log can
//! be JSON, one object a line.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use sockgate_testkit::gateway::WAIT;
use sockgate_testkit::paths::sockgate_binary;
use tokio::net::TcpStream;

use crate::support::{Gateway, ScratchDir, TestApp, ask, guest, root};

/// A scratch directory outside the checkout (under the system's temporary
/// directory), removed when dropped.
fn outside_checkout(label: &str) -> ScratchDir {
    let dir = std::env::temp_dir().join(format!("sockgate-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    assert!(
        !dir.starts_with(root()),
        "{} is in the checkout",
        dir.display()
    );
    ScratchDir(dir)
}

/// `program` run in `dir` with HOME there too and no XDG directories, so
/// that nothing of the checkout or of the tests' caches can be found.
fn isolated(program: &Path, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(dir)
        .env("HOME", dir.join("home"))
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("SOCKGATE_ADMIN")
        .env_remove("SOCKGATE_STATE_DIR")
        .stdin(Stdio::null());
    command
}

#[tokio::test]
async fn the_binary_works_outside_the_checkout() {
    let scratch = outside_checkout("outside");
    let dir = scratch.0.clone();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let binary = dir.join("bin/sockgate");
    std::fs::copy(sockgate_binary(), &binary).unwrap();
    std::fs::copy(guest("echo"), dir.join("echo.wasm")).unwrap();

    let version = isolated(&binary, &dir).arg("--version").output().unwrap();
    assert!(version.status.success());
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert_eq!(
        version.trim(),
        format!("sockgate {}", env!("CARGO_PKG_VERSION"))
    );

    // `sockgate new` writes its templates and WIT from the binary.
    let new = isolated(&binary, &dir)
        .args(["new", "hello", "--lang", "rust"])
        .output()
        .unwrap();
    assert!(
        new.status.success(),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );
    assert!(dir.join("hello/wit/gateway.wit").is_file());
    assert!(dir.join("hello/src/lib.rs").is_file());

    // `sockgate run` serves, compiling into $HOME/.cache.
    let mut run = isolated(&binary, &dir);
    run.args(["run", "echo.wasm", "--listen", "127.0.0.1:0"]);
    let gateway = Gateway::spawn(run, scratch);
    let mut stream = TcpStream::connect(gateway.addr("echo")).await.unwrap();
    assert_eq!(ask(&mut stream, "from outside").await, "from outside");
    assert!(dir.join("home/.cache/sockgate").is_dir());
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(root().join("dist/sockgate.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/sockgate serve"),
        "{unit}"
    );
    // verify checks that the binaries exist: point them at the one built.
    let unit = unit.replace(
        "/usr/local/bin/sockgate",
        &sockgate_binary().display().to_string(),
    );
    let dir = ScratchDir::new("systemd-unit");
    let path = dir.0.join("sockgate.service");
    std::fs::write(&path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("cannot run systemd-analyze (Debian package `systemd`; ./dev deps installs it)");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{stderr}");
    // An unknown or misspelt key is only a warning, with exit code 0.
    assert!(stderr.trim().is_empty(), "{stderr}");
}

/// The first log line `gateway` wrote, parsed, with its level and message.
fn first_json_line(gateway: &Gateway) -> Value {
    assert!(
        gateway.stderr.wait_for(WAIT, |text| !text.is_empty()),
        "nothing logged"
    );
    let text = gateway.stderr.text();
    let line = text.lines().next().unwrap();
    let value: Value =
        serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}\n{text}"));
    assert!(value["level"].is_string(), "{value}");
    assert!(value["fields"]["message"].is_string(), "{value}");
    value
}

#[tokio::test]
async fn json_logs_by_flag_and_by_configuration() {
    let mut command = Command::new(sockgate_binary());
    command.args(["run", "--log-format", "json", "--listen", "127.0.0.1:0"]);
    command.arg(guest("echo"));
    let flagged = Gateway::spawn(command, ScratchDir::new("json-log"));
    first_json_line(&flagged);
    // Every line, not only the first.
    for line in flagged.stderr.text().lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|err| panic!("{err}: {line}"));
    }

    let configured = Gateway::start_with(
        "log_format = \"json\"",
        &[TestApp {
            name: "echo",
            guest: "echo",
            extra: "",
        }],
    );
    first_json_line(&configured);
    let mut stream = TcpStream::connect(configured.addr("echo")).await.unwrap();
    assert_eq!(ask(&mut stream, "hi").await, "hi");
}
