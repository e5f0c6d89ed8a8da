//! Why a component was refused ([`LoadError`]): each variant says what was
//! wrong and what to do, in the user's terms rather than wasmtime's.

use std::path::PathBuf;

use thiserror::Error;

use super::bindings::HANDLER_EXPORT;
use super::events::bindings::EVENTS_HANDLER_EXPORT;
use super::sync_bindings::SYNC_HANDLER_EXPORT;

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
    /// The component exports neither world's handler interface.
    #[error(
        "{path} implements no sockgate world: it exports none of `{HANDLER_EXPORT}` \
         (world `conn-handler`, wit/gateway.wit), `{SYNC_HANDLER_EXPORT}` (world \
         `conn-handler-sync`, wit/sync/conn-handler-sync.wit) and `{EVENTS_HANDLER_EXPORT}` \
         (world `conn-events`, wit/events/conn-events.wit) (it exports: {exports}); \
         implement `handler.handle` from the gateway's wit/gateway.wit, \
         `sync-handler.handle` for WASI 0.2 toolchains, or the event world's \
         `handler.handle`; an HTTP app exports \
         `wasi:http/handler@0.3.x` (world `wasi:http/service`) or \
         `wasi:http/incoming-handler@0.2.x` (world `wasi:http/proxy`)"
    )]
    MissingExport {
        /// The file.
        path: PathBuf,
        /// What it exports instead, comma-separated.
        exports: String,
    },
    /// A `wasi:http` component built against a release candidate of WASI
    /// 0.3, which does not link with the final version.
    #[error("{path}: {why}")]
    ReleaseCandidate {
        /// The file.
        path: PathBuf,
        /// The version found and the toolchains that build 0.3.0
        /// ([`crate::runtime::http::rc_refusal`]).
        why: String,
    },
    /// The handler export exists but has the wrong shape.
    #[error(
        "{path} exports `{export}` with the wrong type ({reason}); regenerate the \
         guest's bindings from the gateway's {wit}"
    )]
    WrongExport {
        /// The file.
        path: PathBuf,
        /// The export.
        export: &'static str,
        /// The WIT the guest should be built from.
        wit: &'static str,
        /// The mismatch, as wasmtime found it.
        reason: String,
    },
    /// The component imports interfaces the gateway does not provide.
    #[error(
        "{path} imports interfaces the gateway does not provide: {imports}; a guest may \
         import only what the `{world}` world lists (wasi:sockets, wasi:clocks, \
         wasi:random, wasi:cli stdout/stderr, and wasi:http for HTTP apps) and the WASI 0.2 \
         interfaces of its toolchain"
    )]
    UnsupportedImports {
        /// The file.
        path: PathBuf,
        /// The world the component implements.
        world: &'static str,
        /// The unsupported imports, comma-separated.
        imports: String,
    },
}
