//! Reload without restart: `sockgate reload` and SIGHUP re-read the
//! configuration file; apps added, changed and removed switch with drain,
//! a broken file is refused whole (naming its line) and the running apps
//! keep serving, settings that need a restart are reported as such.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use sockgate_testkit::gateway::{WAIT, config_toml};
use tokio::net::TcpStream;

use crate::deploy::{app_addr, cli, deploy, ls, version_of};
use crate::support::{Gateway, ScratchDir, TestApp, ask, guest, shared_cache_dir};

/// A gateway serving a configuration file the test rewrites, with an admin
/// API (for `sockgate reload` and `ls`).
struct Reloadable {
    gateway: Gateway,
    config: PathBuf,
    state: PathBuf,
    admin: SocketAddr,
}

impl Reloadable {
    /// Starts `sockgate serve` on a file of `apps` (`[[app]]` tables).
    fn start(label: &str, apps: &str) -> Self {
        let dir = ScratchDir::new(label);
        let config = dir.0.join("sockgate.toml");
        let state = dir.0.join("state");
        write_config(&config, &state, "", apps);
        let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
        command.arg("serve").arg("--config").arg(&config);
        let gateway = Gateway::spawn(command, dir);
        let admin = gateway
            .stdout
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("admin API and dashboard on http://"))
            .and_then(|rest| rest.split('/').next()?.parse().ok())
            .expect("no admin address printed");
        Self {
            gateway,
            config,
            state,
            admin,
        }
    }

    /// Rewrites the file: `gateway` lines in `[gateway]`, then `apps`.
    fn rewrite(&self, gateway: &str, apps: &str) -> String {
        write_config(&self.config, &self.state, gateway, apps)
    }

    /// `sockgate reload`: exit code, stdout, stderr.
    fn reload(&self) -> (i32, String, String) {
        cli(self.admin, &self.state, &["reload"])
    }

    /// The address app `name` listens on, as `sockgate ls` says.
    fn addr(&self, name: &str) -> SocketAddr {
        app_addr(self.admin, &self.state, name)
    }

    /// The names `sockgate ls` lists.
    fn names(&self) -> Vec<String> {
        ls(self.admin, &self.state)
            .iter()
            .map(|app| app["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Asks the kernel to deliver SIGHUP to the gateway.
    fn hangup(&self) {
        let pid = i32::try_from(self.gateway.pid()).unwrap();
        // SAFETY: kill(2) with a valid signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }
}

/// Writes the configuration; returns its text.
fn write_config(config: &Path, state: &Path, gateway: &str, apps: &str) -> String {
    let gateway = format!(
        "admin = \"127.0.0.1:0\"\nstate_dir = {:?}\n{gateway}",
        state.display().to_string()
    );
    let text = config_toml(&shared_cache_dir(), &gateway, apps);
    std::fs::write(config, &text).unwrap();
    text
}

/// The `[[app]]` table of app `name` serving guest `guest`.
fn app(name: &str, guest: &str, extra: &str) -> String {
    TestApp { name, guest, extra }.toml()
}

/// The line (from 1) of `text` that starts with `start`.
fn line_of(text: &str, start: &str) -> usize {
    text.lines()
        .position(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in\n{text}"))
        + 1
}

#[tokio::test]
async fn reload_adds_changes_and_removes_apps_with_drain() {
    let gateway = Reloadable::start(
        "reload-apply",
        &format!(
            "{}{}{}",
            app("svc", "echo", ""),
            app("old", "echo", ""),
            app("same", "echo", "")
        ),
    );
    let svc = gateway.addr("svc");
    let mut before = TcpStream::connect(svc).await.unwrap();
    assert_eq!(version_of(&mut before).await, "echo");
    let mut on_removed = TcpStream::connect(gateway.addr("old")).await.unwrap();
    assert_eq!(ask(&mut on_removed, "hello").await, "hello");
    // An app deployed through the admin API, which no reload touches.
    deploy(
        gateway.admin,
        &gateway.state,
        "deployed",
        &guest("echo"),
        &["--listen", "127.0.0.1:0"],
    );

    // svc gets another component, old goes, new comes, same stays; and a
    // setting that needs a restart changes.
    gateway.rewrite(
        "max_connections = 1000",
        &format!(
            "{}{}{}",
            app("svc", "hostile", ""),
            app("new", "echo", ""),
            app("same", "echo", "")
        ),
    );
    let (code, stdout, stderr) = gateway.reload();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("added: new"), "{stdout}");
    assert!(stdout.contains("changed: svc"), "{stdout}");
    assert!(
        stdout.contains("removed (connections drain): old"),
        "{stdout}"
    );
    assert!(stdout.contains("unchanged: same"), "{stdout}");
    assert!(
        stderr.contains("applied only when the gateway restarts: gateway.max_connections"),
        "{stderr}"
    );

    // Changed: same address, new connections get the new version, the one
    // open before keeps the old (drain).
    assert_eq!(gateway.addr("svc"), svc, "the changed app moved");
    let mut after = TcpStream::connect(svc).await.unwrap();
    assert_eq!(version_of(&mut after).await, "hostile");
    assert_eq!(
        version_of(&mut before).await,
        "echo",
        "a connection open before the reload lost its version"
    );
    // Added: serves.
    let mut added = TcpStream::connect(gateway.addr("new")).await.unwrap();
    assert_eq!(ask(&mut added, "hi").await, "hi");
    // Removed: no longer listed, its open connection drains.
    let names = gateway.names();
    assert!(!names.contains(&"old".to_owned()), "{names:?}");
    assert_eq!(ask(&mut on_removed, "still here").await, "still here");
    // The deployed app still serves; a file that claims its name is
    // refused.
    assert!(names.contains(&"deployed".to_owned()), "{names:?}");
    let mut deployed = TcpStream::connect(gateway.addr("deployed")).await.unwrap();
    assert_eq!(ask(&mut deployed, "mine").await, "mine");
    gateway.rewrite("", &app("deployed", "hostile", ""));
    let (code, stdout, stderr) = gateway.reload();
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("deployed through the admin API"),
        "{stderr}"
    );
    let mut again = TcpStream::connect(gateway.addr("deployed")).await.unwrap();
    assert_eq!(version_of(&mut again).await, "echo");

    // The app's events and the gateway's say what happened.
    let (_, events, _) = cli(gateway.admin, &gateway.state, &["events", "svc"]);
    assert!(
        events.contains("changed by a reload of the configuration file"),
        "{events}"
    );
    let (code, events, stderr) = cli(gateway.admin, &gateway.state, &["events"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(events.contains("configuration reloaded"), "{events}");
    assert!(events.contains("gateway.max_connections"), "{events}");
}

#[tokio::test]
async fn reload_refuses_a_broken_file_whole_with_its_line() {
    let gateway = Reloadable::start("reload-refuse", &app("svc", "echo", ""));
    let svc = gateway.addr("svc");
    let mut open = TcpStream::connect(svc).await.unwrap();
    assert_eq!(version_of(&mut open).await, "echo");

    // Each file also changes svc to another guest and adds an app: a
    // refusal must apply neither.
    let good = format!("{}{}", app("svc", "hostile", ""), app("extra", "echo", ""));
    let cases: [(&str, String, &str, &str); 4] = [
        (
            "syntax error",
            format!("{good}\n[[app]\nname = \"broken\"\n"),
            "[[app]\n",
            "",
        ),
        (
            "unknown field",
            format!("{good}colour = \"blue\"\n"),
            "colour",
            "unknown field `colour`",
        ),
        (
            "bad component path",
            format!(
                "{good}\n[[app]]\nname = \"ghost\"\ncomponent = \"ghost.wasm\"\nlisten = \"127.0.0.1:0\"\n"
            ),
            "name = \"ghost\"",
            "ghost.wasm is not a file",
        ),
        (
            "invalid limits",
            format!("{good}[app.limits]\ncpu_budget_ms = 0\n"),
            "name = \"extra\"",
            "limits.cpu_budget_ms must be at least 1",
        ),
    ];
    for (case, apps, line_start, reason) in cases {
        let text = gateway.rewrite("", &apps);
        // A syntax error's line is the broken header itself.
        let line = match text.lines().position(|l| l == line_start.trim_end()) {
            Some(index) => index + 1,
            None => line_of(&text, line_start),
        };
        let (code, stdout, stderr) = gateway.reload();
        assert_eq!(code, 1, "{case}: {stdout}{stderr}");
        let at = format!("{}:{line}:", gateway.config.display());
        assert!(stderr.contains(&at), "{case}: no {at} in\n{stderr}");
        assert!(
            stderr.contains(reason),
            "{case}: no {reason:?} in\n{stderr}"
        );
        // Nothing applied: svc keeps its version, nothing was added.
        let mut fresh = TcpStream::connect(svc).await.unwrap();
        assert_eq!(version_of(&mut fresh).await, "echo", "{case}");
        assert_eq!(gateway.names(), ["svc"], "{case}");
    }
    assert_eq!(version_of(&mut open).await, "echo");
    let (_, events, _) = cli(gateway.admin, &gateway.state, &["events"]);
    assert_eq!(
        events.matches("configuration reload refused").count(),
        4,
        "{events}"
    );
}

#[tokio::test]
async fn sighup_reloads_like_sockgate_reload() {
    let gateway = Reloadable::start("reload-hup", &app("svc", "echo", ""));
    let svc = gateway.addr("svc");
    let mut open = TcpStream::connect(svc).await.unwrap();
    assert_eq!(version_of(&mut open).await, "echo");

    gateway.rewrite(
        "",
        &format!("{}{}", app("svc", "hostile", ""), app("new", "echo", "")),
    );
    gateway.hangup();
    assert!(
        gateway.gateway.stderr.wait_for(WAIT, |log| {
            log.contains("configuration reloaded") && log.contains("added: new")
        }),
        "no reload logged:\n{}",
        gateway.gateway.stderr.text()
    );
    let mut added = TcpStream::connect(gateway.addr("new")).await.unwrap();
    assert_eq!(ask(&mut added, "hi").await, "hi");
    let mut fresh = TcpStream::connect(svc).await.unwrap();
    assert_eq!(version_of(&mut fresh).await, "hostile");
    assert_eq!(version_of(&mut open).await, "echo");

    // A broken file: refused, logged with its line, nothing changes.
    let text = gateway.rewrite("", &format!("{}oops = 1\n", app("svc", "echo", "")));
    gateway.hangup();
    let at = format!("{}:{}:", gateway.config.display(), line_of(&text, "oops"));
    assert!(
        gateway.gateway.stderr.wait_for(WAIT, |log| {
            log.contains("configuration reload refused") && log.contains(&at)
        }),
        "no refusal with {at} logged:\n{}",
        gateway.gateway.stderr.text()
    );
    let mut still = TcpStream::connect(svc).await.unwrap();
    assert_eq!(version_of(&mut still).await, "hostile");
    let mut names = gateway.names();
    names.sort();
    assert_eq!(names, ["new", "svc"]);
}
