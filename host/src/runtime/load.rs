//! Loading a component file: read it, make sure it is a component, find
//! which world it implements, compile it (through the cache) for that
//! world's engine, and check its exports and imports. Each refusal says what
//! was wrong and what to do, in the user's terms rather than wasmtime's.
//!
//! The world is decided from the component's top-level export names, read
//! with a parser before compiling (so a component is compiled once, for the
//! right engine): `sockgate:gateway/handler` means `conn-handler` (one
//! long-lived instance serves many connections), `sockgate:gateway/sync-handler`
//! means `conn-handler-sync` (WASI 0.2, one instance per connection),
//! `sockgate:events/handler` (0.1.0 or 0.2.0) means `conn-events` (one
//! call per batch of socket events, on long-lived instances).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};

use super::Runtime;
use super::bindings::{CONNECTION_IMPORT, ConnHandlerPre, HANDLER_EXPORT, TYPES_IMPORT};
use super::cache::{CacheOutcome, CompileCache};
use super::events::bindings::ConnEventsPre;
use super::events::bindings::{EVENTS_HANDLER_EXPORT, EVENTS_TYPES_IMPORT};
use super::events::bindings_v2::{
    ConnEventsPre as ConnEventsPreV2, EVENTS_HANDLER_EXPORT_V2, EVENTS_TYPES_IMPORT_V2,
};
use super::events::contract::EventsPre;
use super::host_state::HostState;
use super::http::{self, Detected, HttpPre, HttpWorld};
pub use super::load_error::LoadError;
use super::sync_bindings::{ConnHandlerSyncPre, SYNC_HANDLER_EXPORT, SYNC_TYPES_IMPORT};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

/// WASI packages whose interfaces the linker provides (0.2 and 0.3).
const PROVIDED_PACKAGES: &[&str] = &[
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
];

/// Non-WASI interfaces the gateway provides, by full name.
const PROVIDED_INTERFACES: &[&str] = &[TYPES_IMPORT, CONNECTION_IMPORT];
/// Non-WASI interfaces the gateway provides to `conn-handler-sync` guests.
const PROVIDED_SYNC_INTERFACES: &[&str] = &[SYNC_TYPES_IMPORT];
/// Non-WASI interfaces the gateway provides to `conn-events` guests.
const PROVIDED_EVENTS_INTERFACES: &[&str] = &[EVENTS_TYPES_IMPORT, EVENTS_TYPES_IMPORT_V2];

/// The WIT world a component implements, which decides how it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// `conn-handler` (wit/gateway.wit): WASI 0.3, an async export called
    /// concurrently on long-lived instances (shards).
    ConnHandler,
    /// `conn-handler-sync` (wit/sync/): WASI 0.2, a synchronous export
    /// called once on an instance created for each connection.
    ConnHandlerSync,
    /// `conn-events` (wit/events/): a synchronous export called with
    /// batches of socket events on long-lived instances (shards); the
    /// gateway does all the I/O (`runtime::events`).
    ConnEvents,
    /// `wasi:http/service` (WASI 0.3, export `wasi:http/handler@0.3.x`):
    /// an HTTP app whose requests are served concurrently on long-lived
    /// instances (`runtime::http::service`).
    HttpService,
    /// `wasi:http/proxy` (WASI 0.2, export
    /// `wasi:http/incoming-handler@0.2.x`): an HTTP app with an instance
    /// per request (`runtime::http::proxy`).
    HttpProxy,
}

impl World {
    /// The world's WIT name.
    pub fn name(self) -> &'static str {
        match self {
            World::ConnHandler => "conn-handler",
            World::ConnHandlerSync => "conn-handler-sync",
            World::ConnEvents => "conn-events",
            World::HttpService => "wasi:http/service",
            World::HttpProxy => "wasi:http/proxy",
        }
    }

    /// Whether the world is an HTTP one: the gateway speaks HTTP for the
    /// app (hyper, h3) and hands it requests, not connections.
    pub fn is_http(self) -> bool {
        matches!(self, World::HttpService | World::HttpProxy)
    }
}

/// A component pre-linked for its world's engine, ready to instantiate.
#[derive(Clone)]
pub enum GuestPre {
    /// A `conn-handler` component: long-lived shared instances.
    Shared(ConnHandlerPre<HostState>),
    /// A `conn-handler-sync` component: one instance per connection.
    PerConnection(ConnHandlerSyncPre<HostState>),
    /// A `wasi:http` component (either world).
    Http(HttpPre<HostState>),
    /// A `conn-events` component (either version of the contract):
    /// long-lived instances, each driven by one event loop.
    Events(EventsPre),
}

impl GuestPre {
    /// What an instance's linear memories take at its start, at most
    /// (every memory at the largest initial size among them; 0 when
    /// wasmtime cannot tell): what a first start is assumed to need under
    /// the gateway's memory ceiling ([`crate::tenant::memory`]).
    pub fn initial_memory(&self) -> usize {
        let component = match self {
            GuestPre::Shared(pre) => pre.instance_pre().component(),
            GuestPre::PerConnection(pre) => pre.instance_pre().component(),
            GuestPre::Events(pre) => pre.component(),
            GuestPre::Http(HttpPre::Service(pre)) => pre.instance_pre().component(),
            GuestPre::Http(HttpPre::Proxy(pre)) => pre.instance_pre().component(),
        };
        component.resources_required().map_or(0, |needs| {
            let pages = needs.max_initial_memory_size.unwrap_or(0);
            let bytes = u64::from(needs.num_memories).saturating_mul(pages.saturating_mul(1 << 16));
            usize::try_from(bytes).unwrap_or(usize::MAX)
        })
    }

    /// The world the component implements.
    pub fn world(&self) -> World {
        match self {
            GuestPre::Shared(_) => World::ConnHandler,
            GuestPre::PerConnection(_) => World::ConnHandlerSync,
            GuestPre::Events(_) => World::ConnEvents,
            GuestPre::Http(pre) => match pre.world() {
                HttpWorld::Service => World::HttpService,
                HttpWorld::Proxy => World::HttpProxy,
            },
        }
    }
}

impl From<ConnHandlerPre<HostState>> for GuestPre {
    fn from(pre: ConnHandlerPre<HostState>) -> Self {
        GuestPre::Shared(pre)
    }
}

impl From<ConnHandlerSyncPre<HostState>> for GuestPre {
    fn from(pre: ConnHandlerSyncPre<HostState>) -> Self {
        GuestPre::PerConnection(pre)
    }
}

impl From<ConnHandlerPre<HostState>> for Arc<GuestPre> {
    fn from(pre: ConnHandlerPre<HostState>) -> Self {
        Arc::new(GuestPre::Shared(pre))
    }
}

impl From<ConnHandlerSyncPre<HostState>> for Arc<GuestPre> {
    fn from(pre: ConnHandlerSyncPre<HostState>) -> Self {
        Arc::new(GuestPre::PerConnection(pre))
    }
}

/// A component ready to instantiate.
pub struct LoadedComponent {
    /// Pre-linked and type-checked against its world; shared by every app
    /// of the same bytes ([`super::images`]).
    pub pre: Arc<GuestPre>,
    /// The world it implements.
    pub world: World,
    /// Whether it came from the compile cache, or was shared with an app
    /// of the same bytes.
    pub cache: CacheOutcome,
    /// Size of the component file.
    pub size: usize,
    /// Time spent compiling or loading from the cache.
    pub load_time: Duration,
}

/// Reads, compiles and checks the component at `path`.
pub fn load_component(runtime: &Runtime, path: &Path) -> Result<LoadedComponent, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    load_component_bytes(runtime, path, &bytes)
}

/// Like [`load_component`] for bytes already in memory; `path` only names
/// them in errors.
pub fn load_component_bytes(
    runtime: &Runtime,
    path: &Path,
    bytes: &[u8],
) -> Result<LoadedComponent, LoadError> {
    let world = detect_world(path, bytes)?;
    let started = Instant::now();
    let key = compile_cache_of(runtime, path, world)?.key(bytes);
    if let Some(pre) = runtime.images.get(&key) {
        return Ok(LoadedComponent {
            pre,
            world,
            cache: CacheOutcome::Shared,
            size: bytes.len(),
            load_time: started.elapsed(),
        });
    }
    let path = path.to_owned();
    let loaded = match world {
        World::ConnHandler | World::HttpService => load_shared(runtime, path, bytes, &key, world),
        World::ConnEvents => load_events(runtime, path, bytes, &key),
        World::ConnHandlerSync | World::HttpProxy => {
            load_per_connection(runtime, path, bytes, &key, world)
        }
    }?;
    runtime.images.insert(key, &loaded.pre);
    Ok(loaded)
}

/// The compile cache key of component `bytes` (`path` names them in
/// errors) and where its compiled artifact is kept: what a cluster node
/// publishes so that its peers can fetch the artifact instead of
/// compiling (`[cluster] share_compiled`).
pub fn compiled_artifact(
    runtime: &Runtime,
    path: &Path,
    bytes: &[u8],
) -> Result<(String, PathBuf), LoadError> {
    let world = detect_world(path, bytes)?;
    let cache = compile_cache_of(runtime, path, world)?;
    let key = cache.key(bytes);
    let artifact = cache.artifact_path(&key);
    Ok((key, artifact))
}

/// Stores a compiled artifact of component `bytes` that a peer made, when
/// this node's key for `bytes` is `key` (the same engine); returns whether
/// it was stored. The next load of `bytes` deserializes it.
pub fn install_compiled(
    runtime: &Runtime,
    path: &Path,
    bytes: &[u8],
    key: &str,
    artifact: &[u8],
) -> anyhow::Result<bool> {
    let world = detect_world(path, bytes)?;
    let cache = compile_cache_of(runtime, path, world)?;
    if cache.key(bytes) != key {
        return Ok(false);
    }
    cache.install(key, artifact)?;
    Ok(true)
}

/// The compile cache of the engine that runs `world` (creating that engine
/// on first use).
fn compile_cache_of<'r>(
    runtime: &'r Runtime,
    path: &Path,
    world: World,
) -> Result<&'r CompileCache, LoadError> {
    let cache = match world {
        World::ConnHandler | World::HttpService => Ok(&runtime.cache),
        World::ConnEvents => runtime.events().map(|events| &events.cache),
        World::ConnHandlerSync | World::HttpProxy => runtime
            .per_connection()
            .map(|per_connection| &per_connection.cache),
    };
    cache.map_err(|err| LoadError::Invalid {
        path: path.to_owned(),
        reason: format!("{err:#}"),
    })
}

/// The world of component `bytes` (`path` names them in errors), by its
/// export names, before compiling (so it is compiled once, for the engine
/// that will run it); refuses core modules, non-wasm and release candidates.
pub(crate) fn detect_world(path: &Path, bytes: &[u8]) -> Result<World, LoadError> {
    let path = || path.to_owned();
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
            return Err(LoadError::CoreModule { path: path() });
        }
        Some([0, b'a', b's', b'm', ..]) => {}
        _ => return Err(LoadError::NotWasm { path: path() }),
    }
    // A component the parser cannot read goes to the main engine, whose
    // compiler explains.
    Ok(match top_level_exports(bytes) {
        Ok(exports)
            if exports
                .iter()
                .any(|e| e == EVENTS_HANDLER_EXPORT || e == EVENTS_HANDLER_EXPORT_V2) =>
        {
            World::ConnEvents
        }
        Ok(exports)
            if !exports
                .iter()
                .any(|e| e == HANDLER_EXPORT || e == SYNC_HANDLER_EXPORT) =>
        {
            match http::detect(&exports) {
                Detected::Http(HttpWorld::Service, _) => World::HttpService,
                Detected::Http(HttpWorld::Proxy, _) => World::HttpProxy,
                Detected::ReleaseCandidate(export) => {
                    return Err(LoadError::ReleaseCandidate {
                        path: path(),
                        why: http::rc_refusal(&export),
                    });
                }
                Detected::NotHttp => World::ConnHandler,
            }
        }
        Ok(exports) if exports.iter().any(|e| e == SYNC_HANDLER_EXPORT) => {
            if exports.iter().any(|e| e == HANDLER_EXPORT) {
                World::ConnHandler
            } else {
                World::ConnHandlerSync
            }
        }
        _ => World::ConnHandler,
    })
}

/// A component compiled for one engine, checked against its world and
/// linked, before its world's typed pre-instance is made.
struct Linked {
    instance_pre: InstancePre<HostState>,
    cache: CacheOutcome,
    load_time: Duration,
}

impl Linked {
    /// Compiles `bytes` for `engine` through `cache`, checks `world`'s
    /// export and imports, and links it with `linker`: the steps every
    /// world's engine shares.
    fn new(
        (engine, cache, linker): (&Engine, &CompileCache, &Linker<HostState>),
        path: &Path,
        (bytes, key): (&[u8], &str),
        world: World,
    ) -> Result<Self, LoadError> {
        let started = Instant::now();
        let (component, cache) =
            cache
                .load_or_compile_keyed(engine, key, bytes)
                .map_err(|err| LoadError::Invalid {
                    path: path.to_owned(),
                    reason: format!("{err:#}"),
                })?;
        let load_time = started.elapsed();
        check_exports_and_imports(engine, &component, path, world)?;
        let instance_pre =
            linker
                .instantiate_pre(&component)
                .map_err(|err| LoadError::UnsupportedImports {
                    path: path.to_owned(),
                    world: world.name(),
                    imports: format!("{err:#}"),
                })?;
        Ok(Self {
            instance_pre,
            cache,
            load_time,
        })
    }

    /// The loaded component, with its world's pre-instance.
    fn loaded(self, pre: GuestPre, world: World, size: usize) -> LoadedComponent {
        LoadedComponent {
            pre: Arc::new(pre),
            world,
            cache: self.cache,
            size,
            load_time: self.load_time,
        }
    }
}

/// The refusal of a component whose world export has the wrong shape.
fn wrong_export(
    path: &Path,
    export: &'static str,
    wit: &'static str,
    err: wasmtime::Error,
) -> LoadError {
    LoadError::WrongExport {
        path: path.to_owned(),
        export,
        wit,
        reason: format!("{err:#}"),
    }
}

/// Compiles and checks a `conn-handler` or `wasi:http/service` component
/// (or anything that is not recognisably another world, to be refused
/// with the reason) for the main engine.
fn load_shared(
    runtime: &Runtime,
    path: PathBuf,
    bytes: &[u8],
    key: &str,
    world: World,
) -> Result<LoadedComponent, LoadError> {
    let engine = (&runtime.engine, &runtime.cache, &runtime.linker);
    let linked = Linked::new(engine, &path, (bytes, key), world)?;
    let instance_pre = linked.instance_pre.clone();
    let pre = if world == World::HttpService {
        let pre = ServicePre::new(instance_pre).map_err(|err| {
            wrong_export(
                &path,
                "wasi:http/handler@0.3.0",
                "WASI 0.3.0's wasi:http (world wasi:http/service)",
                err,
            )
        })?;
        GuestPre::Http(HttpPre::Service(pre))
    } else {
        let pre = ConnHandlerPre::new(instance_pre)
            .map_err(|err| wrong_export(&path, HANDLER_EXPORT, "wit/gateway.wit", err))?;
        GuestPre::Shared(pre)
    };
    Ok(linked.loaded(pre, world, bytes.len()))
}

/// Compiles and checks a `conn-events` component for the event world's
/// engine.
fn load_events(
    runtime: &Runtime,
    path: PathBuf,
    bytes: &[u8],
    key: &str,
) -> Result<LoadedComponent, LoadError> {
    let world = World::ConnEvents;
    let events = runtime.events().map_err(|err| LoadError::Invalid {
        path: path.clone(),
        reason: format!("{err:#}"),
    })?;
    let engine = (&events.engine, &events.cache, &events.linker);
    let linked = Linked::new(engine, &path, (bytes, key), world)?;
    // Either version of the contract, by the interface it exports.
    let instance_pre = linked.instance_pre.clone();
    let v2 = instance_pre
        .component()
        .get_export_index(None, EVENTS_HANDLER_EXPORT_V2)
        .is_some();
    let pre = if v2 {
        ConnEventsPreV2::new(instance_pre).map(EventsPre::V2)
    } else {
        ConnEventsPre::new(instance_pre).map(EventsPre::V1)
    };
    let (export, wit) = match v2 {
        true => (EVENTS_HANDLER_EXPORT_V2, "wit/events-0.2/conn-events.wit"),
        false => (EVENTS_HANDLER_EXPORT, "wit/events/conn-events.wit"),
    };
    let pre = pre.map_err(|err| wrong_export(&path, export, wit, err))?;
    Ok(linked.loaded(GuestPre::Events(pre), world, bytes.len()))
}

/// Compiles and checks a `conn-handler-sync` or `wasi:http/proxy`
/// component for the per-connection engine.
fn load_per_connection(
    runtime: &Runtime,
    path: PathBuf,
    bytes: &[u8],
    key: &str,
    world: World,
) -> Result<LoadedComponent, LoadError> {
    let per_connection = runtime.per_connection().map_err(|err| LoadError::Invalid {
        path: path.clone(),
        reason: format!("{err:#}"),
    })?;
    let engine = (
        &per_connection.engine,
        &per_connection.cache,
        &per_connection.linker,
    );
    let linked = Linked::new(engine, &path, (bytes, key), world)?;
    let instance_pre = linked.instance_pre.clone();
    let pre = if world == World::HttpProxy {
        let pre = ProxyPre::new(instance_pre).map_err(|err| {
            wrong_export(
                &path,
                "wasi:http/incoming-handler@0.2.x",
                "WASI 0.2's wasi:http (world wasi:http/proxy)",
                err,
            )
        })?;
        GuestPre::Http(HttpPre::Proxy(pre))
    } else {
        let pre = ConnHandlerSyncPre::new(instance_pre).map_err(|err| {
            wrong_export(
                &path,
                SYNC_HANDLER_EXPORT,
                "wit/sync/conn-handler-sync.wit",
                err,
            )
        })?;
        GuestPre::PerConnection(pre)
    };
    Ok(linked.loaded(pre, world, bytes.len()))
}

/// Refuses a compiled component that lacks `world`'s export or imports
/// what the gateway does not provide.
fn check_exports_and_imports(
    engine: &wasmtime::Engine,
    component: &Component,
    path: &Path,
    world: World,
) -> Result<(), LoadError> {
    let ty = component.component_type();
    // An HTTP world was detected by its export already.
    let export = match world {
        World::ConnHandler => Some(HANDLER_EXPORT),
        World::ConnHandlerSync => Some(SYNC_HANDLER_EXPORT),
        // Either version of the contract.
        World::ConnEvents if ty.get_export(engine, EVENTS_HANDLER_EXPORT_V2).is_some() => None,
        World::ConnEvents => Some(EVENTS_HANDLER_EXPORT),
        World::HttpService | World::HttpProxy => None,
    };
    if let Some(export) = export
        && ty.get_export(engine, export).is_none()
    {
        let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
        let exports = if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        };
        return Err(LoadError::MissingExport {
            path: path.to_owned(),
            exports,
        });
    }
    let unsupported: Vec<&str> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !is_provided(name, world))
        .collect();
    if !unsupported.is_empty() {
        return Err(LoadError::UnsupportedImports {
            path: path.to_owned(),
            world: world.name(),
            imports: unsupported.join(", "),
        });
    }
    Ok(())
}

/// The names a component exports at its top level (not those of the
/// modules and components nested in it).
fn top_level_exports(bytes: &[u8]) -> Result<Vec<String>, wasmparser::BinaryReaderError> {
    let mut depth = 0usize;
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload? {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports {
                    names.push(export?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

/// Whether an import name (`wasi:sockets/types@0.3.0`) belongs to a package
/// the linker of `world` provides.
fn is_provided(import: &str, world: World) -> bool {
    let package = import.split('/').next().unwrap_or(import);
    let own = match world {
        World::ConnHandler => PROVIDED_INTERFACES,
        World::ConnHandlerSync => PROVIDED_SYNC_INTERFACES,
        World::ConnEvents => PROVIDED_EVENTS_INTERFACES,
        World::HttpService | World::HttpProxy => &[],
    };
    PROVIDED_PACKAGES.contains(&package)
        || own.contains(&import)
        || (world.is_http() && package == http::HTTP_PACKAGE)
}

#[cfg(test)]
mod tests;
