//! The process-wide wasmtime engine and linker.

use std::path::PathBuf;

use anyhow::{Context, Result};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::cache::CompileCache;
use super::host_state::HostState;
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
}

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
        let cache = CompileCache::open(cache_dir, &engine)?;
        super::supervisor::start_ticker(&engine);
        Ok(Self {
            engine,
            supervision,
            linker,
            cache,
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
}

/// The engine settings. Anything changed here changes the compile cache key
/// (through wasmtime's compatibility hash), so stale artifacts are never
/// loaded.
fn engine_config(supervision: Supervision) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // CPU supervision (see `supervisor.rs`): fuel for the deterministic
    // bound, epochs for the wall-clock backstop.
    config.consume_fuel(supervision.fuel);
    config.epoch_interruption(supervision.epoch);
    config
}
