//! The WASI 0.2 compatibility world `conn-handler-sync`: one instance per
//! connection, so a trap, a CPU or a wall-clock limit ends one connection
//! and no other; the guest's half-close and the connection info reach it;
//! and instantiation from the pre-linked component with the pooling
//! allocator is cheap (measured and printed).
//!
//! The echo behaviour of the sync guests is tested with every other
//! language's in `echo.rs`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use sockgate_host::limits::AppLimits;
use sockgate_host::runtime::Runtime;
use sockgate_host::runtime::instance::InstanceSettings;
use sockgate_host::runtime::load::{GuestPre, World, load_component};
use sockgate_host::runtime::per_connection::instantiate_once;
use sockgate_host::tenant::conns::ConnTracker;
use sockgate_host::tenant::outbound::OutboundPolicy;

use crate::support::{Gateway, TestApp, ask, guest, lang_guest, shared_cache_dir};

const TIMEOUT: Duration = Duration::from_secs(30);

fn hostile_gateway(extra: &str) -> Gateway {
    Gateway::start(&[TestApp {
        name: "hostile",
        guest: "sync-hostile",
        extra,
    }])
}

/// Waits until the gateway closes `stream` (end of stream or reset).
async fn closed_by_gateway(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 64];
    match tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Opens `n` connections and proves each is served.
async fn bystanders(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    for i in 0..n {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            ask(&mut stream, &format!("hello {i}")).await,
            format!("hello {i}")
        );
        streams.push(stream);
    }
    streams
}

/// Every bystander is still served, each on its own instance.
async fn still_served(streams: &mut [TcpStream], after: &str) {
    for (i, stream) in streams.iter_mut().enumerate() {
        let line = format!("still here {i} after {after}");
        assert_eq!(
            ask(stream, &line).await,
            line,
            "bystander {i} was affected by {after}"
        );
    }
}

#[tokio::test]
async fn a_trap_ends_only_the_connection_that_caused_it() {
    let gateway = hostile_gateway("");
    let addr = gateway.addr("hostile");
    let mut others = bystanders(addr, 5).await;

    let mut attacker = TcpStream::connect(addr).await.unwrap();
    attacker.write_all(b"panic\n").await.unwrap();
    assert!(
        closed_by_gateway(&mut attacker).await,
        "the trapping connection was not closed"
    );

    // The event names the connection, the cause and the guest's reason.
    let stderr = &gateway.stderr;
    assert!(
        stderr.wait_for(TIMEOUT, |t| t.contains("trapped its instance (guest)")
            && t.contains("closing that connection only")
            && t.contains("asked to panic")),
        "no trap event with its reason:\n{}",
        stderr.text()
    );
    still_served(&mut others, "a panic").await;
    // And new connections are served as before.
    let mut next = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut next, "next").await, "next");
    assert!(
        !stderr.text().contains("instance trapped ("),
        "a shared-instance trap was reported:\n{}",
        stderr.text()
    );
}

#[tokio::test]
async fn cpu_and_wall_clock_budgets_end_only_the_spinning_connection() {
    let gateway = hostile_gateway("[app.limits]\ncpu_budget_ms = 20\nwall_budget_ms = 300");
    let addr = gateway.addr("hostile");
    let mut others = bystanders(addr, 3).await;
    let stderr = &gateway.stderr;

    // Computing without waiting for I/O, with or without calling cheap
    // imports (the clock): the CPU budget ends it.
    for (round, spin) in ["spin\n", "spin-clock\n"].into_iter().enumerate() {
        let mut spinner = TcpStream::connect(addr).await.unwrap();
        spinner.write_all(spin.as_bytes()).await.unwrap();
        assert!(closed_by_gateway(&mut spinner).await, "{spin} not stopped");
        assert!(
            stderr.wait_for_count(TIMEOUT, "trapped its instance (cpu-budget)", round + 1),
            "no cpu-budget event for {spin}:\n{}",
            stderr.text()
        );
    }
    // The bystanders sat waiting for I/O for longer than the budgets:
    // waiting is not running, and they are still served.
    still_served(&mut others, "the CPU budget's traps").await;
}

/// With a CPU budget larger than the wall-clock budget, the wall clock
/// ends a connection that never waits for I/O first.
#[tokio::test]
async fn the_wall_clock_budget_ends_a_connection_that_never_waits() {
    let gateway = hostile_gateway("[app.limits]\ncpu_budget_ms = 60000\nwall_budget_ms = 300");
    let addr = gateway.addr("hostile");
    let mut others = bystanders(addr, 3).await;
    let stderr = &gateway.stderr;
    let started = Instant::now();
    let mut clock_spinner = TcpStream::connect(addr).await.unwrap();
    clock_spinner.write_all(b"spin-clock\n").await.unwrap();
    assert!(
        closed_by_gateway(&mut clock_spinner).await,
        "spin-clock not stopped"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before its wall-clock budget"
    );
    assert!(
        stderr.wait_for(TIMEOUT, |t| t.contains("trapped its instance (wall-clock)")),
        "no wall-clock event:\n{}",
        stderr.text()
    );
    still_served(&mut others, "the wall-clock budget's trap").await;
}

#[tokio::test]
async fn the_memory_limit_ends_only_the_connection_that_hits_it() {
    let gateway = hostile_gateway("[app.limits]\nmemory_limit_mb = 16");
    let addr = gateway.addr("hostile");
    let mut others = bystanders(addr, 3).await;
    let mut hog = TcpStream::connect(addr).await.unwrap();
    hog.write_all(b"alloc-abort\n").await.unwrap();
    assert!(closed_by_gateway(&mut hog).await, "the hog was not stopped");
    let stderr = &gateway.stderr;
    assert!(
        stderr.wait_for(TIMEOUT, |t| t.contains("limit memory_limit_mb hit")
            && t.contains("trapped its instance (memory-limit)")),
        "no memory-limit events:\n{}",
        stderr.text()
    );
    still_served(&mut others, "a memory-limit trap").await;
}

#[tokio::test]
async fn the_guest_sees_its_connection_info_and_can_half_close() {
    let gateway = hostile_gateway("");
    let mut stream = TcpStream::connect(gateway.addr("hostile")).await.unwrap();
    let local = stream.local_addr().unwrap();
    assert_eq!(
        ask(&mut stream, "info").await,
        format!("peer {local} transport tcp")
    );

    // The guest drops its output stream: we see end of stream...
    stream.write_all(b"close-write\n").await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut received))
        .await
        .expect("the guest's half-close did not reach the client")
        .unwrap();
    assert!(received.is_empty(), "unexpected bytes {received:?}");
    // ...while the guest still reads what we send.
    stream.write_all(b"still here\n").await.unwrap();
    assert!(
        gateway.stderr.wait_for(TIMEOUT, |t| t
            .contains("received after close-write: still here")),
        "the guest did not receive data sent after its half-close:\n{}",
        gateway.stderr.text()
    );
}

/// Instantiates `component` (a `conn-handler-sync` guest) `rounds` times
/// from its pre-linked form, as a connection would, and returns the
/// durations sorted.
async fn instantiation_times(component: &std::path::Path, rounds: usize) -> Vec<Duration> {
    let runtime = Runtime::new(shared_cache_dir()).expect("runtime");
    let loaded = load_component(&runtime, component).expect("load");
    assert_eq!(loaded.world, World::ConnHandlerSync);
    let GuestPre::PerConnection(pre) = (*loaded.pre).clone() else {
        panic!("a sync component was not loaded for per-connection instances");
    };
    let settings = InstanceSettings::new(
        "measure",
        loaded.pre,
        AppLimits::default(),
        OutboundPolicy::parse(&[]).unwrap(),
        runtime.supervision,
        ConnTracker::new(10),
    );
    // Warm the pool's slots (the first use of a slot maps its memory).
    for _ in 0..20 {
        instantiate_once(&settings, &pre)
            .await
            .expect("instantiate");
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        times.push(
            instantiate_once(&settings, &pre)
                .await
                .expect("instantiate"),
        );
    }
    times.sort();
    times
}

fn report(name: &str, times: &[Duration]) -> Duration {
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!(
        "instantiation of {name} from InstancePre (pooling allocator, supervised store): \
         mean {mean:?}, p50 {:?}, p99 {:?}, over {} rounds",
        pct(50),
        pct(99),
        times.len()
    );
    mean
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instantiation_per_connection_is_cheap() {
    let rust = instantiation_times(&guest("sync-echo"), 2000).await;
    let rust_mean = report("sync-echo (Rust)", &rust);
    // A generous bound (the point is tens of microseconds, on a loaded
    // 2-core machine): a regression to compiling or copying memory per
    // connection would be milliseconds.
    assert!(
        rust_mean < Duration::from_millis(1),
        "Rust sync guest instantiation too slow: {rust_mean:?}"
    );
    let js = instantiation_times(&lang_guest("starlingmonkey", "echo"), 200).await;
    let js_mean = report("starlingmonkey/echo (12 MB JS engine)", &js);
    assert!(
        js_mean < Duration::from_millis(20),
        "StarlingMonkey guest instantiation too slow: {js_mean:?}"
    );
}
