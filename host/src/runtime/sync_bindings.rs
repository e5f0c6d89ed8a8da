//! Host bindings for the WASI 0.2 compatibility world
//! `sockgate:gateway/conn-handler-sync`, generated from `wit/sync/`. Every
//! import is wasmtime-wasi's WASI 0.2 implementation; only the
//! `sync-handler` export and its `sync-types` are new here. The generated
//! items are documented in `wit/sync/conn-handler-sync.wit`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit/sync",
    world: "sockgate:gateway/conn-handler-sync",
    imports: { default: trappable },
    exports: { default: async },
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:cli": wasmtime_wasi::p2::bindings::cli,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:sockets": wasmtime_wasi::p2::bindings::sockets,
    },
    require_store_data_send: true,
});

/// The fully qualified name of the interface a `conn-handler-sync` guest
/// exports.
pub(crate) const SYNC_HANDLER_EXPORT: &str = "sockgate:gateway/sync-handler@0.1.0";

/// The types-only interface `sync-handler` uses, which guests therefore
/// import.
pub(crate) const SYNC_TYPES_IMPORT: &str = "sockgate:gateway/sync-types@0.1.0";
