//! The process-wide wasmtime engines and linkers: one for the long-lived
//! instances of `conn-handler` apps; one, created when the first
//! `conn-handler-sync` app is loaded, for instances created per connection;
//! and one, created when the first `conn-events` app is loaded, without
//! component-model concurrency, for the event world's plain calls.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::cache::CompileCache;
use super::host_state::HostState;
use super::images::LoadedImages;
pub use super::supervisor::Supervision;

/// What every app shares: one engine (so compiled code and the epoch are
/// shared), one linker with every import the gateway provides, and the
/// compile cache.
pub struct Runtime {
    /// The engine all components are compiled for.
    pub engine: Engine,
    /// Which CPU supervision the engine was built with.
    pub supervision: Supervision,
    /// WASI 0.2 and 0.3 imports, ready to instantiate any app.
    pub linker: Linker<HostState>,
    /// Compiled components on disk.
    pub cache: CompileCache,
    /// Compiled components in memory, shared by the apps of the same
    /// bytes (every engine's: the keys tell the engines apart).
    pub images: LoadedImages,
    /// Where the compile cache lives (the per-connection engine's cache
    /// shares the directory).
    cache_dir: PathBuf,
    /// The per-connection engine, created on first use.
    per_connection: OnceLock<PerConnectionRuntime>,
    /// The event world's engine, created on first use.
    events: OnceLock<EventsRuntime>,
}

/// The engine, linker and cache of the `conn-events` world. A separate
/// engine because the event world's export is a plain synchronous
/// function, called once per batch: on an engine with component-model
/// concurrency every call, even of a synchronous export, goes through the
/// concurrent machinery (a queued task, its thread state, its cleanup),
/// which costs microseconds per call; without it, a call is a switch onto
/// the store's fiber and back. Event-world guests need no component-model
/// async: their imports are WASI 0.2.
pub struct EventsRuntime {
    /// The engine `conn-events` components are compiled for.
    pub engine: Engine,
    /// WASI 0.2 imports and the world's types interface.
    pub linker: Linker<HostState>,
    /// Compiled components on disk, keyed apart from the other engines'.
    pub cache: CompileCache,
}

/// The engine, linker and cache of the `conn-handler-sync` world: one
/// instance per connection, so instantiation is on every connection's path.
/// A separate engine because the pooling allocator that makes that fast
/// (memories, tables and fiber stacks reused from preallocated slots, memory
/// images mapped copy-on-write) is an engine-wide choice, and it bounds
/// what an instance may have; the long-lived instances keep the on-demand
/// allocator.
pub struct PerConnectionRuntime {
    /// The engine `conn-handler-sync` components are compiled for.
    pub engine: Engine,
    /// WASI 0.2 imports and the world's types interface.
    pub linker: Linker<HostState>,
    /// Compiled components on disk, keyed apart from the main engine's.
    pub cache: CompileCache,
}

pub use crate::limits::PER_CONNECTION_POOL;
/// Core instances (modules) a component may instantiate on average: Rust
/// guests use about 4, StarlingMonkey ones about 10.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
/// Memories a component may have on average: its own plus an adapter's.
const MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables a component may have on average (its own and shim modules').
const TABLES_PER_COMPONENT: u32 = 4;
/// Largest table a per-connection instance may have. Threat: each table
/// slot of the pool reserves this many entries. Interpreters compiled to
/// wasm (SpiderMonkey) have tens of thousands of functions in their table.
const TABLE_ELEMENTS: usize = 100_000;
/// Largest per-instance runtime metadata (`VMContext`) of a component or a
/// core module; StarlingMonkey's is large (many functions and imports).
const INSTANCE_METADATA_BYTES: usize = 4 << 20;
/// Dirty bytes of each pooled linear memory reset by rewriting them (the
/// pages an instance wrote, found with Linux's `PAGEMAP_SCAN`, 6.7+) rather
/// than by `madvise`, which unmaps them: the next instance in the slot then
/// takes no page faults and no TLB shootdown on the pages a request
/// touches, which were most of an instance-per-request's cost (5 faults and
/// an `madvise` per `wasi:http/proxy` request: 61 µs of CPU per request
/// before, 33 µs after). Dirty pages past this, and all of them where
/// `PAGEMAP_SCAN` is missing, are unmapped as before. The price: a slot
/// keeps what its last instance wrote resident, at most this much per
/// memory, so after a burst that used many slots the pool holds up to
/// slots × memories × this (the pool reuses the same few slots under
/// steady load).
pub const MEMORY_KEEP_RESIDENT: usize = 256 << 10;
/// The same for each pooled table (8 bytes an element).
pub const TABLE_KEEP_RESIDENT: usize = 64 << 10;

impl Runtime {
    /// Creates the engine and linker with full supervision; `cache_dir`
    /// holds compiled components.
    pub fn new(cache_dir: PathBuf) -> Result<Self> {
        Self::with_supervision(cache_dir, Supervision::default())
    }

    /// Like [`Runtime::new`] with a choice of CPU supervision; only the
    /// benchmarks that measure supervision's cost turn it off.
    pub fn with_supervision(cache_dir: PathBuf, supervision: Supervision) -> Result<Self> {
        let engine = Engine::new(&engine_config(supervision))
            .map_err(anyhow::Error::from)
            .context("cannot create the wasmtime engine")?;
        let linker = Self::linker(&engine)?;
        let cache = CompileCache::open(cache_dir.clone(), &engine)?;
        super::supervisor::start_ticker(&engine);
        Ok(Self {
            engine,
            supervision,
            linker,
            cache,
            images: LoadedImages::default(),
            cache_dir,
            per_connection: OnceLock::new(),
            events: OnceLock::new(),
        })
    }

    /// A linker for `engine` with every import the gateway provides (WASI
    /// 0.2 and 0.3, name lookups checked against the outbound policy,
    /// `sockgate:gateway`). Public so benchmarks and other instance paths
    /// (e.g. an engine with the pooling allocator) link guests exactly as
    /// the gateway does.
    pub fn linker(engine: &Engine) -> Result<Linker<HostState>> {
        let mut linker = Linker::new(engine);
        // Guests built with today's toolchains import WASI 0.2 (their
        // standard library) and WASI 0.3 (their async world) side by side.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add WASI 0.2 to the linker")?;
        wasmtime_wasi::p3::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add WASI 0.3 to the linker")?;
        super::name_lookup::add_to_linker(&mut linker)?;
        super::guest_sockets::add_p2_to_linker(&mut linker)?;
        super::guest_sockets::add_p3_to_linker(&mut linker)?;
        // `wasi:http@0.3.0` (types and client) for `wasi:http/service`
        // apps; only HTTP apps may import it (`load.rs`).
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add wasi:http 0.3 to the linker")?;
        // `handler` uses the types-only interface `types`, which guests
        // therefore import; it has nothing to provide but must be present.
        linker
            .instance(super::bindings::TYPES_IMPORT)
            .map_err(anyhow::Error::from)
            .context("cannot add sockgate:gateway/types to the linker")?;
        super::bindings::sockgate::gateway::connection::add_to_linker::<_, HasSelf<_>>(
            &mut linker,
            |state| state,
        )
        .map_err(anyhow::Error::from)
        .context("cannot add sockgate:gateway/connection to the linker")?;
        Ok(linker)
    }

    /// The per-connection engine of `conn-handler-sync` apps, created on
    /// first use (its pool reserves address space, which a gateway serving
    /// no such app need not pay).
    pub fn per_connection(&self) -> Result<&PerConnectionRuntime> {
        if let Some(runtime) = self.per_connection.get() {
            return Ok(runtime);
        }
        let created = PerConnectionRuntime::new(self.cache_dir.clone(), self.supervision)?;
        // Two loads racing both build one; the loser's is dropped unused.
        Ok(self.per_connection.get_or_init(|| created))
    }
}

impl Runtime {
    /// The engine of `conn-events` apps, created on first use.
    pub fn events(&self) -> Result<&EventsRuntime> {
        if let Some(runtime) = self.events.get() {
            return Ok(runtime);
        }
        let created = EventsRuntime::new(self.cache_dir.clone(), self.supervision)?;
        // Two loads racing both build one; the loser's is dropped unused.
        Ok(self.events.get_or_init(|| created))
    }
}

impl EventsRuntime {
    fn new(cache_dir: PathBuf, supervision: Supervision) -> Result<Self> {
        let mut config = engine_config(supervision);
        config.wasm_component_model_async(false);
        config.concurrency_support(false);
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot create the event world's wasmtime engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add WASI 0.2 to the event world's linker")?;
        super::guest_sockets::add_p2_to_linker(&mut linker)?;
        // `handler` uses the types-only interface `types` (of either version).
        for types in [
            super::events::bindings::EVENTS_TYPES_IMPORT,
            super::events::bindings_v2::EVENTS_TYPES_IMPORT_V2,
        ] {
            linker
                .instance(types)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot add {types} to the linker"))?;
        }
        let cache = CompileCache::open_labeled(cache_dir, &engine, "events")?;
        super::supervisor::start_ticker(&engine);
        Ok(Self {
            engine,
            linker,
            cache,
        })
    }
}

impl PerConnectionRuntime {
    fn new(cache_dir: PathBuf, supervision: Supervision) -> Result<Self> {
        let engine = Engine::new(&per_connection_config(supervision))
            .map_err(anyhow::Error::from)
            .context("cannot create the per-connection wasmtime engine (instance pool)")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add WASI 0.2 to the per-connection linker")?;
        super::guest_sockets::add_p2_to_linker(&mut linker)?;
        // `wasi:http@0.2` (types and outgoing-handler) for
        // `wasi:http/proxy` apps, an instance per request from this pool.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add wasi:http 0.2 to the per-connection linker")?;
        // `sync-handler` uses the types-only interface `sync-types`.
        linker
            .instance(super::sync_bindings::SYNC_TYPES_IMPORT)
            .map_err(anyhow::Error::from)
            .context("cannot add sockgate:gateway/sync-types to the linker")?;
        let cache = CompileCache::open_labeled(cache_dir, &engine, &pool_label())?;
        super::supervisor::start_ticker(&engine);
        Ok(Self {
            engine,
            linker,
            cache,
        })
    }
}

/// The per-connection engine: the main engine's settings plus the pooling
/// allocator.
fn per_connection_config(supervision: Supervision) -> Config {
    let mut config = engine_config(supervision);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config()));
    config
}

fn pool_config() -> PoolingAllocationConfig {
    let n = PER_CONNECTION_POOL;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(n * MEMORIES_PER_COMPONENT)
        .total_tables(n * TABLES_PER_COMPONENT)
        .total_stacks(n)
        .table_elements(TABLE_ELEMENTS)
        .max_component_instance_size(INSTANCE_METADATA_BYTES)
        .max_core_instance_size(INSTANCE_METADATA_BYTES)
        .pagemap_scan(Enabled::Auto);
    // Without `PAGEMAP_SCAN` wasmtime would `memset` the whole kept
    // region on every reset, dirty or not: slower than `madvise`.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT);
    }
    pool
}

/// Names the pool settings in the compile cache key (wasmtime's
/// compatibility hash covers code generation, not the allocator).
fn pool_label() -> String {
    format!(
        "pooling:{PER_CONNECTION_POOL}:{CORE_INSTANCES_PER_COMPONENT}:{MEMORIES_PER_COMPONENT}:\
         {TABLES_PER_COMPONENT}:{TABLE_ELEMENTS}:{INSTANCE_METADATA_BYTES}"
    )
}

/// The engine settings. Anything changed here changes the compile cache key
/// (through wasmtime's compatibility hash), so stale artifacts are never
/// loaded.
fn engine_config(supervision: Supervision) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // CPU supervision (see `supervisor.rs`): epoch checks in every loop
    // and function, for time slices and the CPU and wall-clock budgets.
    config.epoch_interruption(supervision.epoch());
    // Trap backtraces name functions (from the name section) but are not
    // symbolised from DWARF, whatever WASMTIME_BACKTRACE_DETAILS says:
    // reading a large guest's debug information would take the serving
    // thread of the trap for as long.
    config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
    config
}
