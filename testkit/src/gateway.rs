//! The real gateway as the end-to-end tests run it: a configuration file
//! written from [`TestApp`]s, `sockgate serve` started on it, ready once it
//! printed `sockgate ready`, with every line it prints kept for the test;
//! [`TlsGateway`] adds the TLS, HTTP and QUIC listeners it printed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::guests::guest_component;
use crate::os::process_rss_kib;
use crate::output::{Output, Running, app_addrs, printed_addr};
use crate::paths::{ScratchDir, shared_cache_dir, sockgate_binary};

/// How long a gateway may take to start (compiling components in a cold
/// cache on a busy 2-core machine included).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a test waits for anything the gateway or Pebble does.
pub const WAIT: Duration = Duration::from_secs(60);

/// One app in a test gateway's configuration.
pub struct TestApp<'a> {
    /// App name.
    pub name: &'a str,
    /// Guest crate under `guests/`, or `<lang>/<name>` for a guest in
    /// another language (`guests/<lang>/<name>`, see
    /// [`lang_guest`](crate::guests::lang_guest)).
    pub guest: &'a str,
    /// Extra TOML lines for the app table.
    pub extra: &'a str,
}

impl TestApp<'_> {
    /// The app's `[[app]]` table, on a free loopback port (building its
    /// guest if need be).
    pub fn toml(&self) -> String {
        format!(
            "\n[[app]]\nname = {:?}\ncomponent = {:?}\nlisten = \"127.0.0.1:0\"\n{}\n",
            self.name,
            guest_component(self.guest).display().to_string(),
            self.extra
        )
    }
}

/// A `sockgate serve` configuration: the `[gateway]` table with compile
/// cache `cache_dir` and the TOML lines `gateway`, then `rest` (other
/// tables and `[[app]]` tables).
pub fn config_toml(cache_dir: &Path, gateway: &str, rest: &str) -> String {
    format!(
        "[gateway]\ncache_dir = {:?}\n{gateway}\n\n{rest}\n",
        cache_dir.display().to_string()
    )
}

/// The `[[app]]` tables of `apps`.
pub fn apps_toml(apps: &[TestApp<'_>]) -> String {
    apps.iter().map(TestApp::toml).collect()
}

/// A running `sockgate serve`, killed when dropped.
pub struct Gateway {
    running: Running,
    addrs: HashMap<String, SocketAddr>,
    /// What it printed on stdout.
    pub stdout: Output,
    /// What it printed on stderr (logs and events).
    pub stderr: Output,
    _dir: ScratchDir,
}

impl Gateway {
    /// Starts a gateway serving `apps`, each on a free loopback port, and
    /// waits until it is ready.
    pub fn start(apps: &[TestApp<'_>]) -> Self {
        Self::start_with("", apps)
    }

    /// Like [`Gateway::start`], with `gateway` (TOML lines) added to the
    /// `[gateway]` table.
    pub fn start_with(gateway: &str, apps: &[TestApp<'_>]) -> Self {
        Self::start_config("gateway", gateway, "", apps)
    }

    /// Starts a gateway from a configuration of `gateway` lines in the
    /// `[gateway]` table (the shared compile cache is already there), other
    /// `tables`, and `apps`, in a scratch directory labelled `label`.
    pub fn start_config(label: &str, gateway: &str, tables: &str, apps: &[TestApp<'_>]) -> Self {
        let dir = ScratchDir::new(label);
        let config = config_toml(
            &shared_cache_dir(),
            gateway,
            &format!("{tables}\n{}", apps_toml(apps)),
        );
        let config_path = dir.0.join("sockgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(sockgate_binary());
        command.arg("serve").arg("--config").arg(&config_path);
        Self::spawn(command, dir)
    }

    /// Spawns `command` (a `sockgate` invocation that serves) and waits for
    /// it to be ready.
    pub fn spawn(command: Command, dir: ScratchDir) -> Self {
        Self::spawn_with_stderr(command, dir, None)
    }

    /// Like [`Gateway::spawn`], with the gateway's stderr going to
    /// `stderr` instead of being collected (e.g. a pipe nobody reads).
    pub fn spawn_with_stderr(mut command: Command, dir: ScratchDir, stderr: Option<Stdio>) -> Self {
        // HTTP apps' access lines are traced at debug level; the tests
        // read them.
        command.env("RUST_LOG", "info,sockgate::access=debug");
        let mut running = Running::spawn(command, stderr).expect("cannot start sockgate");
        let (stdout, stderr) = (running.stdout.clone(), running.stderr.clone());
        let ready = stdout.wait_for(START_TIMEOUT, |text| text.contains("sockgate ready"));
        if !ready {
            let _ = running.child.kill();
            panic!(
                "gateway did not start\nstdout:\n{}\nstderr:\n{}",
                stdout.text(),
                stderr.text()
            );
        }
        let addrs = app_addrs(&stdout.text());
        Self {
            running,
            addrs,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.running.pid()
    }

    /// The gateway's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let kib = process_rss_kib(self.pid());
        assert!(kib > 0, "no VmRSS for the gateway (has it exited?)");
        kib
    }

    /// The TCP address app `name` listens on.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no app {name} in {:?}", self.addrs))
    }

    /// The address the gateway printed after `marker` (e.g. `tls listening
    /// on `), if it printed one.
    pub fn printed(&self, marker: &str) -> Option<SocketAddr> {
        printed_addr(&self.stdout.text(), marker).map(|(addr, _)| addr)
    }
}

/// When a test fails while a gateway runs, the end of what the gateway
/// logged is the first thing its reader needs (a trap, a budget hit, a
/// refusal), and CI shows only the test's own output: print it.
impl Drop for Gateway {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let stderr = self.stderr.text();
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = &lines[lines.len().saturating_sub(DROP_LOG_LINES)..];
        eprintln!(
            "--- the gateway's last {} lines of stderr (pid {}) ---\n{}\n--- end ---",
            tail.len(),
            self.pid(),
            tail.join("\n")
        );
    }
}

/// How many of a failed test's gateway log lines [`Gateway`]'s drop prints.
const DROP_LOG_LINES: usize = 80;

/// A gateway serving TLS, with the addresses it printed.
pub struct TlsGateway {
    /// The running gateway (its output, its TCP addresses).
    pub gateway: Gateway,
    /// Where the TLS listener is bound.
    pub tls: SocketAddr,
    /// Where the plain-HTTP listener is bound, if enabled.
    pub http: Option<SocketAddr>,
    /// Where the QUIC endpoint is bound (UDP), if enabled.
    pub quic: Option<SocketAddr>,
}

impl TlsGateway {
    /// Starts a gateway whose state directory is `state` and whose
    /// configuration has the `tables` (TOML: `[tls]`, `[http]`, ...) and
    /// `apps`, each app also on a free loopback TCP port.
    pub fn start(state: &Path, tables: &str, apps: &[TestApp<'_>]) -> Self {
        let state_dir = format!("state_dir = {:?}\n", state.display().to_string());
        let gateway = Gateway::start_config("tls-gateway", &state_dir, tables, apps);
        let tls = gateway
            .printed("tls listening on ")
            .unwrap_or_else(|| panic!("no TLS listener printed:\n{}", gateway.stdout.text()));
        let http = gateway.printed("http listening on ");
        let quic = gateway.printed("quic listening on ");
        Self {
            gateway,
            tls,
            http,
            quic,
        }
    }
}

/// Runs `sockgate` with `args` expecting it to refuse to start; returns
/// its exit code and stderr.
pub fn run_expecting_failure(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let child = Command::new(sockgate_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start sockgate");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    // A gateway that wrongly starts would serve forever: bound the wait.
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(output) => {
            let output = output.unwrap();
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("sockgate {args:?} did not exit: it should have refused to start");
        }
    }
}
