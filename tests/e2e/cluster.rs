//! Cluster mode (issue 17): three real gateways sharing their deployed apps
//! through a real etcd. Node N runs on 127.0.0.N (its admin API, its peer
//! listener and its apps' ports), so one free port P is the same app on
//! every node: `127.0.0.1:P`, `127.0.0.2:P`, `127.0.0.3:P`.
//!
//! What is checked: a deploy, a new version, a rollback and a removal made
//! on one node reach the others; two deploys of one app at once on two
//! nodes end in one agreed version (the loser told `conflict`, exit code
//! 7); with etcd gone apps keep serving, deploys are refused (exit code 8,
//! `cluster store unavailable`), a restarted node serves from its state
//! directory, and everything resumes when etcd is back; a node that was
//! frozen (SIGSTOP) catches up, across a compaction too; the deploying
//! node's `kill -9` loses nothing; an etcd frozen by SIGSTOP (its port
//! accepting, nothing answering) refuses deploys within a bounded time
//! while the apps keep serving; `--cluster etcd://…` overrides the
//! file's endpoints; the etcd leader's `kill -9` (of three members) breaks
//! no traffic and deploys go on once a new leader is elected; node 2's
//! dashboard, in Chromium, shows every node and the versions they serve;
//! the ~21.8 MB Python echo deployed on one node is served by all three.
//!
//! Plain `#[test]`s with blocking sockets: the CLI, etcd's faults and the
//! clients all block, and a thread per client is simpler than a runtime.
//! Every wait polls a condition against a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sockgate_testkit::etcd::{Etcd, signal};
use sockgate_testkit::output::{Running, printed_admin};

use crate::support::{ScratchDir, guest, root, shared_cache_dir};

/// How long a node may take to print `sockgate ready`.
const NODE_START: Duration = Duration::from_secs(60);
/// How long a change made on one node may take to be served by another:
/// generous for a busy 2-core machine; the target (1 s) is measured and
/// printed, not asserted.
const CONVERGE: Duration = Duration::from_secs(10);
/// How long after etcd's return a deploy may still be refused (the
/// nodes reconnect with a back-off and register anew).
const ETCD_BACK: Duration = Duration::from_secs(15);
/// How long one CLI command may take before the test calls it hung.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a waiting test looks again.
const POLL: Duration = Duration::from_millis(20);
/// The exit code of a deploy that lost a race with another node's.
const EXIT_CONFLICT: i32 = 7;
/// The exit code of an operation refused because etcd cannot be reached.
const EXIT_STORE_UNAVAILABLE: i32 = 8;

/// A TCP port free on every address (bound on `0.0.0.0` and released), so
/// an app deployed with `--listen 0.0.0.0:P` can take it on each node's
/// own IP.
fn free_port_everywhere() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port")
}

/// Node `n`'s IP, `127.0.0.n` (all of 127/8 is loopback on Linux).
fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(n).unwrap())
}

/// Which guest answered on `addr`: `echo` repeats `compute 1`, `hostile`
/// answers `computed …` (see `version_of` in deploy.rs). An error says why
/// there was no answer (refused, closed, timed out).
fn served_by(addr: SocketAddr) -> Result<&'static str, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect: {e}"))?;
    ask_line(&stream, "compute 1").map(|reply| match reply.as_str() {
        "compute 1" => Ok("echo"),
        reply if reply.starts_with("computed ") => Ok("hostile"),
        other => Err(format!("unexpected reply {other:?}")),
    })?
}

/// Sends `line` on `stream` and reads the reply line (within 2 s).
fn ask_line(stream: &TcpStream, line: &str) -> Result<String, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    (&*stream)
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
        Ok(0) => Err("closed".to_owned()),
        Ok(_) => Ok(reply.trim_end().to_owned()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// What one cluster node is started with.
#[derive(Clone, Default)]
struct NodeSpec {
    /// The `[cluster] endpoints` of its file (default: every etcd member).
    endpoints: Option<Vec<String>>,
    /// Extra arguments to `sockgate serve` (e.g. `--cluster etcd://…`).
    args: Vec<String>,
    /// Extra lines of its `[cluster]` table.
    cluster: &'static str,
    /// A compile cache of its own (empty) instead of the tests' shared
    /// one: the node must compile what it receives, as a new machine does.
    own_cache: bool,
    /// Extra tables of its file (`[tls]`, say), after `[cluster]`.
    tables: String,
}

/// The `[cluster]` line of the tests that freeze a node: a frozen node
/// still counts as alive until its lease expires, and a deploy waits up to
/// `spread_timeout_secs` (default 30) for every live node to hold the new
/// component before it goes on with two holders; 3 s keeps those tests
/// short.
const SHORT_SPREAD: &str = "spread_timeout_secs = 3\n";

/// One gateway of the cluster: its files and, while it runs, its process.
struct Node {
    n: usize,
    config: PathBuf,
    state: PathBuf,
    args: Vec<String>,
    process: Option<Running>,
    admin: SocketAddr,
    /// What earlier lives printed (stdout and stderr), for failure reports
    /// and for the `resync` check across a restart.
    earlier: String,
}

impl Node {
    fn running(&self) -> &Running {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is not running", self.n))
    }

    fn pid(&self) -> u32 {
        self.running().pid()
    }

    /// Everything this node printed on stderr in its current life.
    fn stderr(&self) -> String {
        self.running().stderr.text()
    }

    /// The tail of everything the node printed, over all its lives.
    fn report(&self) -> String {
        let current = self
            .process
            .as_ref()
            .map(|p| format!("stdout:\n{}\nstderr:\n{}", p.stdout.text(), p.stderr.text()))
            .unwrap_or_else(|| "(not running)".to_owned());
        let all = format!("{}{current}", self.earlier);
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

/// An etcd and the gateways sharing it, all killed when dropped (printing
/// what each printed when the test failed).
struct Cluster {
    nodes: Vec<Node>,
    etcd: Etcd,
    token_file: PathBuf,
    dir: ScratchDir,
}

impl Cluster {
    /// One etcd member and `nodes` gateways started with the defaults.
    fn start(label: &str, nodes: usize) -> Self {
        Self::start_with(label, Etcd::start(), &vec![NodeSpec::default(); nodes])
    }

    /// `etcd` and one gateway per spec, node 1 first, each ready when
    /// this returns.
    fn start_with(label: &str, etcd: Etcd, specs: &[NodeSpec]) -> Self {
        let dir = ScratchDir::new(label);
        let token_file = dir.0.join("cluster-token");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .and_then(|mut f| f.write_all(b"cluster-test-token-0123456789abcdef0123456789abcdef\n"))
            .unwrap();
        let mut cluster = Self {
            nodes: Vec::new(),
            etcd,
            token_file,
            dir,
        };
        for (i, spec) in specs.iter().enumerate() {
            let n = i + 1;
            let ip = node_ip(n);
            let node_dir = cluster.dir.0.join(format!("node-{n}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let state = node_dir.join("state");
            let endpoints = spec
                .endpoints
                .clone()
                .unwrap_or_else(|| cluster.etcd.endpoints());
            let gateway = format!(
                "admin = \"{ip}:0\"\nstate_dir = {:?}\n",
                state.display().to_string()
            );
            let table = format!(
                "[cluster]\nendpoints = {endpoints:?}\nnode = \"node-{n}\"\n\
                 prefix = \"/sockgate/v1/\"\npeer_listen = \"{ip}:0\"\ntoken_file = {:?}\n\
                 app_address = \"{ip}\"\n{}\n{}",
                cluster.token_file.display().to_string(),
                spec.cluster,
                spec.tables.replace("{ip}", &ip.to_string()),
            );
            let cache = if spec.own_cache {
                node_dir.join("compile-cache")
            } else {
                shared_cache_dir()
            };
            let config = node_dir.join("sockgate.toml");
            std::fs::write(
                &config,
                sockgate_testkit::gateway::config_toml(&cache, &gateway, &table),
            )
            .unwrap();
            cluster.nodes.push(Node {
                n,
                config,
                state,
                args: spec.args.clone(),
                process: None,
                admin: SocketAddr::from((ip, 0)),
                earlier: String::new(),
            });
            cluster.launch(n);
        }
        cluster
    }

    fn node(&self, n: usize) -> &Node {
        &self.nodes[n - 1]
    }

    /// Starts node `n`'s process and waits for `sockgate ready`.
    fn launch(&mut self, n: usize) {
        let node = &mut self.nodes[n - 1];
        assert!(node.process.is_none(), "node {n} is running");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .args(&node.args)
            .env("RUST_LOG", "info")
            .env("XDG_CACHE_HOME", root().join("target/sockgate-test-xdg"));
        let running = Running::spawn(command, None).expect("cannot start sockgate");
        let ready = running
            .stdout
            .wait_for(NODE_START, |t| t.contains("sockgate ready"));
        let stdout = running.stdout.text();
        node.process = Some(running);
        if !ready {
            panic!("node {n} did not start (its output follows)");
        }
        node.admin = printed_admin(&stdout)
            .unwrap_or_else(|| panic!("node {n} printed no admin address:\n{stdout}"));
        assert_eq!(
            node.admin.ip(),
            node_ip(n),
            "node {n}'s admin API is not on its IP"
        );
        // The line naming the node and etcd (`cluster: node node-N joined
        // etcd at …` in the brief, `cluster: node node-N of the cluster in
        // etcd at …` as built): only its start is relied on.
        assert!(
            stdout.contains(&format!("cluster: node node-{n} ")),
            "node {n} did not say it is in the cluster:\n{stdout}"
        );
    }

    /// SIGKILLs node `n` (its state directory stays).
    fn kill(&mut self, n: usize) {
        let node = &mut self.nodes[n - 1];
        let process = node.process.take().expect("node is running");
        node.earlier.push_str(&format!(
            "stdout:\n{}\nstderr:\n{}\n--- (killed) ---\n",
            process.stdout.text(),
            process.stderr.text()
        ));
        drop(process); // SIGKILL and reap
    }

    /// `kill -9` node `n` and start it again on the same files.
    fn restart(&mut self, n: usize) {
        self.kill(n);
        self.launch(n);
    }

    /// SIGSTOPs node `n`: it is away, though its sockets stay open.
    fn freeze(&self, n: usize) {
        signal(self.node(n).pid(), libc::SIGSTOP);
    }

    /// SIGCONTs node `n` after [`Cluster::freeze`].
    fn thaw(&self, n: usize) {
        signal(self.node(n).pid(), libc::SIGCONT);
    }

    /// The CLI against node `n`'s admin API, not yet waited for.
    fn cli_command(&self, n: usize, args: &[&str]) -> Command {
        let node = self.node(n);
        let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
        command
            .args(args)
            .env("SOCKGATE_ADMIN", node.admin.to_string())
            .env("SOCKGATE_STATE_DIR", &node.state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs the CLI against node `n`; returns exit code, stdout, stderr.
    fn cli(&self, n: usize, args: &[&str]) -> (i32, String, String) {
        let child = self.cli_command(n, args).spawn().unwrap();
        self.finish(child, args)
    }

    /// Waits (bounded) for a CLI process; returns exit code, stdout,
    /// stderr.
    fn finish(&self, child: Child, args: &[&str]) -> (i32, String, String) {
        self.finish_within(child, args, CLI_TIMEOUT)
    }

    /// [`Cluster::finish`] with its own bound, for a command known to be
    /// slow (a large component's deploy).
    fn finish_within(
        &self,
        child: Child,
        args: &[&str],
        within: Duration,
    ) -> (i32, String, String) {
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(within) {
            Ok(output) => {
                let output = output.unwrap();
                (
                    output.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&output.stdout).into_owned(),
                    String::from_utf8_lossy(&output.stderr).into_owned(),
                )
            }
            Err(_) => {
                signal(pid, libc::SIGKILL);
                panic!("sockgate {args:?} hung for {within:?}");
            }
        }
    }

    /// `sockgate deploy NAME GUEST EXTRA…` on node `n`, which must succeed;
    /// returns its stdout.
    fn deploy(&self, n: usize, name: &str, guest_name: &str, extra: &[&str]) -> String {
        let component = guest(guest_name).display().to_string();
        let mut args = vec!["deploy", name, component.as_str()];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = self.cli(n, &args);
        assert_eq!(code, 0, "deploy on node {n} failed: {stdout}{stderr}");
        stdout
    }

    /// `sockgate deploy NAME GUEST EXTRA…` on node `n` just after an etcd
    /// member's loss: retried while refused with exit code 8 (no leader
    /// yet, or `leader changed`) for up to `within`, any other failure
    /// failing the test; returns how many tries were refused.
    fn deploy_once_etcd_leads(
        &self,
        n: usize,
        name: &str,
        guest_name: &str,
        extra: &[&str],
        within: Duration,
    ) -> usize {
        let component = guest(guest_name).display().to_string();
        let mut args = vec!["deploy", name, component.as_str()];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let mut refusals = 0;
        loop {
            let (code, stdout, stderr) = self.cli(n, &args);
            if code == 0 {
                return refusals;
            }
            assert_eq!(
                code, EXIT_STORE_UNAVAILABLE,
                "deploy on node {n} failed otherwise than `store unavailable`: {stdout}{stderr}"
            );
            refusals += 1;
            assert!(
                started.elapsed() < within,
                "deploys on node {n} still refused after {within:?} ({refusals} refusals): \
                 {stderr}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `sockgate ls --json` on node `n`.
    fn ls(&self, n: usize) -> Vec<Value> {
        let (code, stdout, stderr) = self.cli(n, &["ls", "--json"]);
        assert_eq!(code, 0, "ls on node {n}: {stderr}");
        serde_json::from_str::<Value>(&stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// App `name` as node `n` lists it, if it does.
    fn listed(&self, n: usize, name: &str) -> Option<Value> {
        self.ls(n).into_iter().find(|a| a["name"] == name)
    }

    /// The version of app `name` node `n` lists, if it lists the app.
    fn version(&self, n: usize, name: &str) -> Option<u64> {
        self.listed(n, name).and_then(|a| a["version"].as_u64())
    }

    /// Port `port` on node `n`'s IP.
    fn addr(n: usize, port: u16) -> SocketAddr {
        SocketAddr::from((node_ip(n), port))
    }

    /// Waits until node `n` serves `want` (`echo` or `hostile`) on `port`;
    /// returns how long that took.
    fn wait_serving(&self, n: usize, port: u16, want: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let got = served_by(Self::addr(n, port));
            if got.as_deref() == Ok(want) {
                return started.elapsed();
            }
            if started.elapsed() >= within {
                panic!(
                    "node {n} does not serve {want} on port {port} after {within:?} \
                     (last: {got:?})",
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until node `n` refuses connections on `port`.
    fn wait_refused(&self, n: usize, port: u16, within: Duration) {
        let started = Instant::now();
        loop {
            match TcpStream::connect_timeout(&Self::addr(n, port), Duration::from_secs(1)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                other => assert!(
                    started.elapsed() < within,
                    "node {n} still takes connections on port {port} after {within:?} \
                     ({other:?})",
                ),
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until node `n` lists app `name` at `version` (`None`: does not
    /// list it); returns what it lists.
    fn wait_version(&self, n: usize, name: &str, version: Option<u64>) -> Option<Value> {
        let started = Instant::now();
        loop {
            let app = self.listed(n, name);
            if app.as_ref().and_then(|a| a["version"].as_u64()) == version {
                return app;
            }
            assert!(
                started.elapsed() < CONVERGE,
                "node {n} lists {name} as {app:?}, not at version {version:?}",
            );
            std::thread::sleep(POLL);
        }
    }

    /// What every node and etcd printed, for a failure message.
    fn report(&self) -> String {
        let mut report = String::new();
        for node in &self.nodes {
            report.push_str(&format!(
                "--- node {} (the end of what it printed) ---\n{}\n",
                node.n,
                node.report()
            ));
        }
        for i in 0..self.etcd.len() {
            report.push_str(&format!(
                "--- etcd member {i} stderr ---\n{}\n",
                self.etcd.stderr(i)
            ));
        }
        report
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A frozen node would outlive a plain kill's wait; thaw first.
        for node in &self.nodes {
            if let Some(process) = &node.process {
                // SAFETY: kill(2) takes plain integers; a failure (the
                // process is gone) is of no matter here.
                let _ = unsafe { libc::kill(process.pid() as i32, libc::SIGCONT) };
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

/// A client echoing on one address on its own thread, a round trip every
/// few milliseconds on one long connection and on a fresh connection each
/// time, until stopped: what "the echo keeps working" means.
struct Prober {
    stop: Arc<AtomicBool>,
    /// Round trips that worked so far.
    ok: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Prober {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let ok = Arc::new(AtomicUsize::new(0));
        let ok_count = ok.clone();
        let thread = std::thread::spawn(move || {
            let long = TcpStream::connect(addr).expect("the prober cannot connect");
            let mut failures = Vec::new();
            let mut round = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                round += 1;
                let line = format!("probe {round}");
                match ask_line(&long, &line) {
                    Ok(reply) if reply == line => _ = ok_count.fetch_add(1, Ordering::Relaxed),
                    other => failures.push(format!("long connection, round {round}: {other:?}")),
                }
                let fresh = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    .map_err(|e| e.to_string())
                    .and_then(|s| ask_line(&s, &line));
                match fresh {
                    Ok(reply) if reply == line => _ = ok_count.fetch_add(1, Ordering::Relaxed),
                    other => failures.push(format!("new connection, round {round}: {other:?}")),
                }
                // Pacing, not synchronisation: a round every ~10 ms.
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok_count.load(Ordering::Relaxed), failures)
        });
        Self { stop, ok, thread }
    }

    /// Waits until `more` round trips beyond those done so far have
    /// worked (or `within` passes, which fails the test).
    fn wait_for_more(&self, more: usize, within: Duration) {
        let target = self.ok.load(Ordering::Relaxed) + more;
        let started = Instant::now();
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(
                started.elapsed() < within,
                "the prober made {} of {target} round trips within {within:?}",
                self.ok.load(Ordering::Relaxed)
            );
            std::thread::sleep(POLL);
        }
    }

    /// Stops the client; returns how many round trips succeeded and what
    /// failed.
    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn a_deploy_on_one_node_is_served_by_every_node() {
    let cluster = Cluster::start("cluster-deploy", 3);
    let port = free_port_everywhere();
    let listen = format!("0.0.0.0:{port}");
    let stdout = cluster.deploy(1, "echo", "echo", &["--listen", &listen]);
    let returned = Instant::now();
    let mut times = Vec::new();
    for n in [2, 3] {
        cluster.wait_serving(n, port, "echo", CONVERGE.saturating_sub(returned.elapsed()));
        times.push((n, returned.elapsed()));
    }
    eprintln!(
        "deploy → served on the other nodes (target 1 s): {}",
        times
            .iter()
            .map(|(n, t)| format!("node {n} after {} ms", t.as_millis()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    cluster.wait_serving(1, port, "echo", CONVERGE);

    let on_1 = cluster
        .listed(1, "echo")
        .expect("node 1 does not list echo");
    let on_3 = cluster
        .wait_version(3, "echo", on_1["version"].as_u64())
        .unwrap();
    assert_eq!(on_1["version"], 1, "{stdout}");
    assert_eq!(on_3["digest"], on_1["digest"]);
    assert_eq!(
        on_3["tcp"].as_str(),
        Some(Cluster::addr(3, port).to_string().as_str()),
        "node 3 lists the app on another address: {on_3}"
    );
}

#[test]
fn a_new_version_a_rollback_and_a_removal_reach_every_node() {
    let cluster = Cluster::start("cluster-versions", 3);
    let port = free_port_everywhere();
    cluster.deploy(1, "echo", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    for n in 1..=3 {
        cluster.wait_serving(n, port, "echo", CONVERGE);
    }

    cluster.deploy(1, "echo", "hostile", &[]);
    for n in 1..=3 {
        let took = cluster.wait_serving(n, port, "hostile", CONVERGE);
        eprintln!("version 2 served on node {n} {} ms after", took.as_millis());
        cluster.wait_version(n, "echo", Some(2));
    }

    let (code, stdout, stderr) = cluster.cli(2, &["rollback", "echo"]);
    assert_eq!(code, 0, "rollback on node 2: {stdout}{stderr}");
    assert!(stdout.contains("back at version 1"), "{stdout}");
    for n in 1..=3 {
        cluster.wait_serving(n, port, "echo", CONVERGE);
        cluster.wait_version(n, "echo", Some(1));
    }

    let (code, stdout, stderr) = cluster.cli(3, &["rm", "echo"]);
    assert_eq!(code, 0, "rm on node 3: {stdout}{stderr}");
    for n in 1..=3 {
        cluster.wait_refused(n, port, CONVERGE);
        cluster.wait_version(n, "echo", None);
    }
}

#[test]
fn two_deploys_of_one_app_at_once_on_two_nodes_end_in_one_version() {
    let cluster = Cluster::start("cluster-conflict", 3);
    let port = free_port_everywhere();
    let listen = format!("0.0.0.0:{port}");
    let echo = guest("echo").display().to_string();
    let hostile = guest("hostile").display().to_string();
    let mut before = 0;
    // Round 1 creates the app from both sides; round 2 replaces it.
    for (round, (on_1, on_2)) in [(&echo, &hostile), (&hostile, &echo)]
        .into_iter()
        .enumerate()
    {
        let args_1 = ["deploy", "same-app", on_1.as_str(), "--listen", &listen];
        let args_2 = ["deploy", "same-app", on_2.as_str(), "--listen", &listen];
        let first = cluster.cli_command(1, &args_1).spawn().unwrap();
        let second = cluster.cli_command(2, &args_2).spawn().unwrap();
        let outcomes = [
            (1, on_1, cluster.finish(first, &args_1)),
            (2, on_2, cluster.finish(second, &args_2)),
        ];
        let mut succeeded = Vec::new();
        for (n, component, (code, stdout, stderr)) in &outcomes {
            if *code == 0 {
                succeeded.push((*n, component.as_str()));
            } else {
                assert_eq!(
                    *code, EXIT_CONFLICT,
                    "round {round}: the deploy on node {n} failed otherwise than by a \
                     conflict: {stdout}{stderr}"
                );
                assert!(
                    stderr.contains("conflict"),
                    "round {round}: node {n}'s refusal does not say conflict: {stderr}"
                );
            }
        }
        assert!(
            !succeeded.is_empty(),
            "round {round}: both deploys failed: {outcomes:?}"
        );
        let expected = before + succeeded.len() as u64;
        eprintln!(
            "round {round}: {} deploy(s) succeeded ({succeeded:?}), version {expected} expected",
            succeeded.len()
        );
        for n in 1..=3 {
            cluster.wait_version(n, "same-app", Some(expected));
        }
        let digests: Vec<Value> = (1..=3)
            .map(|n| cluster.listed(n, "same-app").unwrap()["digest"].clone())
            .collect();
        assert!(
            digests.iter().all(|d| *d == digests[0]),
            "round {round}: the nodes list different digests at one version: {digests:?}"
        );
        // Every node serves the same guest: the one deploy that won, or
        // (both succeeded) whichever came second.
        let winner = if succeeded.len() == 1 {
            Some(if succeeded[0].1 == echo {
                "echo"
            } else {
                "hostile"
            })
        } else {
            None
        };
        let served_on_1 = match winner {
            Some(want) => {
                cluster.wait_serving(1, port, want, CONVERGE);
                want
            }
            None => served_by(Cluster::addr(1, port)).unwrap(),
        };
        for n in 2..=3 {
            cluster.wait_serving(n, port, served_on_1, CONVERGE);
        }
        before = expected;
    }
}

#[test]
fn with_etcd_down_apps_keep_serving_deploys_are_refused_and_all_resumes_when_it_returns() {
    let mut cluster = Cluster::start("cluster-etcd-down", 3);
    let port = free_port_everywhere();
    cluster.deploy(1, "echo", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    for n in 1..=3 {
        cluster.wait_serving(n, port, "echo", CONVERGE);
    }
    let prober = Prober::start(Cluster::addr(2, port));

    cluster.etcd.kill(0);
    let asked = Instant::now();
    let hostile = guest("hostile").display().to_string();
    let (code, stdout, stderr) = cluster.cli(1, &["deploy", "echo", &hostile]);
    eprintln!(
        "a deploy with etcd down answered in {} ms",
        asked.elapsed().as_millis()
    );
    assert_eq!(
        code, EXIT_STORE_UNAVAILABLE,
        "deploy with etcd down: {stdout}{stderr}"
    );
    assert!(
        stderr.contains("cluster store unavailable"),
        "deploy with etcd down: {stderr}"
    );
    assert_eq!(
        served_by(Cluster::addr(1, port)),
        Ok("echo"),
        "the refused deploy changed node 1"
    );
    assert_eq!(cluster.version(1, "echo"), Some(1));

    // A node restarted while etcd is down serves from its state directory.
    cluster.restart(3);
    cluster.wait_serving(3, port, "echo", CONVERGE);
    assert_eq!(cluster.version(3, "echo"), Some(1));

    // Node 2 noticed etcd is gone (its watch broke), and went on serving.
    let noticed = cluster
        .node(2)
        .running()
        .stderr
        .wait_for(ETCD_BACK, |t| t.contains("cannot follow etcd"));
    if !noticed {
        eprintln!("note: node 2 did not log `cannot follow etcd` within {ETCD_BACK:?}");
    }
    prober.wait_for_more(200, CONVERGE);

    let (ok, failures) = prober.stop();
    assert!(
        failures.is_empty(),
        "node 2's echo failed while etcd was down ({ok} round trips worked): {failures:#?}"
    );
    assert!(ok > 0, "the prober made no round trip");
    eprintln!("node 2 answered {ok} round trips while etcd was down");

    cluster.etcd.restart(0);
    let back = Instant::now();
    let mut refusals = 0;
    loop {
        let (code, stdout, stderr) = cluster.cli(1, &["deploy", "echo", &hostile]);
        if code == 0 {
            break;
        }
        assert_eq!(code, EXIT_STORE_UNAVAILABLE, "{stdout}{stderr}");
        refusals += 1;
        assert!(
            back.elapsed() < ETCD_BACK,
            "deploys still refused {ETCD_BACK:?} after etcd came back: {stderr}",
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "a deploy worked {} ms after etcd came back ({refusals} refused before)",
        back.elapsed().as_millis()
    );
    for n in 1..=3 {
        cluster.wait_serving(n, port, "hostile", CONVERGE);
        cluster.wait_version(n, "echo", Some(2));
    }
}

#[test]
fn with_etcd_frozen_apps_keep_serving_and_deploys_are_refused_in_bounded_time() {
    let cluster = Cluster::start("cluster-etcd-frozen", 3);
    let port = free_port_everywhere();
    cluster.deploy(1, "echo", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    for n in 1..=3 {
        cluster.wait_serving(n, port, "echo", CONVERGE);
    }
    let prober = Prober::start(Cluster::addr(3, port));

    // SIGSTOP: etcd's port still accepts, and nothing answers.
    cluster.etcd.pause(0);
    let asked = Instant::now();
    let hostile = guest("hostile").display().to_string();
    let (code, stdout, stderr) = cluster.cli(1, &["deploy", "echo", &hostile]);
    let answered = asked.elapsed();
    eprintln!(
        "a deploy with etcd frozen answered in {} ms",
        answered.as_millis()
    );
    assert_eq!(
        code, EXIT_STORE_UNAVAILABLE,
        "deploy with etcd frozen: {stdout}{stderr}"
    );
    assert!(
        answered < Duration::from_secs(20),
        "a deploy waited {answered:?} on a frozen etcd"
    );
    assert_eq!(served_by(Cluster::addr(1, port)), Ok("echo"));
    prober.wait_for_more(200, CONVERGE);

    cluster.etcd.resume(0);
    let back = Instant::now();
    loop {
        let (code, stdout, stderr) = cluster.cli(1, &["deploy", "echo", &hostile]);
        if code == 0 {
            break;
        }
        assert_eq!(code, EXIT_STORE_UNAVAILABLE, "{stdout}{stderr}");
        assert!(
            back.elapsed() < ETCD_BACK,
            "deploys still refused {ETCD_BACK:?} after etcd was resumed: {stderr}",
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for n in 1..=3 {
        cluster.wait_serving(n, port, "hostile", CONVERGE);
    }
    let (ok, failures) = prober.stop();
    assert!(
        failures.is_empty(),
        "node 3's echo failed around the frozen etcd ({ok} round trips worked): {failures:#?}"
    );
}

#[test]
fn a_node_that_was_away_catches_up_across_a_compaction_too() {
    let spec = NodeSpec {
        cluster: SHORT_SPREAD,
        ..NodeSpec::default()
    };
    let cluster = Cluster::start_with("cluster-away", Etcd::start(), &vec![spec; 3]);
    let port = free_port_everywhere();
    cluster.deploy(1, "svc", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    for n in 1..=3 {
        cluster.wait_serving(n, port, "echo", CONVERGE);
    }

    cluster.freeze(3);
    cluster.deploy(1, "svc", "hostile", &[]);
    cluster.wait_serving(2, port, "hostile", CONVERGE);
    cluster.thaw(3);
    let took = cluster.wait_serving(3, port, "hostile", CONVERGE);
    eprintln!("node 3 caught up {} ms after SIGCONT", took.as_millis());
    cluster.wait_version(3, "svc", Some(2));

    // Away over two deploys and a compaction of everything before them.
    let late_port = free_port_everywhere();
    cluster.freeze(3);
    cluster.deploy(1, "svc", "echo", &[]);
    cluster.deploy(
        1,
        "late",
        "hostile",
        &["--listen", &format!("0.0.0.0:{late_port}")],
    );
    cluster.wait_serving(2, port, "echo", CONVERGE);
    cluster.wait_serving(2, late_port, "hostile", CONVERGE);
    let revision = cluster.etcd.compact_to_latest();
    cluster.thaw(3);
    let took = cluster.wait_serving(3, port, "echo", CONVERGE);
    cluster.wait_serving(3, late_port, "hostile", CONVERGE);
    cluster.wait_version(3, "svc", Some(3));
    cluster.wait_version(3, "late", Some(1));
    eprintln!(
        "node 3 converged {} ms after SIGCONT past a compaction at revision {revision} \
         (resync mentioned: {}; the watch may simply have had the events already)",
        took.as_millis(),
        cluster.node(3).stderr().contains("resync")
    );
}

/// The compaction case made certain: node 3 talks to etcd member `c`
/// only, and `c` dies while node 3 is frozen, so the events of the deploys
/// can never have reached node 3's socket; when node 3 resumes, its watch
/// must start again from a revision the compaction removed, and only a
/// full read (a resync) brings it up to date.
#[test]
fn a_node_whose_watch_fell_behind_a_compaction_resyncs() {
    let etcd = Etcd::start_cluster(3);
    let (ab, c) = (vec![etcd.endpoint(0), etcd.endpoint(1)], etcd.endpoint(2));
    let specs = [
        NodeSpec {
            endpoints: Some(ab.clone()),
            cluster: SHORT_SPREAD,
            ..NodeSpec::default()
        },
        NodeSpec {
            endpoints: Some(ab),
            cluster: SHORT_SPREAD,
            ..NodeSpec::default()
        },
        NodeSpec {
            endpoints: Some(vec![c]),
            cluster: SHORT_SPREAD,
            ..NodeSpec::default()
        },
    ];
    let mut cluster = Cluster::start_with("cluster-resync", etcd, &specs);
    let port = free_port_everywhere();
    cluster.deploy(1, "svc", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    for n in 1..=3 {
        cluster.wait_serving(n, port, "echo", CONVERGE);
    }

    let late_port = free_port_everywhere();
    cluster.freeze(3);
    cluster.etcd.kill(2);
    // Member c may have been the leader: the first deploy waits out the
    // election.
    cluster.deploy_once_etcd_leads(1, "svc", "hostile", &[], FAILOVER);
    cluster.deploy(
        1,
        "late",
        "echo",
        &["--listen", &format!("0.0.0.0:{late_port}")],
    );
    cluster.wait_serving(2, port, "hostile", CONVERGE);
    cluster.wait_serving(2, late_port, "echo", CONVERGE);
    let revision = cluster.etcd.compact_to_latest();
    cluster.etcd.restart(2);
    cluster.thaw(3);
    let took = cluster.wait_serving(3, port, "hostile", CONVERGE);
    cluster.wait_serving(3, late_port, "echo", CONVERGE);
    cluster.wait_version(3, "svc", Some(2));
    cluster.wait_version(3, "late", Some(1));
    eprintln!(
        "node 3 converged {} ms after SIGCONT, past a compaction at revision {revision}",
        took.as_millis()
    );
    assert!(
        cluster
            .node(3)
            .running()
            .stderr
            .wait_for(CONVERGE, |t| t.contains("resync")),
        "node 3 converged without saying `resync`",
    );
}

#[test]
fn kill_9_of_the_deploying_node_loses_nothing() {
    let mut cluster = Cluster::start("cluster-kill", 3);
    let port = free_port_everywhere();
    cluster.deploy(1, "echo", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    cluster.kill(1);
    for n in [2, 3] {
        cluster.wait_serving(n, port, "echo", CONVERGE);
    }
    cluster.launch(1);
    cluster.wait_serving(1, port, "echo", CONVERGE);
    assert_eq!(cluster.version(1, "echo"), Some(1));
}

#[test]
fn the_cluster_flag_overrides_the_files_endpoints() {
    let etcd = Etcd::start();
    let flag = format!("etcd://{}", etcd.endpoint(0));
    // Nothing listens on port 1: a node that used the file's endpoint
    // would never see node 1's deploy.
    let specs = [
        NodeSpec::default(),
        NodeSpec {
            endpoints: Some(vec!["127.0.0.1:1".to_owned()]),
            args: vec!["--cluster".to_owned(), flag],
            ..NodeSpec::default()
        },
    ];
    let cluster = Cluster::start_with("cluster-flag", etcd, &specs);
    // The line naming etcd's endpoints (`cluster: node node-2 … etcd at
    // A,B …`), if printed, must not name the file's.
    let stdout = cluster.node(2).running().stdout.text();
    if let Some(line) = stdout.lines().find(|l| l.starts_with("cluster: node")) {
        assert!(
            !line
                .split([',', ' ', '(', ')'])
                .any(|e| e.trim_start_matches("http://") == "127.0.0.1:1"),
            "node 2 used the file's endpoint: {line}"
        );
    }
    let port = free_port_everywhere();
    cluster.deploy(1, "echo", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    cluster.wait_serving(2, port, "echo", CONVERGE);
}

/// How long the cluster panel of a dashboard may take to show a change
/// (a node publishes what it serves as soon as it switched; the margin is
/// for a loaded machine).
const PANEL_SHOWS: Duration = Duration::from_secs(30);

/// What the cluster panel of the page shows, read from its markup
/// (`host/src/admin/cluster_panel.rs`): `{panel: false}` when there is
/// none, else this node, etcd's state, one entry per node row (health,
/// its text, the version cell of each app) and the apps flagged as
/// differing.
const READ_PANEL: &str = "(() => {\
    const s = document.querySelector('section#cluster');\
    if (!s) return { panel: false, text: document.body.innerText };\
    const rows = [...s.querySelectorAll('tr[data-node]')];\
    return {\
      panel: true,\
      thisNode: s.querySelector('[data-this-node]').dataset.thisNode,\
      etcd: s.querySelector('[data-etcd]').dataset.etcd,\
      nodes: Object.fromEntries(rows.map(r => [r.dataset.node, {\
        health: r.querySelector('[data-health]').dataset.health,\
        text: r.innerText,\
        apps: Object.fromEntries([...r.querySelectorAll('td[data-app]')]\
          .map(c => [c.dataset.app, c.textContent])),\
      }])),\
      differs: [...s.querySelectorAll('[data-differs]')].map(e => e.dataset.differs),\
      differsText: [...s.querySelectorAll('[data-differs]')].map(e => e.innerText),\
      pwned: window.pwned === true,\
      text: s.innerText,\
    };\
  })()";

/// Loads node `admin`'s dashboard overview afresh until its cluster panel
/// satisfies `done` (within [`PANEL_SHOWS`]); returns what the panel
/// showed. The page is server-rendered, so each look is a new load, told
/// apart from the last one by its query.
fn panel_until(
    browser: &mut crate::browser::Browser,
    admin: SocketAddr,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    let mut load = 0u32;
    loop {
        load += 1;
        browser.goto(&format!("http://{admin}/?load={load}"));
        // The TLS heading follows the cluster panel: once it is parsed,
        // the panel is whole.
        let panel = browser.wait_for(
            "the dashboard's overview",
            &format!(
                "location.search === '?load={load}' && document.body \
                 && document.body.innerText.includes('TLS certificates') && {READ_PANEL}"
            ),
            crate::browser::LOAD_TIMEOUT,
        );
        if done(&panel) {
            return panel;
        }
        assert!(
            started.elapsed() < PANEL_SHOWS,
            "node {admin}'s dashboard does not show {what} after {PANEL_SHOWS:?}; it shows:\n\
             {panel:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Node 2's dashboard, in Debian's headless Chromium: the cluster panel
/// names node 2 as this node and etcd as reachable, lists all three nodes
/// with their peer URLs, healthy, each serving version 2 of the app; then
/// a node key written straight into etcd (a node serving version 1, whose
/// peer port does not answer, named with markup) shows as unhealthy, its
/// name as text, and the app flagged as differing between nodes.
#[test]
fn the_dashboard_of_node_2_shows_every_node_and_the_versions_they_serve() {
    let cluster = Cluster::start("cluster-dashboard", 3);
    let port = free_port_everywhere();
    cluster.deploy(1, "echo", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    cluster.deploy(1, "echo", "hostile", &[]);
    for n in 1..=3 {
        cluster.wait_serving(n, port, "hostile", CONVERGE);
    }
    let node = cluster.node(2);
    let mut browser = crate::browser::Browser::start(
        &cluster.dir.0.join("profile"),
        &cluster.dir.0.join("chromium.log"),
        1280,
        1600,
    );
    browser.log_in(node.admin, &node.state);

    let all_at_2 =
        |panel: &Value| (1..=3).all(|n| panel["nodes"][format!("node-{n}")]["apps"]["echo"] == "2");
    let panel = panel_until(&mut browser, node.admin, "3 nodes at version 2", all_at_2);
    assert_eq!(panel["thisNode"], "node-2", "{panel:#}");
    assert_eq!(panel["etcd"], "reachable", "{panel:#}");
    let endpoint = cluster.etcd.endpoint(0);
    assert!(
        panel["text"].as_str().unwrap().contains(&endpoint),
        "the panel does not name etcd's endpoint {endpoint}: {panel:#}"
    );
    assert_eq!(panel["nodes"].as_object().unwrap().len(), 3, "{panel:#}");
    for n in 1..=3 {
        let row = &panel["nodes"][format!("node-{n}")];
        assert_eq!(row["health"], "true", "node-{n} is not healthy: {panel:#}");
        let text = row["text"].as_str().unwrap();
        assert!(
            text.contains(&format!("http://127.0.0.{n}:")),
            "node-{n}'s row names no peer URL on its IP: {text}"
        );
        assert_eq!(
            text.contains("(this node)"),
            n == 2,
            "node-{n}'s row: {text}"
        );
    }
    assert_eq!(panel["differs"], serde_json::json!([]), "{panel:#}");
    let shot = crate::dashboard::keep_screenshot(&browser.screenshot(), "dashboard-cluster.png");
    eprintln!("screenshot: {}", shot.display());

    // A node as etcd holds it: any node may write its own key, so its
    // name is untrusted text. It serves version 1 and its peer port
    // (port 1 on loopback) refuses.
    let stray = "<img src=x onerror=window.pwned=true>";
    cluster.etcd.put(
        &format!("/sockgate/v1/nodes/{stray}"),
        r#"{"peer_url":"http://127.0.0.1:1","sockgate":"0.0.0","apps":{"echo":1}}"#,
    );
    let panel = panel_until(&mut browser, node.admin, "the stray node", |panel| {
        panel["nodes"].get(stray).is_some()
    });
    assert!(
        !panel["pwned"].as_bool().unwrap(),
        "markup from etcd ran: {panel:#}"
    );
    assert_eq!(panel["nodes"][stray]["health"], "false", "{panel:#}");
    assert!(
        panel["nodes"][stray]["text"]
            .as_str()
            .unwrap()
            .contains("peer port unreachable"),
        "{panel:#}"
    );
    assert_eq!(panel["differs"], serde_json::json!(["echo"]), "{panel:#}");
    let flagged = panel["differsText"][0].as_str().unwrap();
    assert!(
        flagged.contains("node-1: 2") && flagged.contains(&format!("{stray}: 1")),
        "the flag does not say which node serves which version: {flagged}"
    );
    let shot =
        crate::dashboard::keep_screenshot(&browser.screenshot(), "dashboard-cluster-differs.png");
    eprintln!("screenshot: {}", shot.display());
}

/// How long a deploy after the etcd leader's death may keep being refused
/// (exit code 8) while the remaining members elect a new leader and the
/// nodes' clients leave the dead member.
const FAILOVER: Duration = Duration::from_secs(60);

/// Three gateways against a three-member etcd, each given all three
/// endpoints: the leader's `kill -9` never breaks an echo on node 2, and a
/// deploy of a new version made on node 1 afterwards succeeds (retried
/// while refused for want of a leader) and is served by nodes 2 and 3.
/// Every node sets the dead member aside (before, requests kept landing on
/// it and deploys were refused for as long as it was down).
#[test]
fn the_etcd_leaders_kill_9_breaks_no_traffic_and_deploys_go_on() {
    let etcd = Etcd::start_cluster(3);
    let endpoints = etcd.endpoints();
    let mut cluster = Cluster::start_with("cluster-failover", etcd, &vec![NodeSpec::default(); 3]);
    for n in 1..=3 {
        let stdout = cluster.node(n).running().stdout.text();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("cluster: node"))
            .unwrap_or_else(|| panic!("node {n} printed no cluster line:\n{stdout}"));
        for endpoint in &endpoints {
            assert!(
                line.contains(endpoint.as_str()),
                "node {n} was not given etcd member {endpoint}: {line}"
            );
        }
    }
    let port = free_port_everywhere();
    cluster.deploy(1, "echo", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    for n in 1..=3 {
        cluster.wait_serving(n, port, "echo", CONVERGE);
    }
    let prober = Prober::start(Cluster::addr(2, port));
    prober.wait_for_more(50, CONVERGE);

    let leader = cluster.etcd.wait_leader();
    cluster.etcd.kill(leader);
    let killed = Instant::now();
    eprintln!("killed etcd member {leader}, the leader");

    let refusals = cluster.deploy_once_etcd_leads(1, "echo", "hostile", &[], FAILOVER);
    eprintln!(
        "a deploy worked {} ms after the leader's kill -9 ({refusals} refused before); \
         member {:?} leads now",
        killed.elapsed().as_millis(),
        cluster.etcd.leader()
    );
    // Each node set the dead member aside: requests go to the others.
    let aside = format!("etcd member {} refuses connections", endpoints[leader]);
    for n in 1..=3 {
        assert!(
            cluster
                .node(n)
                .running()
                .stderr
                .wait_for(CONVERGE, |t| t.contains(&aside)),
            "node {n} did not set the dead member aside ({aside})"
        );
    }
    for n in [2, 3, 1] {
        let took = cluster.wait_serving(n, port, "hostile", CONVERGE);
        eprintln!("version 2 served on node {n} {} ms later", took.as_millis());
        cluster.wait_version(n, "echo", Some(2));
    }
    prober.wait_for_more(200, CONVERGE);
    let (ok, failures) = prober.stop();
    assert!(
        failures.is_empty(),
        "node 2's echo broke across the etcd leader's death ({ok} round trips worked): \
         {failures:#?}"
    );
    eprintln!("node 2 answered {ok} round trips across the failover");
}

/// How long a deploy of the ~21 MB Python component may take, from the
/// upload to every node serving it: each node compiles it (about 10 s
/// alone on 2 cores, the three at once share them).
const PYTHON_SPREAD: Duration = Duration::from_secs(240);

/// The Python echo (componentize-py, about 21.8 MB: CPython inside)
/// deployed on node 1 goes to the other nodes through their peer fetches
/// and is served by all three at the same digest. Each node has a compile
/// cache of its own, empty, so each compiles it as a new machine would.
/// The guest is built by
/// `guests/build-lang.sh python` if need be; a machine that cannot build
/// it fails this test, saying so.
#[test]
fn a_20_mb_python_component_deployed_on_node_1_is_served_by_all_three() {
    let python = sockgate_testkit::guests::lang_guest("python", "echo");
    let size = std::fs::metadata(&python).unwrap().len();
    assert!(
        size > 15_000_000,
        "{} is {size} bytes: not the ~21.8 MB componentize-py build this test is about",
        python.display()
    );
    let spec = NodeSpec {
        own_cache: true,
        ..NodeSpec::default()
    };
    let cluster = Cluster::start_with("cluster-python", Etcd::start(), &vec![spec; 3]);
    let port = free_port_everywhere();
    let component = python.display().to_string();
    let listen = format!("0.0.0.0:{port}");
    let args = ["deploy", "py-echo", component.as_str(), "--listen", &listen];
    let started = Instant::now();
    let child = cluster.cli_command(1, &args).spawn().unwrap();
    let (code, stdout, stderr) = cluster.finish_within(child, &args, PYTHON_SPREAD);
    assert_eq!(
        code, 0,
        "the Python deploy on node 1 failed: {stdout}{stderr}"
    );
    eprintln!(
        "deploy of {:.1} MB returned after {} ms",
        size as f64 / 1e6,
        started.elapsed().as_millis()
    );
    for n in 1..=3 {
        let within = PYTHON_SPREAD.saturating_sub(started.elapsed());
        cluster.wait_serving(n, port, "echo", within);
        eprintln!(
            "node {n} serves the Python echo {} ms after the deploy began",
            started.elapsed().as_millis()
        );
    }
    let digests: Vec<Value> = (1..=3)
        .map(|n| cluster.wait_version(n, "py-echo", Some(1)).unwrap()["digest"].clone())
        .collect();
    assert!(
        digests.iter().all(|d| *d == digests[0] && d.is_string()),
        "the nodes serve different components: {digests:?}"
    );
    // Each node compiled it itself: its own cache is no longer empty.
    for n in 1..=3 {
        let cache = cluster.dir.0.join(format!("node-{n}/compile-cache"));
        let entries = std::fs::read_dir(&cache).map_or(0, Iterator::count);
        assert!(
            entries > 0,
            "node {n} serves the Python echo but its compile cache {} is empty",
            cache.display()
        );
    }
    // A long line through every node: the whole interpreter answers.
    let line = "x".repeat(10_000);
    for n in 1..=3 {
        let stream = TcpStream::connect(Cluster::addr(n, port)).unwrap();
        assert_eq!(
            ask_line(&stream, &line).as_deref(),
            Ok(line.as_str()),
            "node {n}"
        );
    }
}

/// Certificates ordered once for the whole cluster (its own file).
#[path = "cluster_acme.rs"]
mod acme;

/// etcd over TLS with client certificates and a user (its own file).
#[path = "cluster_etcd_tls.rs"]
mod etcd_tls;

/// Compiled code shared between nodes (its own file).
#[path = "cluster_compiled.rs"]
mod compiled;

/// `kill -9` of the deploying node in the middle of a deploy: after node 2
/// fetched and compiled the new component, while node 1 still waits for
/// node 3 (frozen, so the deploy stays open for as long as node 3's lease
/// lives) and before any record changed. The deploy fails on the client,
/// the old version keeps serving on the other nodes with no failed round
/// trip, nothing of the new one is recorded, and the cluster takes the
/// next deploy, which the restarted node serves too.
#[test]
fn kill_9_of_the_deploying_node_mid_deploy_leaves_the_old_version_serving() {
    use sha2::{Digest, Sha256};

    let mut cluster = Cluster::start("cluster-kill-mid", 3);
    let port = free_port_everywhere();
    cluster.deploy(1, "app", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    for n in 1..=3 {
        cluster.wait_serving(n, port, "echo", CONVERGE);
    }
    let prober = Prober::start(Cluster::addr(2, port));

    let hostile = guest("hostile");
    let digest: String = Sha256::digest(std::fs::read(&hostile).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cluster.freeze(3);
    let component = hostile.display().to_string();
    let args = ["deploy", "app", component.as_str()];
    let deploy = cluster.cli_command(1, &args).spawn().unwrap();
    // Node 2 holds the new component; node 1 waits for node 3.
    let held_by_2 = format!("/sockgate/v1/held/{digest}/node-2");
    let started = Instant::now();
    while cluster.etcd.get(&held_by_2).is_none() {
        assert!(
            started.elapsed() < CLI_TIMEOUT,
            "node 2 never announced the new component ({held_by_2})"
        );
        std::thread::sleep(POLL);
    }
    cluster.kill(1);
    cluster.thaw(3);
    let (code, stdout, stderr) = cluster.finish(deploy, &args);
    assert_ne!(
        code, 0,
        "a deploy whose node was killed succeeded: {stdout}"
    );
    eprintln!("the interrupted deploy exited {code}: {stderr}");

    // Nothing of the new version was recorded: nodes 2 and 3 serve
    // version 1, as etcd says.
    let record = cluster.etcd.get("/sockgate/v1/apps/app").unwrap();
    let record: Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["current"], 1, "{record}");
    assert_eq!(
        record["versions"].as_array().map(Vec::len),
        Some(1),
        "{record}"
    );
    for n in [2, 3] {
        assert_eq!(cluster.version(n, "app"), Some(1));
        assert_eq!(served_by(Cluster::addr(n, port)), Ok("echo"));
    }
    prober.wait_for_more(100, CONVERGE);
    let (ok, failures) = prober.stop();
    assert!(
        failures.is_empty(),
        "node 2's echo failed around the kill ({ok} round trips worked): {failures:#?}"
    );

    // The next deploy goes through once node 1's lease has ended, and the
    // restarted node 1 serves it.
    let (code, stdout, stderr) = cluster.cli(2, &["deploy", "app", &component]);
    assert_eq!(code, 0, "the deploy after the kill: {stdout}{stderr}");
    for n in [2, 3] {
        cluster.wait_serving(n, port, "hostile", CONVERGE);
    }
    cluster.launch(1);
    cluster.wait_serving(1, port, "hostile", CONVERGE);
    assert_eq!(cluster.version(1, "app"), Some(2));
}
