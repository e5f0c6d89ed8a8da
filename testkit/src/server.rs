//! A server process under benchmark: `sockgate` (run or serve) or a
//! baseline (a native echo server, quinn, a hyper server), started on the
//! kit's one spawning path and ready when it prints its address.
//!
//! Unlike the tests' [`Gateway`](crate::gateway::Gateway), a benchmarked
//! sockgate logs at `warn` (logging is not what is measured), may be pinned
//! to a CPU, and uses the benchmarks' compile cache.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::gateway::{START_TIMEOUT, config_toml};
use crate::os::pin_at_exec;
use crate::output::{Output, Running, app_addrs, printed_addr};
use crate::paths::{bench_cache_dir, bench_dir, sockgate_binary};

/// A server process under test, killed when dropped.
pub struct Server {
    running: Running,
    /// Where it accepts connections.
    pub addr: SocketAddr,
    /// The line it printed when ready (for sockgate: the app's line, with
    /// its size and compile or cache-load time).
    pub ready_line: String,
    /// When the process was started.
    pub started: Instant,
}

impl Server {
    /// `sockgate run COMPONENT` on a free loopback port with compile cache
    /// `cache`, ready when it prints the app's `listening` line.
    pub fn sockgate(component: &Path, cache: &Path, pinned: bool) -> Self {
        Self::sockgate_bin(&sockgate_binary(), component, cache, pinned)
    }

    /// Like [`Server::sockgate`] with another build of the binary (an
    /// earlier commit, for before/after figures in the same run).
    pub fn sockgate_bin(binary: &Path, component: &Path, cache: &Path, pinned: bool) -> Self {
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg(component)
            .args(["--listen", "127.0.0.1:0", "--cache-dir"])
            .arg(cache)
            .env("RUST_LOG", "warn");
        Self::spawn(command, pinned, "listening on tcp ")
    }

    /// Starts `command` (pinned to CPU 1 if `pinned`, its stderr inherited)
    /// and waits for the stdout line containing `ready_marker` followed by
    /// its address.
    pub fn spawn(command: Command, pinned: bool, ready_marker: &str) -> Self {
        let running = Self::start(command, pinned, Stdio::inherit());
        let ready = running.stdout.wait_for(START_TIMEOUT, |text| {
            printed_addr(text, ready_marker).is_some()
        });
        let text = running.stdout.text();
        let Some((addr, line)) = printed_addr(&text, ready_marker).filter(|_| ready) else {
            panic!("the server printed no `{ready_marker}ADDR` line before it exited:\n{text}");
        };
        let ready_line = line.to_owned();
        let started = running.started;
        Self {
            running,
            addr,
            ready_line,
            started,
        }
    }

    /// `BINARY serve --config CONFIG` (pinned to CPU 1 if `pinned`, its
    /// stderr to `stderr`), ready once it printed `sockgate ready`; its
    /// [`addr`](Self::addr) and [`ready_line`](Self::ready_line) are those of
    /// the first app it printed.
    pub fn serve(binary: &Path, config: &Path, pinned: bool, stderr: Stdio) -> Self {
        let mut command = Command::new(binary);
        command
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn");
        let running = Self::start(command, pinned, stderr);
        let ready = running
            .stdout
            .wait_for(START_TIMEOUT, |text| text.contains("sockgate ready"));
        let text = running.stdout.text();
        assert!(ready, "{} did not start:\n{text}", binary.display());
        let Some((addr, line)) = printed_addr(&text, " listening on tcp ") else {
            panic!("{} served no app:\n{text}", binary.display());
        };
        let ready_line = line.to_owned();
        let started = running.started;
        Self {
            running,
            addr,
            ready_line,
            started,
        }
    }

    fn start(mut command: Command, pinned: bool, stderr: Stdio) -> Running {
        command.env_remove("RUST_BACKTRACE");
        if pinned {
            pin_at_exec(&mut command, 1);
        }
        Running::spawn(command, Some(stderr)).expect("cannot start server")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.running.pid()
    }

    /// What the server printed on stdout.
    pub fn stdout(&self) -> &Output {
        &self.running.stdout
    }

    /// The address the server printed after `marker` (e.g. `tls listening
    /// on `), if it printed one.
    pub fn printed(&self, marker: &str) -> Option<SocketAddr> {
        printed_addr(&self.stdout().text(), marker).map(|(addr, _)| addr)
    }

    /// The TCP address of every app a sockgate server printed, by name.
    pub fn app_addrs(&self) -> HashMap<String, SocketAddr> {
        app_addrs(&self.stdout().text())
    }
}

/// Writes the configuration of benchmark `bench`,
/// `target/bench-tmp/<bench>/sockgate.toml`: the benchmarks' compile cache,
/// the `[gateway]` lines `gateway` (e.g. a `state_dir`), and `rest` (other
/// tables, `[[app]]` tables). Returns its path.
pub fn write_bench_config(bench: &str, gateway: &str, rest: &str) -> std::path::PathBuf {
    let config = bench_dir(bench).join("sockgate.toml");
    std::fs::write(&config, config_toml(&bench_cache_dir(), gateway, rest))
        .expect("cannot write the benchmark configuration");
    config
}

/// `sockgate serve` with a configuration file holding one app, `app_toml`
/// (the `[[app]]` table, without the header); the gateway's compile cache
/// is `target/bench-cache`, so a component compiled by an earlier
/// benchmark loads at once.
pub fn sockgate_serve(bench: &str, app_toml: &str, pinned: bool) -> Server {
    let state = bench_dir(bench).join("state");
    let config = write_bench_config(
        bench,
        &format!("state_dir = {:?}", state.display().to_string()),
        &format!("[[app]]\n{app_toml}"),
    );
    Server::serve(&sockgate_binary(), &config, pinned, Stdio::inherit())
}

/// `BINARY serve` with a configuration of `apps_toml` (`[[app]]` tables,
/// compile cache `target/bench-cache`), ready once it printed `sockgate
/// ready`; returns it with each app's address, by name.
pub fn sockgate_serve_apps(
    binary: &Path,
    bench: &str,
    apps_toml: &str,
) -> (Server, HashMap<String, SocketAddr>) {
    let config = write_bench_config(bench, "", apps_toml);
    let server = Server::serve(binary, &config, false, Stdio::null());
    let addrs = server.app_addrs();
    (server, addrs)
}
