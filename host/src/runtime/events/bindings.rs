//! Host bindings for the `sockgate:events/conn-events` world, generated
//! from `wit/events/`. The world imports nothing of its own (a guest's
//! WASI 0.2 imports come from wasmtime-wasi); only the `handler` export and
//! its `types` are new here. The generated items are documented in
//! `wit/events/conn-events.wit`.
#![allow(missing_docs)]

use crate::base::conn::{ConnInfo, Transport, socket_addr_text};

wasmtime::component::bindgen!({
    path: "../wit/events",
    world: "sockgate:events/conn-events",
    exports: { default: async },
    require_store_data_send: true,
});

/// The guest's `handler` export, as the driver calls it.
pub(crate) use exports::sockgate::events::handler::Guest as Handler;

/// The fully qualified name of the interface an event-world guest exports.
pub(crate) const EVENTS_HANDLER_EXPORT: &str = "sockgate:events/handler@0.1.0";

/// The types-only interface `handler` uses, which guests therefore import.
pub(crate) const EVENTS_TYPES_IMPORT: &str = "sockgate:events/types@0.1.0";

pub(crate) use sockgate::events::types::{
    Action, CloseReason, Closed, ConnInfo as WitConnInfo, Connect as WitConnect, ConnectFailed,
    Connected, Event, QuicStream, Received, Timer as WitTimer, Transport as WitTransport,
};

/// The connection an event is about, if one is: `opened` and
/// `connected` too (a guest that guessed the id of a connection it has
/// not heard of yet may close it).
pub(crate) fn event_conn(event: &Event) -> Option<u64> {
    match event {
        Event::Opened(info) => Some(info.id),
        Event::Received(received) => Some(received.conn),
        Event::Ended(id) | Event::Writable(id) => Some(*id),
        Event::Closed(closed) => Some(closed.conn),
        Event::Connected(connected) => Some(connected.info.id),
        Event::Timer(_) | Event::ConnectFailed(_) => None,
    }
}

/// The bytes a `received` event carries (0 for the others).
pub(crate) fn received_bytes(event: &Event) -> usize {
    match event {
        Event::Received(received) => received.bytes.len(),
        _ => 0,
    }
}

/// The WIT record of a client connection's info.
pub(crate) fn wit_info(info: &ConnInfo) -> WitConnInfo {
    WitConnInfo {
        id: info.id,
        transport: match info.transport {
            Transport::Tcp => WitTransport::Tcp,
            Transport::Tls => WitTransport::Tls,
            Transport::Quic => WitTransport::Quic,
        },
        peer: socket_addr_text(info.peer),
        local: socket_addr_text(info.local),
        server_name: info.server_name.as_deref().map(str::to_owned),
        alpn: info.alpn.as_deref().map(str::to_owned),
        quic: info.quic.map(|q| QuicStream {
            connection_id: q.connection_id,
            stream_id: q.stream_id,
        }),
    }
}
