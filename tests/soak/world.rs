//! What every actor of the soak shares: the gateway process (which the
//! killer replaces), its fixed addresses, Pebble, the tallies and the
//! violations.
//!
//! Every listener has a fixed port chosen before the first start, so a
//! restarted gateway is reachable where the old one was. A restart is an
//! *epoch*: odd while the gateway is down, even while it serves. A client
//! records the epoch when it connects; a failure on a connection made in
//! an earlier epoch, or while the gateway was down, is the restart's doing
//! and excused; any other failure is a violation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use sockgate_testkit::gateway::{Gateway, TestApp, apps_toml, config_toml};
use sockgate_testkit::net::free_port;
use sockgate_testkit::paths::{ScratchDir, root, shared_cache_dir, sockgate_binary};
use sockgate_testkit::pebble::Pebble;

/// The TLS domain: every app is `<name>.sockgate.test`, a name Pebble's
/// DNS server resolves to loopback.
pub const DOMAIN: &str = "sockgate.test";

/// How long the soak runs and how often the faults come.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The whole run.
    pub duration: Duration,
    /// Gateway `kill -9`s, spread over the run.
    pub kills: u32,
    /// Pebble outages, spread over the run.
    pub ca_outages: u32,
}

impl Plan {
    /// `SOCKGATE_SOAK_SECS` (default 60: the quick form CI runs); a kill
    /// and a CA outage every 30 s or so.
    pub fn from_env() -> Self {
        let secs: u64 = std::env::var("SOCKGATE_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        Self {
            duration: Duration::from_secs(secs),
            kills: (secs / 30).max(1) as u32,
            ca_outages: (secs / 40).max(1) as u32,
        }
    }
}

/// The apps of the gateway's configuration file: what the healthy clients
/// use, and the hostile guests beside them.
pub const APPS: [(&str, &str, &str); 6] = [
    ("echo", "echo", ""),
    ("chat", "chat", ""),
    ("web", "wasi-http-hello-p3", ""),
    ("events", "events-echo", ""),
    (
        "hostile",
        "hostile",
        "instances = 1\n[app.limits]\ncpu_budget_ms = 50\nmemory_limit_mb = 64",
    ),
    (
        "sync-hostile",
        "sync-hostile",
        "[app.limits]\ncpu_budget_ms = 50\nmemory_limit_mb = 64",
    ),
];

/// Counters of what the soak did, for the report.
#[derive(Default)]
pub struct Tally {
    /// Connections (and QUIC streams) opened by healthy clients.
    pub connections: AtomicU64,
    /// Bytes echoed back and compared, or chat lines' and pages' bytes.
    pub bytes_verified: AtomicU64,
    /// HTTP requests answered with the right page.
    pub requests: AtomicU64,
    /// Chat lines delivered and checked.
    pub chat_lines: AtomicU64,
    /// Deploys, rollbacks and removals that completed.
    pub deploys: AtomicU64,
    /// `kill -9`s of the gateway.
    pub kills: AtomicU64,
    /// Hostile requests sent (spin, memory, trap, log flood, sockets).
    pub hostile: AtomicU64,
    /// Flood and slow-client connections opened.
    pub flood_connections: AtomicU64,
    /// Pebble outages.
    pub ca_outages: AtomicU64,
    /// Failures excused because the gateway restarted under them.
    pub excused: AtomicU64,
    /// Admin API polls answered.
    pub admin_polls: AtomicU64,
    /// The neighbour's worst round trip outside restarts, in microseconds.
    pub neighbour_worst_us: AtomicU64,
    /// The neighbour's round trips measured.
    pub neighbour_round_trips: AtomicU64,
}

impl Tally {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The soak's shared world.
pub struct Soak {
    /// The run's plan.
    pub plan: Plan,
    /// The admin API.
    pub admin: SocketAddr,
    /// The TLS listener.
    pub tls: SocketAddr,
    /// The QUIC endpoint.
    pub quic: SocketAddr,
    /// The state directory (the CLI reads the admin token there).
    pub state: PathBuf,
    /// Where the hostile guest's outbound connections may go (the soak's
    /// sink accepts and drops them).
    pub sink: SocketAddr,
    /// Each configured app's TCP address, and `churn`'s.
    pub tcp: HashMap<&'static str, SocketAddr>,
    /// Pebble's issuing root at the first start (the certificates the
    /// healthy TLS and QUIC clients check were issued under it).
    pub roots: Vec<CertificateDer<'static>>,
    /// The ACME CA, which the CA-outage actor stops and starts.
    pub pebble: Mutex<Pebble>,
    /// What the soak did.
    pub tally: Tally,
    config: PathBuf,
    gateway: Mutex<Option<Gateway>>,
    epoch: tokio::sync::watch::Sender<u64>,
    stopping: AtomicBool,
    violations: Mutex<Vec<String>>,
    /// Stderr of the gateways killed so far (for the panic check).
    past_logs: Mutex<String>,
    started: Instant,
    _dir: ScratchDir,
}

impl Soak {
    /// Starts Pebble and the gateway, and waits until every app has its
    /// certificate.
    pub async fn start(plan: Plan) -> Self {
        let dir = ScratchDir::new("soak");
        let state = dir.0.join("state");
        let tls_port = free_port();
        let pebble = Pebble::start(tls_port, free_port());
        let roots = vec![pebble.root().await];
        let mut tcp = HashMap::new();
        let mut apps_config = String::new();
        let sink = SocketAddr::from(([127, 0, 0, 1], free_port()));
        for (name, guest, extra) in APPS {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            tcp.insert(name, addr);
            // The hostile guest may connect to the soak's sink only.
            let extra = match name {
                "hostile" => format!("outbound = [\"{sink}\"]\n{extra}"),
                _ => extra.to_owned(),
            };
            let table = apps_toml(&[TestApp {
                name,
                guest,
                extra: &extra,
            }]);
            apps_config.push_str(&table.replace("127.0.0.1:0", &addr.to_string()));
        }
        tcp.insert("churn", SocketAddr::from(([127, 0, 0, 1], free_port())));
        let quic = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tables = format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ndomain = {DOMAIN:?}\n\n{}\n\
             [http]\nenabled = false\n\n[quic]\nlisten = \"{quic}\"\n",
            pebble.acme_table(
                "tls-alpn-01",
                "backoff_initial_secs = 1\nbackoff_max_secs = 5"
            ),
        );
        let config = dir.0.join("sockgate.toml");
        let gateway_lines = format!("state_dir = {:?}", state.display().to_string());
        std::fs::write(
            &config,
            config_toml(
                &shared_cache_dir(),
                &gateway_lines,
                &format!("{tables}\n{apps_config}"),
            ),
        )
        .unwrap();
        let soak = Self {
            plan,
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            tls: SocketAddr::from(([127, 0, 0, 1], tls_port)),
            quic,
            state,
            sink,
            tcp,
            roots,
            pebble: Mutex::new(pebble),
            tally: Tally::default(),
            config,
            gateway: Mutex::new(None),
            epoch: tokio::sync::watch::Sender::new(0),
            stopping: AtomicBool::new(false),
            violations: Mutex::new(Vec::new()),
            past_logs: Mutex::new(String::new()),
            started: Instant::now(),
            _dir: dir,
        };
        let gateway = soak.spawn_gateway();
        for (name, ..) in APPS {
            let issued = format!("certificate for {name}.{DOMAIN} issued");
            assert!(
                gateway
                    .stderr
                    .wait_for(sockgate_testkit::gateway::WAIT, |t| t.contains(&issued)),
                "no certificate for {name}.{DOMAIN}:\n{}",
                gateway.stderr.text()
            );
        }
        *soak.gateway.lock().unwrap() = Some(gateway);
        soak
    }

    /// `sockgate serve` on the soak's configuration, ready.
    fn spawn_gateway(&self) -> Gateway {
        let mut command = Command::new(sockgate_binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(["--admin", &self.admin.to_string()])
            .env("XDG_CACHE_HOME", root().join("target/sockgate-test-xdg"));
        Gateway::spawn(command, ScratchDir::new("soak-gateway"))
    }

    /// The current epoch (odd: the gateway is down).
    pub fn epoch(&self) -> u64 {
        *self.epoch.borrow()
    }

    /// Waits until the gateway serves (returns at once unless a restart
    /// is under way), and returns the epoch.
    pub async fn serving(&self) -> u64 {
        let mut epochs = self.epoch.subscribe();
        *epochs
            .wait_for(|epoch| epoch % 2 == 0)
            .await
            .expect("the soak's epoch sender lives as long as the soak")
    }

    /// Whether a failure on a connection made in `epoch` is a restart's
    /// doing.
    pub fn excused(&self, epoch: u64) -> bool {
        let now = self.epoch();
        let excused = epoch % 2 == 1 || now != epoch;
        if excused {
            Tally::add(&self.tally.excused, 1);
        }
        excused
    }

    /// Kills the gateway with SIGKILL and starts it again on the same
    /// configuration and state directory.
    pub fn kill_and_restart(&self) {
        self.epoch.send_modify(|epoch| *epoch += 1);
        if let Some(old) = self.gateway.lock().unwrap().take() {
            let log = old.stderr.text();
            drop(old); // SIGKILL
            self.past_logs.lock().unwrap().push_str(&log);
        }
        Tally::add(&self.tally.kills, 1);
        let new = self.spawn_gateway();
        *self.gateway.lock().unwrap() = Some(new);
        self.epoch.send_modify(|epoch| *epoch += 1);
    }

    /// The running gateway's pid, unless it is being restarted.
    pub fn pid(&self) -> Option<u32> {
        self.gateway.lock().unwrap().as_ref().map(Gateway::pid)
    }

    /// Everything every gateway of the run wrote on stderr.
    pub fn logs(&self) -> String {
        let mut all = self.past_logs.lock().unwrap().clone();
        if let Some(gateway) = self.gateway.lock().unwrap().as_ref() {
            all.push_str(&gateway.stderr.text());
        }
        all
    }

    /// Records a broken invariant.
    pub fn violation(&self, what: String) {
        eprintln!("VIOLATION at {:?}: {what}", self.started.elapsed());
        self.violations.lock().unwrap().push(what);
    }

    /// The invariants broken so far.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// Tells every actor to finish.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether the run is over.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The server name of app `name`.
    pub fn server_name(name: &str) -> String {
        format!("{name}.{DOMAIN}")
    }
}
