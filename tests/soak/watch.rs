//! The invariants checked while the chaos runs: the admin API answers
//! throughout, descriptors and memory come back after each flood wave, and
//! no gateway panicked.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::world::{Soak, Tally};
use sockgate_testkit::os::process_rss_kib;

/// How long the admin API may take to answer `GET /v1/apps`.
const ADMIN_ANSWER: Duration = Duration::from_secs(3);

/// How long after a wave the gateway has to close what the wave opened.
const SETTLE: Duration = Duration::from_secs(20);

/// Descriptors the healthy clients, the hostile ones and the deploys hold
/// at any moment, above what the gateway held before the wave.
const FD_SLACK: usize = 128;

/// Memory a wave may leave behind: allocators keep some of what they
/// freed, and guests' linear memories grow up to their limits. A leak per
/// connection or per wave passes it within a few waves.
const RSS_SLACK_KIB: u64 = 128 * 1024;

/// Each process's descriptor and memory baseline: `(pid, fds, rss_kib)`,
/// taken when its first wave has settled.
static BASELINE: Mutex<Option<(u32, usize, u64)>> = Mutex::new(None);

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Asks the admin API for the app list every 200 ms; a slow or missing
/// answer while the gateway is up is a violation.
pub async fn admin(soak: Arc<Soak>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    while !soak.stopping() {
        ticks.tick().await;
        let epoch = soak.serving().await;
        let Ok(token) = std::fs::read_to_string(soak.state.join("admin-token")) else {
            soak.violation("no admin token in the state directory".to_owned());
            continue;
        };
        let request = format!(
            "GET /v1/apps HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\n\
             Connection: close\r\n\r\n",
            token.trim()
        );
        let answer = async {
            let mut stream = TcpStream::connect(soak.admin).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        match tokio::time::timeout(ADMIN_ANSWER, answer).await {
            Ok(Ok(response)) if response.starts_with(b"HTTP/1.1 200") => {
                Tally::add(&soak.tally.admin_polls, 1);
            }
            Ok(Ok(response)) => {
                let head =
                    String::from_utf8_lossy(&response[..response.len().min(200)]).into_owned();
                soak.violation(format!("the admin API answered {head:?}"));
            }
            Ok(Err(err)) => {
                if !soak.excused(epoch) {
                    soak.violation(format!("the admin API: {err}"));
                }
            }
            Err(_) => {
                if !soak.excused(epoch) {
                    soak.violation(format!(
                        "the admin API did not answer within {ADMIN_ANSWER:?}"
                    ));
                }
            }
        }
    }
}

/// After flood wave `wave`: waits until the gateway's descriptors and
/// memory are back near its baseline, or reports how far off they stay.
pub async fn settle_resources(soak: &Soak, epoch: u64, wave: u32) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let Some(pid) = soak.pid() else { return };
        if soak.epoch() != epoch {
            return; // restarted during the wave: a new process, a new baseline
        }
        let (fds, rss) = (open_fds(pid), process_rss_kib(pid));
        let baseline = *BASELINE.lock().unwrap();
        match baseline {
            Some((base_pid, base_fds, base_rss)) if base_pid == pid => {
                if fds <= base_fds + FD_SLACK && rss <= base_rss + RSS_SLACK_KIB {
                    return;
                }
                if Instant::now() > deadline {
                    soak.violation(format!(
                        "{SETTLE:?} after flood wave {wave} the gateway holds {fds} descriptors \
                         (baseline {base_fds}) and {} MiB (baseline {} MiB)",
                        rss / 1024,
                        base_rss / 1024
                    ));
                    return;
                }
            }
            _ => {
                // This process's first wave: its settled state is the
                // baseline once the flood's descriptors are gone.
                if fds < 200 + FD_SLACK || Instant::now() > deadline {
                    *BASELINE.lock().unwrap() = Some((pid, fds, rss));
                    return;
                }
            }
        }
        // Polled: the kernel gives no event for a process's descriptor count.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Lines of the gateways' logs that show a panic of the gateway itself:
/// the standard panic message starts a line with `thread '…' panicked`,
/// while a guest's own panic reaches the log as one of its app's lines.
pub fn panics(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|line| line.starts_with("thread '") && line.contains("panicked at"))
        .map(str::to_owned)
        .collect()
}
