//! Starting guests.
//!
//! - **Instantiation**: one instance of the echo guest from an
//!   `InstancePre` (imports resolved once, ahead of time) on an engine with
//!   wasmtime's pooling allocator (memories, tables and instances from
//!   preallocated slots, reset copy-on-write), with a fresh store, WASI
//!   context and the gateway's supervision per instance: what an instance
//!   per connection costs. The same on the gateway's engine (on-demand
//!   allocation) is printed beside it.
//! - **Deploy to first byte**: from starting `sockgate serve` with a
//!   configuration naming the echo app (its compiled code already in the
//!   compile cache) to the first byte echoed back on a new connection.
//!
//! Run: `cargo bench --bench instantiate` (`SOCKGATE_BENCH_QUICK=1` for a
//! short run). Results also go to `target/bench-results/instantiate.{md,json}`.

use sockgate_testkit::bench::{Samples, criterion, publish, quick};
use sockgate_testkit::guests::guest;
use sockgate_testkit::net::free_port;
use sockgate_testkit::paths::{bench_cache_dir, bench_dir, sockgate_binary};
use sockgate_testkit::server::write_bench_config;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sockgate_host::limits::AppLimits;
use sockgate_host::runtime::Runtime;
use sockgate_host::runtime::bindings::ConnHandlerPre;
use sockgate_host::runtime::cache::CompileCache;
use sockgate_host::runtime::engine::Supervision;
use sockgate_host::runtime::engine::{MEMORY_KEEP_RESIDENT, TABLE_KEEP_RESIDENT};
use sockgate_host::runtime::host_state::HostState;
use sockgate_host::runtime::instance::InstanceSettings;
use sockgate_host::runtime::load::GuestPre;
use sockgate_host::runtime::slow_lane;
use sockgate_host::runtime::supervisor::supervise;
use sockgate_host::tenant::conns::ConnTracker;
use sockgate_host::tenant::outbound::OutboundPolicy;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

/// The target for one instantiation.
const TARGET_US: f64 = 10.0;

fn main() {
    let echo = guest("echo");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let pooled = settings(&pooling_engine(false), &echo);
    let resident = settings(&pooling_engine(true), &echo);
    let gateway = Runtime::new(bench_cache_dir()).unwrap();
    let on_demand = settings(&gateway.engine, &echo);

    let mut c = criterion();
    let mut group = c.benchmark_group("instantiate");
    let mut figures = Vec::new();
    for (name, settings) in [
        ("pooling allocator + InstancePre", &pooled),
        (
            "pooling allocator, dirty pages rewritten in place (PAGEMAP_SCAN, as the gateway's \
             per-connection pool) + InstancePre",
            &resident,
        ),
        (
            "on-demand allocator + InstancePre (the gateway's engine)",
            &on_demand,
        ),
    ] {
        let samples = Samples::default();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        instantiate(settings).await;
                    }
                    samples.record(iters, started.elapsed())
                })
            })
        });
        figures.push((name, samples.median_ns() / 1e3));
    }
    group.finish();
    c.final_summary();

    let deploys = if quick() { 3 } else { 11 };
    let first_byte = deploy_to_first_byte(&echo, deploys);

    let mut md = format!(
        "Instantiation of the echo guest (fresh store, WASI context and supervision; \
         median of criterion's samples); target ≤ {TARGET_US} µs\n\n\
         | path | µs per instance | vs target |\n|---|---:|---:|\n"
    );
    let mut json = Vec::new();
    for (name, us) in &figures {
        md.push_str(&format!("| {name} | {us:.1} | {:.2}× |\n", us / TARGET_US));
        json.push(format!(
            "{{\"kind\":\"instantiate\",\"path\":\"{name}\",\"us\":{us:.2}}}"
        ));
    }
    md.push_str(&format!(
        "\nDeploy to first byte: `sockgate serve` with the echo app (compile cache warm) \
         until the first echoed byte, median of {deploys}\n\n\
         | path | ms |\n|---|---:|\n| sockgate serve → first echoed byte | {:.1} |\n",
        first_byte.as_secs_f64() * 1e3
    ));
    json.push(format!(
        "{{\"kind\":\"deploy_to_first_byte\",\"ms\":{:.2}}}",
        first_byte.as_secs_f64() * 1e3
    ));
    publish("instantiate", &md, &json);
}

/// An engine configured as the gateway's (component model async,
/// epochs) plus the pooling allocator, sized for a benchmark. With
/// `resident`, a slot is reset as the gateway's per-connection pool resets
/// it (where the kernel has `PAGEMAP_SCAN`): the pages an instance dirtied
/// are rewritten, up to the gateway's keep-resident sizes, instead of
/// returned to the kernel, so a reused slot takes no page faults there.
fn pooling_engine(resident: bool) -> Engine {
    let mut pool = PoolingAllocationConfig::default();
    if resident && PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT);
    }
    pool.total_component_instances(64)
        .total_core_instances(512)
        .total_memories(128)
        .total_tables(512)
        .total_stacks(64)
        .max_memory_size(128 << 20);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .wasm_component_model_async(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).unwrap()
}

/// Everything an instance of `component` on `engine` is created from.
fn settings(engine: &Engine, component: &Path) -> InstanceSettings {
    let cache = CompileCache::open(bench_cache_dir(), engine).unwrap();
    let bytes = std::fs::read(component).unwrap();
    let (component, _) = cache.load_or_compile(engine, &bytes).unwrap();
    let linker = Runtime::linker(engine).unwrap();
    let pre = ConnHandlerPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    InstanceSettings::new(
        "echo",
        pre,
        AppLimits::default(),
        OutboundPolicy::default(),
        Supervision::default(),
        ConnTracker::new(1000),
    )
}

/// One instance as the gateway creates it, dropped at once.
async fn instantiate(settings: &InstanceSettings) {
    let GuestPre::Shared(pre) = &*settings.pre else {
        unreachable!("the echo guest implements conn-handler")
    };
    let state = HostState::new(settings.inputs(), 0);
    let mut store = Store::new(pre.engine(), state);
    let meter = supervise(
        &mut store,
        settings.supervision,
        &settings.limits,
        Default::default(),
    );
    let pre = pre.clone();
    // The instance lives in the store, dropped here with it.
    let _store = slow_lane::run(meter, async move {
        pre.instantiate_async(&mut store).await.map(|_| store)
    })
    .await
    .unwrap();
}

/// Median time from starting the gateway to the first byte echoed.
fn deploy_to_first_byte(echo: &Path, runs: usize) -> Duration {
    let state = bench_dir("instantiate").join("state");
    let mut times = Vec::new();
    // The first start fills the compile cache if it was cold; not counted.
    for run in 0..=runs {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = write_bench_config(
            "instantiate",
            &format!("state_dir = {:?}", state.display().to_string()),
            &format!(
                "[[app]]\nname = \"echo\"\ncomponent = {:?}\nlisten = \"{addr}\"\n",
                echo.display().to_string()
            ),
        );
        let started = Instant::now();
        let mut child = Command::new(sockgate_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot start sockgate");
        let elapsed = loop {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "sockgate did not echo within 30 s"
            );
            if let Ok(mut stream) = TcpStream::connect(addr) {
                let mut byte = [0u8; 1];
                if stream.write_all(b"!").is_ok() && stream.read_exact(&mut byte).is_ok() {
                    break started.elapsed();
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        let _ = child.kill();
        let _ = child.wait();
        if run > 0 {
            times.push(elapsed);
        }
    }
    times.sort();
    times[times.len() / 2]
}
