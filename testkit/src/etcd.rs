//! Real etcd processes for the cluster tests: one member or a cluster of
//! several on loopback, on free ports, with their data in memory
//! (`/dev/shm`), and the faults a test inflicts on them (SIGKILL, SIGSTOP,
//! a restart on the same data, a compaction). Everything a test reads back
//! goes through Debian's `etcdctl` (API v3), so the kit needs no etcd
//! client crate: the gateway's own client is what is under test, and the
//! assertions should not share its code.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::output::Running;
use crate::paths::ScratchDir;

/// How long a member (or a restarted one) may take to answer a health
/// check: etcd starts in well under a second, but a cluster's first
/// election and a busy 2-core machine stretch it.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(15);

/// How often a waiting test asks etcd again: short enough that a test sees
/// a recovery within a tick, long enough not to load the machine.
pub const POLL: Duration = Duration::from_millis(50);

/// The bound on one `etcdctl` call, so a dead or paused member makes a
/// helper fail fast instead of hanging the test.
const ETCDCTL_TIMEOUT: &str = "2s";

/// `n` distinct free loopback ports, all bound at once before any is
/// released (binding them one at a time could hand out the same port
/// twice); another process could take one before etcd binds it, which the
/// tests accept as the rest of the kit does.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("cannot find a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Sends `signal` (e.g. `libc::SIGSTOP`) to process `pid`: how a test
/// freezes, resumes or kills an etcd member or a gateway without going
/// through the `Child` that owns it. Panics if the process is gone.
pub fn signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Where the members' data directories go: `/dev/shm` (memory, so etcd's
/// fsyncs cost nothing and two cores are not spent waiting on a disk), or
/// a scratch directory under `target/` where there is no `/dev/shm`.
enum DataRoot {
    /// `/dev/shm/sockgate-etcd-<pid>-<n>`, removed on drop.
    Shm(PathBuf),
    /// `target/sockgate-test-tmp/etcd-<pid>-<n>`, removed on drop.
    Scratch(ScratchDir),
}

impl DataRoot {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = shm.join(format!("sockgate-etcd-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            if std::fs::create_dir_all(&dir).is_ok() {
                return Self::Shm(dir);
            }
        }
        Self::Scratch(ScratchDir::new("etcd"))
    }

    fn path(&self) -> &Path {
        match self {
            Self::Shm(dir) => dir,
            Self::Scratch(dir) => &dir.0,
        }
    }
}

impl Drop for DataRoot {
    fn drop(&mut self) {
        if let Self::Shm(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The TLS files of an etcd serving its clients over TLS and asking them
/// for a certificate (`--client-cert-auth`): one CA, and one certificate
/// for `localhost`/127.0.0.1 that etcd serves and its clients present.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA (PEM).
    pub ca: PathBuf,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

/// How the kit's `etcdctl` reaches the members: TLS files, and the root
/// user once auth is on.
#[derive(Debug, Clone, Default)]
struct Access {
    tls: Option<EtcdTls>,
    root: Option<String>,
}

/// One etcd member: its name, ports, data directory and (while it runs)
/// its process.
struct Member {
    secure: bool,
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    process: Option<Running>,
    /// What earlier lives of the member printed (before a kill or
    /// restart), so a failure message shows the whole story.
    earlier_stderr: String,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn stderr(&self) -> String {
        let current = self
            .process
            .as_ref()
            .map(|p| p.stderr.text())
            .unwrap_or_default();
        format!("{}{current}", self.earlier_stderr)
    }

    /// Stops tracking the running process (already killed or to be killed
    /// by `Running`'s drop), keeping what it printed.
    fn forget_process(&mut self) {
        if let Some(process) = self.process.take() {
            self.earlier_stderr.push_str(&process.stderr.text());
            self.earlier_stderr.push_str("\n--- (killed) ---\n");
            drop(process); // SIGKILL and reap
        }
    }
}

/// A real etcd (one member or a cluster), killed and its data removed when
/// dropped. Members are named `a`, `b`, `c`, … and addressed by index.
pub struct Etcd {
    members: Vec<Member>,
    access: Access,
    initial_cluster: String,
    cluster_token: String,
    _data: DataRoot,
}

impl Etcd {
    /// One member on free loopback ports, healthy when this returns: what
    /// most cluster tests need as the shared store.
    pub fn start() -> Self {
        Self::start_cluster(1)
    }

    /// `size` members forming one cluster, every one healthy when this
    /// returns: for the tests of a member's (or the leader's) loss.
    pub fn start_cluster(size: usize) -> Self {
        Self::start_with(size, None)
    }

    /// One member serving its clients over TLS only, and only to clients
    /// presenting a certificate of `tls`'s CA: for the tests of the
    /// gateway's etcd TLS settings.
    pub fn start_tls(tls: EtcdTls) -> Self {
        Self::start_with(1, Some(tls))
    }

    fn start_with(size: usize, tls: Option<EtcdTls>) -> Self {
        assert!(size >= 1, "an etcd cluster has at least one member");
        let data = DataRoot::new();
        let ports = free_ports(2 * size);
        let members: Vec<Member> = (0..size)
            .map(|i| {
                let name = ((b'a' + u8::try_from(i).expect("few members")) as char).to_string();
                Member {
                    secure: tls.is_some(),
                    data_dir: data.path().join(&name),
                    name,
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    process: None,
                    earlier_stderr: String::new(),
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        // Unique per cluster, so members of two tests' clusters can never
        // take each other for peers.
        let cluster_token = data
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("sockgate-etcd-{}", std::process::id()));
        let mut etcd = Self {
            members,
            access: Access { tls, root: None },
            initial_cluster,
            cluster_token,
            _data: data,
        };
        // All members first: none is healthy before a quorum runs.
        for i in 0..size {
            etcd.spawn(i);
        }
        for i in 0..size {
            etcd.wait_healthy(i);
        }
        etcd
    }

    /// Starts member `i`'s process on its data directory (a new member
    /// when the directory is empty, the same member again otherwise).
    fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let mut command = Command::new("etcd");
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url()])
            .args(["--advertise-client-urls", &member.client_url()])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.cluster_token])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--log-level", "warn"]);
        if let Some(tls) = &self.access.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let process = Running::spawn(command, None).unwrap_or_else(|err| {
            panic!(
                "cannot run etcd ({err}): install Debian's `etcd-server` and \
                 `etcd-client` packages (./dev deps does)"
            )
        });
        self.members[i].process = Some(process);
    }

    /// Polls member `i`'s health until it answers, panicking with its
    /// stderr when it does not within [`HEALTHY_WITHIN`] or exits.
    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let endpoint = self.members[i].endpoint();
        loop {
            let health = etcdctl_on(&self.access, &endpoint, &["endpoint", "health"]);
            if health.status.success() {
                return;
            }
            let exited = self.members[i]
                .process
                .as_mut()
                .and_then(|p| p.child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "etcd member {} ({endpoint}) not healthy ({}): {}\n--- its stderr ---\n{}",
                    self.members[i].name,
                    exited.map_or("still running".to_owned(), |s| s.to_string()),
                    String::from_utf8_lossy(&health.stderr).trim(),
                    self.members[i].stderr()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Every member's client address, `127.0.0.1:PORT`, as the gateway's
    /// `[cluster] endpoints` takes them (dead members included: a client
    /// is expected to skip them).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Member `i`'s client address, `127.0.0.1:PORT`.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].endpoint()
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member (never: kept for `len`'s sake).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].process.as_ref().map(Running::pid)
    }

    /// What member `i` printed on stderr over all its lives: for failure
    /// messages.
    pub fn stderr(&self, i: usize) -> String {
        self.members[i].stderr()
    }

    /// The index of the member that is the Raft leader now, asking every
    /// running member (`endpoint status`, whose fifth field is IsLeader);
    /// `None` while there is no leader (an election, a lost quorum).
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            self.members[i].process.is_some() && {
                let status = etcdctl_on(
                    &self.access,
                    &self.endpoint(i),
                    &["endpoint", "status", "-w", "simple"],
                );
                status.status.success()
                    && String::from_utf8_lossy(&status.stdout)
                        .split(',')
                        .nth(4)
                        .is_some_and(|field| field.trim() == "true")
            }
        })
    }

    /// Waits (up to [`HEALTHY_WITHIN`]) until some member leads, and
    /// returns it: a test that kills the leader first needs one.
    pub fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if let Some(leader) = self.leader() {
                return leader;
            }
            assert!(Instant::now() < deadline, "no etcd leader elected");
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILLs member `i` (its data directory stays, for
    /// [`Etcd::restart`]): a crash, or the whole store gone when it is the
    /// only member.
    pub fn kill(&mut self, i: usize) {
        assert!(
            self.members[i].process.is_some(),
            "etcd member {} is not running",
            self.members[i].name
        );
        self.members[i].forget_process();
    }

    /// SIGSTOPs member `i`: alive to the kernel (its ports accept) but
    /// answering nothing, the worst kind of unavailable.
    pub fn pause(&self, i: usize) {
        signal(self.running_pid(i), libc::SIGSTOP);
    }

    /// SIGCONTs member `i` after [`Etcd::pause`].
    pub fn resume(&self, i: usize) {
        signal(self.running_pid(i), libc::SIGCONT);
    }

    fn running_pid(&self, i: usize) -> u32 {
        self.pid(i)
            .unwrap_or_else(|| panic!("etcd member {} is not running", self.members[i].name))
    }

    /// Starts member `i` again on its data directory (killing it first if
    /// it runs) and waits until it is healthy: the store coming back with
    /// everything it had, so the gateways' watches must resume.
    pub fn restart(&mut self, i: usize) {
        self.members[i].forget_process();
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Runs `etcdctl` with `args` against every member, returning its
    /// output (successful or not): for what the helpers below do not
    /// cover.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        etcdctl_on(&self.access, &self.endpoints().join(","), args)
    }

    /// Turns etcd's authentication on with a `root` user and a user
    /// `user` (password `password`) that may read and write the keys under
    /// `prefix` only; the kit goes on as root.
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) {
        let root = "root:sockgate-test-root";
        let role = format!("{user}-role");
        for args in [
            vec!["user", "add", root, "--interactive=false"],
            vec!["role", "add", &role],
            vec![
                "role",
                "grant-permission",
                &role,
                "--prefix=true",
                "readwrite",
                prefix,
            ],
        ] {
            self.etcdctl_ok(&args);
        }
        let user_password = format!("{user}:{password}");
        self.etcdctl_ok(&["user", "add", &user_password, "--interactive=false"]);
        self.etcdctl_ok(&["user", "grant-role", user, &role]);
        self.etcdctl_ok(&["user", "grant-role", "root", "root"]);
        self.etcdctl_ok(&["auth", "enable"]);
        self.access.root = Some(root.to_owned());
    }

    /// Like [`Etcd::etcdctl`], panicking with etcdctl's stderr unless it
    /// succeeds; returns its stdout.
    fn etcdctl_ok(&self, args: &[&str]) -> String {
        let output = self.etcdctl(args);
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Writes `value` at `key`; returns whether etcd took it (a test of a
    /// lost member polls this until it does).
    pub fn try_put(&self, key: &str, value: &str) -> bool {
        self.etcdctl(&["put", key, value]).status.success()
    }

    /// Writes `value` at `key`, panicking if etcd refuses: for setting up
    /// what a gateway should find.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_ok(&["put", key, value]);
    }

    /// The value at `key`, if any (a value is taken as text): for asserting
    /// what a gateway wrote.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl_ok(&["get", key, "--print-value-only"]);
        // etcdctl ends the value with a newline of its own.
        out.strip_suffix('\n').map(str::to_owned)
    }

    /// Every key under `prefix`, in etcd's (byte) order: for asserting which
    /// records a gateway keeps.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl_ok(&["get", prefix, "--prefix", "--keys-only"])
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The store's current revision (from the header of a read).
    pub fn revision(&self) -> i64 {
        let fields = self.etcdctl_ok(&["get", "sockgate-testkit-revision-probe", "-w", "fields"]);
        fields
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                (name.trim() == "\"Revision\"").then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no revision in etcdctl's answer:\n{fields}"))
    }

    /// Compacts the store up to its current revision and returns it: every
    /// older revision is gone, so a watcher that fell behind must start
    /// over from a full read.
    pub fn compact_to_latest(&self) -> i64 {
        let revision = self.revision();
        self.etcdctl_ok(&["compact", &revision.to_string(), "--physical"]);
        revision
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            // SIGKILL reaches a paused member too; `data`, dropped after
            // this, then removes the directories of dead processes.
            member.forget_process();
        }
    }
}

/// Runs `etcdctl` (API v3) against `endpoints` (comma-separated) with a
/// short dial and command timeout, returning its output.
fn etcdctl_on(access: &Access, endpoints: &str, args: &[&str]) -> std::process::Output {
    let mut command = Command::new("etcdctl");
    if let Some(tls) = &access.tls {
        command
            .env("ETCDCTL_CACERT", &tls.ca)
            .env("ETCDCTL_CERT", &tls.cert)
            .env("ETCDCTL_KEY", &tls.key);
    }
    if let Some(root) = &access.root {
        command.env("ETCDCTL_USER", root);
    }
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--dial-timeout={ETCDCTL_TIMEOUT}"))
        .arg(format!("--command-timeout={ETCDCTL_TIMEOUT}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run etcdctl ({err}): install Debian's `etcd-client` package")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_member_keeps_what_is_put() {
        let etcd = Etcd::start();
        assert_eq!(etcd.get("/kit/missing"), None);
        etcd.put("/kit/a", "one");
        etcd.put("/kit/b", "two words");
        assert_eq!(etcd.get("/kit/a").as_deref(), Some("one"));
        assert_eq!(etcd.get("/kit/b").as_deref(), Some("two words"));
        assert_eq!(etcd.keys("/kit/"), ["/kit/a", "/kit/b"]);
        let before = etcd.revision();
        assert_eq!(etcd.compact_to_latest(), before);
        // A read at a compacted revision is refused.
        let old = etcd.etcdctl(&["get", "/kit/a", "--rev", "1"]);
        assert!(!old.status.success(), "revision 1 was not compacted");
        assert_eq!(etcd.leader(), Some(0));
    }

    #[test]
    fn a_restarted_member_keeps_its_data() {
        let mut etcd = Etcd::start();
        etcd.put("/kit/kept", "yes");
        etcd.kill(0);
        assert!(!etcd.try_put("/kit/while-down", "no"));
        etcd.restart(0);
        assert_eq!(etcd.get("/kit/kept").as_deref(), Some("yes"));
    }

    #[test]
    fn a_three_member_cluster_takes_writes_again_soon_after_its_leader_dies() {
        let mut etcd = Etcd::start_cluster(3);
        assert_eq!(etcd.endpoints().len(), 3);
        etcd.put("/kit/before", "1");
        let leader = etcd.wait_leader();
        etcd.kill(leader);
        let killed = Instant::now();
        let mut attempts = 0;
        while !etcd.try_put("/kit/after", "2") {
            attempts += 1;
            assert!(
                killed.elapsed() < Duration::from_secs(5),
                "no write taken within 5 s of the leader's death ({attempts} tries)"
            );
            std::thread::sleep(POLL);
        }
        eprintln!(
            "writes taken again {:?} after the leader ({}) died",
            killed.elapsed(),
            etcd.members[leader].name
        );
        let new_leader = etcd.wait_leader();
        assert_ne!(new_leader, leader);
        assert_eq!(etcd.get("/kit/before").as_deref(), Some("1"));
        assert_eq!(etcd.get("/kit/after").as_deref(), Some("2"));
    }

    #[test]
    fn a_paused_member_is_not_the_whole_cluster() {
        let etcd = Etcd::start_cluster(3);
        let leader = etcd.wait_leader();
        let follower = (leader + 1) % 3;
        etcd.pause(follower);
        etcd.put("/kit/paused", "ok");
        etcd.resume(follower);
        // The resumed member catches up and answers on its own.
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let out = etcdctl_on(
                &etcd.access,
                &etcd.endpoint(follower),
                &["get", "/kit/paused", "--print-value-only"],
            );
            if String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the resumed member never caught up"
            );
            std::thread::sleep(POLL);
        }
    }
}
