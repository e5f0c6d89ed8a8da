//! Test harness: builds the example guests, starts the real `sockgate`
//! binary with a configuration, and lets tests wait for what it prints.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a gateway may take to start (compiling components in a cold
/// cache on a busy 2-core machine included).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the component built from `guests/<name>`, building the guests
/// workspace once per test process (a no-op when it is up to date).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Run from guests/ so its .cargo/config.toml applies; the target is
        // also named explicitly.
        let status = Command::new(env!("CARGO"))
            .current_dir(root().join("guests"))
            .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
            .status()
            .expect("cannot run cargo to build the guests");
        assert!(status.success(), "building the guests failed");
    });
    let path = root()
        .join("guests/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "guest {name} not built at {}",
        path.display()
    );
    path
}

/// Path of `guests/target/lang/<lang>-<name>.wasm`, the guest
/// `guests/<lang>/<name>` in a language other than Rust, running
/// `guests/build-lang.sh` once per test process (quick when up to date; it
/// installs a missing toolchain first).
pub fn lang_guest(lang: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new("bash")
            .arg(root().join("guests/build-lang.sh"))
            .env("CARGO", env!("CARGO"))
            .status()
            .expect("cannot run guests/build-lang.sh");
        assert!(status.success(), "guests/build-lang.sh failed");
    });
    let path = root()
        .join("guests/target/lang")
        .join(format!("{lang}-{name}.wasm"));
    assert!(
        path.exists(),
        "guest {lang}/{name} not built at {}",
        path.display()
    );
    path
}

/// Path of the component a [`TestApp::guest`] names: `<lang>/<name>` for
/// [`lang_guest`], otherwise a Rust guest crate for [`guest`].
pub fn guest_component(spec: &str) -> PathBuf {
    match spec.split_once('/') {
        Some((lang, name)) => lang_guest(lang, name),
        None => guest(spec),
    }
}

/// A compile cache shared by the tests of one run, so each component is
/// compiled once.
pub fn shared_cache_dir() -> PathBuf {
    root().join("target/sockgate-test-cache")
}

/// A fresh scratch directory under `target/`, removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// Creates `target/sockgate-test-tmp/<label>-<pid>-<n>`.
    pub fn new(label: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root()
            .join("target/sockgate-test-tmp")
            .join(format!("{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lines printed so far, and whether the stream has ended.
#[derive(Default)]
struct Printed {
    lines: Vec<String>,
    ended: bool,
}

/// Lines a child process printed, with a way to wait for one.
#[derive(Clone, Default)]
pub struct Output {
    inner: Arc<(Mutex<Printed>, Condvar)>,
}

impl Output {
    /// Collects the lines of `pipe` (a child's stdout or stderr).
    pub fn collect_from(&self, pipe: impl std::io::Read + Send + 'static) {
        self.collect(pipe)
    }

    fn collect(&self, pipe: impl std::io::Read + Send + 'static) {
        let this = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*this.inner;
                lock.lock().unwrap().lines.push(line);
                cvar.notify_all();
            }
            let (lock, cvar) = &*this.inner;
            lock.lock().unwrap().ended = true;
            cvar.notify_all();
        });
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        self.inner.0.lock().unwrap().lines.join("\n")
    }

    /// Waits until `pred` holds for the text printed so far, or the stream
    /// ends, or `timeout` passes; returns whether it holds.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.inner;
        let mut state = lock.lock().unwrap();
        loop {
            if pred(&state.lines.join("\n")) {
                return true;
            }
            let now = Instant::now();
            if state.ended || now >= deadline {
                return false;
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Waits until `needle` has been printed `count` times.
    pub fn wait_for_count(&self, timeout: Duration, needle: &str, count: usize) -> bool {
        self.wait_for(timeout, |text| text.matches(needle).count() >= count)
    }
}

/// One app in a test gateway's configuration.
pub struct TestApp<'a> {
    /// App name.
    pub name: &'a str,
    /// Guest crate under `guests/`, or `<lang>/<name>` for a guest in
    /// another language (`guests/<lang>/<name>`, see [`lang_guest`]).
    pub guest: &'a str,
    /// Extra TOML lines for the app table.
    pub extra: &'a str,
}

/// A running `sockgate serve`, killed when dropped.
pub struct Gateway {
    child: Child,
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
        let dir = ScratchDir::new("gateway");
        let mut config = format!(
            "[gateway]\ncache_dir = {:?}\n{gateway}",
            shared_cache_dir().display().to_string()
        );
        for app in apps {
            config.push_str(&format!(
                "\n[[app]]\nname = {:?}\ncomponent = {:?}\nlisten = \"127.0.0.1:0\"\n{}\n",
                app.name,
                guest_component(app.guest).display().to_string(),
                app.extra
            ));
        }
        let config_path = dir.0.join("sockgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
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
        let collect_stderr = stderr.is_none();
        command
            // HTTP apps' access lines are traced at debug level; the tests
            // read them.
            .env("RUST_LOG", "info,sockgate::access=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.unwrap_or_else(Stdio::piped));
        let mut child = command.spawn().expect("cannot start sockgate");
        let stdout = Output::default();
        let stderr = Output::default();
        stdout.collect(child.stdout.take().unwrap());
        if collect_stderr {
            stderr.collect(child.stderr.take().unwrap());
        }
        let ready = stdout.wait_for(START_TIMEOUT, |text| text.contains("sockgate ready"));
        if !ready {
            let _ = child.kill();
            panic!(
                "gateway did not start\nstdout:\n{}\nstderr:\n{}",
                stdout.text(),
                stderr.text()
            );
        }
        let mut addrs = HashMap::new();
        for line in stdout.text().lines() {
            // `app NAME listening on tcp ADDR ...`
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["app", name, "listening", "on", "tcp", addr, ..] = words[..] {
                addrs.insert(name.to_owned(), addr.parse().unwrap());
            }
        }
        Self {
            child,
            addrs,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gateway's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("no VmRSS")
    }

    /// The TCP address app `name` listens on.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no app {name} in {:?}", self.addrs))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sockgate` with `args` expecting it to refuse to start; returns
/// its exit code and stderr.
pub fn run_expecting_failure(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_sockgate"))
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

/// Sends one line on `stream` and returns the reply line (without its
/// newline), failing the test after a minute without one.
pub async fn ask(stream: &mut tokio::net::TcpStream, line: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    let mut reader = tokio::io::BufReader::new(&mut *stream);
    tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut reply))
        .await
        .expect("no reply within a minute")
        .unwrap();
    reply.trim_end().to_owned()
}
