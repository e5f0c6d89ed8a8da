//! Density (issue 18): many small apps on one gateway, each deployed
//! through the admin API without a port of its own and reached by name
//! (SNI `app-N.density.test`) on the shared TLS listener — hibernated,
//! beside the same apps kept awake.
//!
//! For each guest (the Rust echo; the Python echo, a 18 MB component, with
//! fewer apps) and each app count, on a fresh gateway each time so that
//! memory one run freed does not flatter the next:
//!
//! - **RSS per app**: the gateway's resident memory once N apps are
//!   deployed and idle, minus its memory before the first deploy, over N
//!   — apps kept awake (`hibernate_after_secs = 0`) beside apps that
//!   hibernated (`hibernate_after_secs = 1`, measured once every app
//!   reports `hibernated`).
//! - **First byte over TLS**: connect, handshake, one line echoed back, for
//!   a sample of the apps, each already contacted once (its certificate
//!   issued by the dev CA) — a hibernated app is woken by it, beside the
//!   same for an awake app. p50 and p99.
//! - **Restart**: the gateway with N hibernated Rust apps stopped and
//!   started again: the time until it is ready (every app listed and
//!   routed), and until the first connection to one of them is answered.
//! - **Deploys per second**, as the deploying went.
//!
//! Targets (issue 18): ≤ 64 KiB per hibernated app; Rust first byte of a
//! hibernated app within 2 ms of an awake app's (p50); restart to serving
//! ≤ 2 s with 1,000 apps.
//!
//! Run: `cargo bench --bench density` (1,000 and 5,000 Rust apps, 50
//! Python apps) or `SOCKGATE_BENCH_QUICK=1 cargo bench --bench density`
//! (100 Rust apps, 5 Python apps). Results are printed and written to
//! `target/bench-results/density.{md,json}`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use sockgate_testkit::admin::Admin;
use sockgate_testkit::bench::{publish, quick};
use sockgate_testkit::guests::{guest, lang_guest};
use sockgate_testkit::os::process_rss_kib;
use sockgate_testkit::paths::{root, sockgate_binary};
use sockgate_testkit::server::{Server, write_bench_config};
use sockgate_testkit::tls::{client_config, connect, dev_ca_root};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const DOMAIN: &str = "density.test";
/// How long a wait for the gateway (every app hibernated, a restart) may
/// take before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(600);

fn main() {
    let quick = quick();
    let rust = std::fs::read(guest("echo")).expect("no Rust echo guest");
    let python = std::fs::read(lang_guest("python", "echo")).expect("no Python echo guest");
    let (rust_counts, python_count, sample) = match quick {
        true => (vec![100], 5, 20),
        false => (vec![1000, 5000], 50, 200),
    };
    let mut rows = Vec::new();
    let mut restarts = Vec::new();
    for &count in &rust_counts {
        let awake = Run::measure("rust", &rust, count, Sleep::Never, sample, false);
        let mut asleep = Run::measure("rust", &rust, count, Sleep::AfterOneSecond, sample, true);
        restarts.extend(asleep.restart.take());
        rows.push((awake, asleep));
    }
    let sample = sample.min(python_count);
    let awake = Run::measure("python", &python, python_count, Sleep::Never, sample, false);
    let asleep = Run::measure(
        "python",
        &python,
        python_count,
        Sleep::AfterOneSecond,
        sample,
        false,
    );
    rows.push((awake, asleep));
    report(&rows, &restarts);
}

/// Whether the apps hibernate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sleep {
    /// `hibernate_after_secs = 0`: kept awake.
    Never,
    /// `hibernate_after_secs = 1`.
    AfterOneSecond,
}

/// What one gateway with `count` apps measured.
struct Run {
    guest: &'static str,
    count: usize,
    /// Resident memory per app, KiB.
    rss_per_app_kib: f64,
    /// First byte over TLS: p50 and p99, ms.
    first_byte_ms: (f64, f64),
    deploys_per_sec: f64,
    restart: Option<Restart>,
}

/// A restart of a gateway holding `count` hibernated apps.
struct Restart {
    count: usize,
    /// From the start of the process until it printed `sockgate ready`.
    ready_ms: f64,
    /// From the start until an app's first byte over TLS.
    first_byte_ms: f64,
}

impl Run {
    fn measure(
        guest: &'static str,
        component: &[u8],
        count: usize,
        sleep: Sleep,
        sample: usize,
        restart: bool,
    ) -> Self {
        let label = format!(
            "{guest}-{count}-{}",
            match sleep {
                Sleep::Never => "awake",
                Sleep::AfterOneSecond => "hibernating",
            }
        );
        eprintln!("density: {label}");
        let dir = root().join("target/bench-density").join(&label);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state");
        let config = gateway_config(&label, &state);
        let server = Server::serve(&sockgate_binary(), &config, false, Stdio::inherit());
        let admin = Admin::of(&server, &state);
        let tls = server
            .printed("tls listening on ")
            .expect("no TLS listener");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = client_config(&[dev_ca_root(&state)], &[]);
        // The gateway's own memory, once it served a connection.
        runtime.block_on(first_byte(tls, "base", &client));
        let before = process_rss_kib(server.pid());

        let settings = match sleep {
            Sleep::Never => r#"{"limits":{"hibernate_after_secs":0}}"#,
            Sleep::AfterOneSecond => r#"{"limits":{"hibernate_after_secs":1}}"#,
        };
        let started = Instant::now();
        for index in 0..count {
            admin.deploy(&app_name(index), component, settings);
        }
        let deploys_per_sec = count as f64 / started.elapsed().as_secs_f64();
        if sleep == Sleep::AfterOneSecond {
            wait_until_hibernated(&admin, count);
        }
        let rss_per_app_kib =
            process_rss_kib(server.pid()).saturating_sub(before) as f64 / count as f64;

        // Each sampled app contacted once (its certificate issued), then
        // left to hibernate again, then measured.
        let sampled: Vec<String> = (0..sample).map(|i| app_name(i * count / sample)).collect();
        runtime.block_on(async {
            for name in &sampled {
                first_byte(tls, name, &client).await;
            }
        });
        if sleep == Sleep::AfterOneSecond {
            wait_until_hibernated(&admin, count);
        }
        let mut times: Vec<f64> = runtime.block_on(async {
            let mut times = Vec::new();
            for name in &sampled {
                times.push(first_byte(tls, name, &client).await.as_secs_f64() * 1e3);
            }
            times
        });
        times.sort_by(f64::total_cmp);
        let first_byte_ms = (percentile(&times, 0.5), percentile(&times, 0.99));

        let restart = restart.then(|| {
            wait_until_hibernated(&admin, count);
            drop(server);
            let started = Instant::now();
            let server = Server::serve(&sockgate_binary(), &config, false, Stdio::inherit());
            let ready_ms = started.elapsed().as_secs_f64() * 1e3;
            let tls = server
                .printed("tls listening on ")
                .expect("no TLS listener");
            runtime.block_on(first_byte(tls, &app_name(count / 2), &client));
            let first_byte_ms = started.elapsed().as_secs_f64() * 1e3;
            Restart {
                count,
                ready_ms,
                first_byte_ms,
            }
        });
        Run {
            guest,
            count,
            rss_per_app_kib,
            first_byte_ms,
            deploys_per_sec,
            restart,
        }
    }
}

fn app_name(index: usize) -> String {
    format!("app-{index}")
}

/// A gateway with an admin API, state directory `state`, the dev CA for
/// `*.density.test` (no QUIC, no plain-HTTP port: not measured here), and
/// one configured app, `base`, on a TCP port of its own.
fn gateway_config(label: &str, state: &Path) -> PathBuf {
    write_bench_config(
        &format!("density-{label}"),
        &format!(
            "admin = \"127.0.0.1:0\"\nstate_dir = {:?}",
            state.display().to_string()
        ),
        &format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"{DOMAIN}\"\ncertificates = \"dev-ca\"\n\n\
             [http]\nenabled = false\n\n[quic]\nenabled = false\n\n\
             [[app]]\nname = \"base\"\ncomponent = {:?}\nlisten = \"127.0.0.1:0\"\n",
            guest("echo").display().to_string()
        ),
    )
}

/// Connects over TLS to app `name`, sends a line and waits for it to come
/// back: the time from the connect to the echo's first line.
async fn first_byte(tls: SocketAddr, name: &str, client: &Arc<ClientConfig>) -> Duration {
    let started = Instant::now();
    let stream = connect(tls, &format!("{name}.{DOMAIN}"), client.clone())
        .await
        .unwrap_or_else(|err| panic!("{name}: {err}"));
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(b"ping\n").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_line(&mut line))
        .await
        .unwrap_or_else(|_| panic!("{name}: no echo in 30 s"))
        .unwrap();
    assert_eq!(line, "ping\n", "{name}");
    started.elapsed()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index]
}

/// Waits until `count` apps report `hibernated`.
fn wait_until_hibernated(admin: &Admin, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let asleep = admin
            .apps()
            .iter()
            .filter(|app| app["hibernation"] == "hibernated")
            .count();
        if asleep >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {asleep} of {count} apps hibernated"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn report(rows: &[(Run, Run)], restarts: &[Restart]) {
    let mut md = String::from(
        "## density: many apps without a port each, reached by SNI over TLS\n\n\
         | guest | apps | RSS per awake idle app | RSS per hibernated app | \
         first byte, awake p50 / p99 | first byte, hibernated p50 / p99 | deploys/s |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut json = Vec::new();
    for (awake, asleep) in rows {
        md.push_str(&format!(
            "| {} | {} | {:.0} KiB | {:.1} KiB | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.0} |\n",
            awake.guest,
            awake.count,
            awake.rss_per_app_kib,
            asleep.rss_per_app_kib,
            awake.first_byte_ms.0,
            awake.first_byte_ms.1,
            asleep.first_byte_ms.0,
            asleep.first_byte_ms.1,
            asleep.deploys_per_sec,
        ));
        json.push(format!(
            "{{\"guest\":\"{}\",\"apps\":{},\"rss_awake_kib\":{:.1},\"rss_hibernated_kib\":{:.1},\
             \"first_byte_awake_p50_ms\":{:.3},\"first_byte_awake_p99_ms\":{:.3},\
             \"first_byte_hibernated_p50_ms\":{:.3},\"first_byte_hibernated_p99_ms\":{:.3},\
             \"deploys_per_sec\":{:.1}}}",
            awake.guest,
            awake.count,
            awake.rss_per_app_kib,
            asleep.rss_per_app_kib,
            awake.first_byte_ms.0,
            awake.first_byte_ms.1,
            asleep.first_byte_ms.0,
            asleep.first_byte_ms.1,
            asleep.deploys_per_sec,
        ));
    }
    md.push_str(
        "\n| restart with hibernated Rust apps | ready (every app listed) | first byte of one app |\n\
         |---:|---:|---:|\n",
    );
    for restart in restarts {
        md.push_str(&format!(
            "| {} | {:.0} ms | {:.0} ms |\n",
            restart.count, restart.ready_ms, restart.first_byte_ms
        ));
        json.push(format!(
            "{{\"restart_apps\":{},\"ready_ms\":{:.1},\"first_byte_ms\":{:.1}}}",
            restart.count, restart.ready_ms, restart.first_byte_ms
        ));
    }
    md.push_str(
        "\nRSS per app: the gateway's resident memory with the apps deployed and idle minus \
         before the first deploy, over the apps (a fresh gateway per column). First byte: TLS \
         connect + handshake + one line echoed, each app contacted once before (certificate \
         issued). Targets: ≤ 64 KiB per hibernated app; hibernated Rust p50 within 2 ms of \
         awake; restart ≤ 2 s with 1,000 apps.\n",
    );
    publish("density", &md, &json);
}
