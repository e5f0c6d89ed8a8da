//! Host bindings for the `sockgate:events/conn-events` world, generated
//! from `wit/events/`. The world imports nothing of its own (a guest's
//! WASI 0.2 imports come from wasmtime-wasi); only the `handler` export and
//! its `types` are new here. The generated items are documented in
//! `wit/events/conn-events.wit`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit/events",
    world: "sockgate:events/conn-events",
    exports: { default: async },
    require_store_data_send: true,
});

/// The fully qualified name of the interface an event-world guest exports.
pub(crate) const EVENTS_HANDLER_EXPORT: &str = "sockgate:events/handler@0.1.0";

/// The types-only interface `handler` uses, which guests therefore import.
pub(crate) const EVENTS_TYPES_IMPORT: &str = "sockgate:events/types@0.1.0";

pub(crate) use sockgate::events::types::{
    Action, CloseReason, Closed, ConnInfo as WitConnInfo, ConnectFailed, Connected, Event,
    QuicStream, Received, Transport as WitTransport,
};
