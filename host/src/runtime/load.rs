//! Loading a component file: read it, make sure it is a component, compile
//! it (through the cache), and check that it implements `conn-handler` with
//! imports the gateway can satisfy. Each refusal says what was wrong and
//! what to do, in the user's terms rather than wasmtime's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;
use wasmtime::component::Component;

use super::Runtime;
use super::bindings::{CONNECTION_IMPORT, ConnHandlerPre, HANDLER_EXPORT, TYPES_IMPORT};
use super::cache::CacheOutcome;
use super::host_state::HostState;

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

/// Why a component was refused.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not WebAssembly at all.
    #[error(
        "{path} is not a WebAssembly file (it does not start with the `\\0asm` magic): \
         point the app at the `.wasm` component your guest build produced"
    )]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    /// A core module where a component was expected.
    #[error(
        "{path} is a core WebAssembly module, not a component: build the guest for \
         `wasm32-wasip2` (not wasm32-wasip1 or wasm32-unknown-unknown), or wrap the module \
         with `wasm-tools component new`"
    )]
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// wasmtime rejected the component (malformed, or uses unsupported
    /// features).
    #[error("{path} is not a valid component: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// wasmtime's explanation.
        reason: String,
    },
    /// The component does not export the handler interface.
    #[error(
        "{path} does not implement the `conn-handler` world: it does not export \
         `{HANDLER_EXPORT}` (it exports: {exports}); implement `handler.handle` from the \
         gateway's wit/gateway.wit"
    )]
    MissingExport {
        /// The file.
        path: PathBuf,
        /// What it exports instead, comma-separated.
        exports: String,
    },
    /// The handler export exists but has the wrong shape.
    #[error(
        "{path} exports `{HANDLER_EXPORT}` with the wrong type ({reason}); regenerate the \
         guest's bindings from the gateway's wit/gateway.wit"
    )]
    WrongExport {
        /// The file.
        path: PathBuf,
        /// The mismatch, as wasmtime found it.
        reason: String,
    },
    /// The component imports interfaces the gateway does not provide.
    #[error(
        "{path} imports interfaces the gateway does not provide: {imports}; a guest may \
         import only what the `conn-handler` world lists (wasi:sockets, wasi:clocks, \
         wasi:random, wasi:cli stdout/stderr) and the WASI 0.2 interfaces of its toolchain"
    )]
    UnsupportedImports {
        /// The file.
        path: PathBuf,
        /// The unsupported imports, comma-separated.
        imports: String,
    },
}

/// A component ready to instantiate.
pub struct LoadedComponent {
    /// The compiled component.
    pub component: Component,
    /// Pre-linked and type-checked against `conn-handler`.
    pub pre: ConnHandlerPre<HostState>,
    /// Whether it came from the compile cache.
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
    let path = path.to_owned();
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => return Err(LoadError::CoreModule { path }),
        Some([0, b'a', b's', b'm', ..]) => {}
        _ => return Err(LoadError::NotWasm { path }),
    }

    let started = Instant::now();
    let (component, cache) = runtime
        .cache
        .load_or_compile(&runtime.engine, bytes)
        .map_err(|err| LoadError::Invalid {
            path: path.clone(),
            reason: format!("{err:#}"),
        })?;
    let load_time = started.elapsed();

    let ty = component.component_type();
    let engine = &runtime.engine;
    if ty.get_export(engine, HANDLER_EXPORT).is_none() {
        let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
        let exports = if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        };
        return Err(LoadError::MissingExport { path, exports });
    }
    let unsupported: Vec<&str> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !is_provided(name))
        .collect();
    if !unsupported.is_empty() {
        return Err(LoadError::UnsupportedImports {
            path,
            imports: unsupported.join(", "),
        });
    }
    let instance_pre = runtime.linker.instantiate_pre(&component).map_err(|err| {
        LoadError::UnsupportedImports {
            path: path.clone(),
            imports: format!("{err:#}"),
        }
    })?;
    let pre = ConnHandlerPre::new(instance_pre).map_err(|err| LoadError::WrongExport {
        path: path.clone(),
        reason: format!("{err:#}"),
    })?;
    Ok(LoadedComponent {
        component,
        pre,
        cache,
        size: bytes.len(),
        load_time,
    })
}

/// Whether an import name (`wasi:sockets/types@0.3.0`) belongs to a package
/// the linker provides.
fn is_provided(import: &str) -> bool {
    let package = import.split('/').next().unwrap_or(import);
    PROVIDED_PACKAGES.contains(&package) || PROVIDED_INTERFACES.contains(&import)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provided_packages_are_recognised() {
        assert!(is_provided("wasi:sockets/types@0.3.0"));
        assert!(is_provided("wasi:io/streams@0.2.6"));
        assert!(!is_provided("wasi:http/types@0.3.0"));
        assert!(!is_provided("acme:db/query"));
        assert!(is_provided("sockgate:gateway/types@0.1.0"));
        assert!(!is_provided("sockgate:gateway/admin@0.1.0"));
    }
}
