//! The chaos soak (`./dev soak [SECONDS]`; a 60-second form runs in the
//! test suite): one gateway, and for the whole run, at once —
//!
//! - healthy clients checking every byte: echo over TCP, TLS and QUIC in
//!   the `conn-handler` and `conn-events` worlds, a chat room over TCP and
//!   TLS, HTTP/1.1, HTTP/2 and HTTP/3 to a `wasi:http` app ([`clients`]);
//! - a neighbour measuring its worst round trip ([`clients::neighbour`]);
//! - deploys, rollbacks and removals every two seconds, hostile guests
//!   spinning, exhausting memory, trapping, logging flat out and opening
//!   sockets, floods from many loopback addresses and slow clients,
//!   `kill -9` and restart of the gateway, the ACME CA going away and
//!   coming back ([`chaos`]);
//! - the invariants: no healthy client sees a wrong or missing byte except
//!   across a restart, every deploy ends on the old or the new version, the
//!   neighbour's worst round trip stays within the fairness bound,
//!   descriptors and memory come back after each wave, no gateway panics,
//!   the admin API answers throughout ([`watch`]).
//!
//! It prints a report and writes it to `target/soak-results/soak.md`.

mod chaos;
mod clients;
mod watch;
mod world;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use clients::{HttpVersion, Transport};
use world::{Plan, Soak};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() {
    let plan = Plan::from_env();
    let soak = Arc::new(Soak::start(plan).await);
    eprintln!("soak: {plan:?}, gateway ready after {:?}", soak.elapsed());
    let started = soak.elapsed();

    let mut actors = Vec::new();
    let s = || soak.clone();
    for (i, (app, transport)) in [
        ("echo", Transport::Tcp),
        ("echo", Transport::Tls),
        ("echo", Transport::Quic),
        ("events", Transport::Tcp),
        ("events", Transport::Tls),
        ("events", Transport::Quic),
    ]
    .into_iter()
    .enumerate()
    {
        actors.push(tokio::spawn(clients::echo(
            s(),
            app,
            transport,
            i as u64 + 1,
        )));
    }
    actors.push(tokio::spawn(clients::chat(s(), 1)));
    actors.push(tokio::spawn(clients::chat(s(), 2)));
    for version in [HttpVersion::Http1, HttpVersion::Http2, HttpVersion::Http3] {
        actors.push(tokio::spawn(clients::http(s(), version)));
    }
    actors.push(tokio::spawn(clients::neighbour(s())));
    actors.push(tokio::spawn(chaos::sink(s())));
    actors.push(tokio::spawn(chaos::deployer(s())));
    actors.push(tokio::spawn(chaos::hostile(s(), "hostile", 11)));
    actors.push(tokio::spawn(chaos::hostile(s(), "sync-hostile", 12)));
    actors.push(tokio::spawn(chaos::flood(s(), 13)));
    actors.push(tokio::spawn(chaos::killer(s(), 14)));
    actors.push(tokio::spawn(chaos::ca_outages(s())));
    actors.push(tokio::spawn(watch::admin(s())));

    // The run's length is what is being tested, not a synchronisation.
    tokio::time::sleep(plan.duration).await;
    soak.stop();
    for actor in actors {
        actor.await.expect("a soak actor panicked");
    }
    for panic in watch::panics(&soak.logs()) {
        soak.violation(format!("the gateway panicked: {panic}"));
    }

    let report = report(&soak, soak.elapsed() - started);
    println!("{report}");
    let dir = sockgate_testkit::paths::root().join("target/soak-results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("soak.md"), &report).unwrap();
    let violations = soak.violations();
    assert!(
        violations.is_empty(),
        "{} invariant violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// The soak's figures as a Markdown table.
fn report(soak: &Soak, ran: std::time::Duration) -> String {
    let t = &soak.tally;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let rows = [
        ("duration", format!("{:.0} s", ran.as_secs_f64())),
        (
            "healthy connections and QUIC streams",
            n(&t.connections).to_string(),
        ),
        ("bytes verified", n(&t.bytes_verified).to_string()),
        (
            "HTTP requests verified (h1, h2, h3)",
            n(&t.requests).to_string(),
        ),
        ("chat lines verified", n(&t.chat_lines).to_string()),
        ("deploys, rollbacks, removals", n(&t.deploys).to_string()),
        ("gateway kill -9 and restart", n(&t.kills).to_string()),
        ("ACME CA outages", n(&t.ca_outages).to_string()),
        ("hostile requests", n(&t.hostile).to_string()),
        (
            "flood and slow connections",
            n(&t.flood_connections).to_string(),
        ),
        ("admin API polls answered", n(&t.admin_polls).to_string()),
        (
            "neighbour round trips / worst",
            format!(
                "{} / {:.1} ms (bound {} ms)",
                n(&t.neighbour_round_trips),
                n(&t.neighbour_worst_us) as f64 / 1000.0,
                clients::NEIGHBOUR_BOUND.as_millis()
            ),
        ),
        ("failures excused by a restart", n(&t.excused).to_string()),
        ("invariant violations", soak.violations().len().to_string()),
    ];
    let mut text = String::from("| chaos soak | |\n|---|---:|\n");
    for (what, value) in rows {
        text.push_str(&format!("| {what} | {value} |\n"));
    }
    text
}
