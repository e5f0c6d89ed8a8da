//! Host bindings for the `sockgate:gateway/conn-handler` world, generated
//! from `wit/`. The WASI imports map onto wasmtime-wasi's implementations,
//! so only the `handler` export and the `types` interface are new here.
//! The generated items are documented in `wit/gateway.wit`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sockgate:gateway/conn-handler",
    imports: { default: trappable },
    exports: { default: async | store },
    with: {
        "wasi:cli": wasmtime_wasi::p3::bindings::cli,
        "wasi:clocks": wasmtime_wasi::p3::bindings::clocks,
        "wasi:random": wasmtime_wasi::p3::bindings::random,
        "wasi:sockets": wasmtime_wasi::p3::bindings::sockets,
    },
    require_store_data_send: true,
});

/// The fully qualified name of the interface a guest must export.
pub const HANDLER_EXPORT: &str = "sockgate:gateway/handler@0.1.0";

/// The types-only interface guests import along with the handler.
pub const TYPES_IMPORT: &str = "sockgate:gateway/types@0.1.0";
/// The interface answering `connection.info`.
pub const CONNECTION_IMPORT: &str = "sockgate:gateway/connection@0.1.0";
