//! Every bound a guest or a client is held to, with the threat each one
//! bounds: the index. Apps set theirs in their `[app.limits]` table
//! ([`app::AppLimits`]); the gateway-wide ones live in `[gateway]`
//! ([`gateway::GatewayLimits`]); the most a deploy may ask for is the
//! operator's `[ceilings]` table ([`gateway::Ceilings`]); nothing goes
//! beyond the hard maxima ([`app`]'s `HARD_MAX_*` and `MAX_*`). HTTP apps'
//! bounds are in [`http`].
//!
//! # Bounds set in code, not in the configuration
//!
//! Each is a constant beside the code that enforces it (the file named,
//! under `host/src`), with its threat in its doc comment; this table is
//! the one place to find them all. A new fixed bound gets a row here.
//!
//! ## Clients
//!
//! | bound | value | threat | where |
//! |---|---|---|---|
//! | pending TLS handshakes (`MAX_PENDING_HANDSHAKES`, `PENDING_HANDSHAKES_PER_CLIENT`) | 4096, 64 per client | clients that connect and stall (or flood) holding every handshake slot, so TLS is down for everyone | `listen/tls.rs` |
//! | pending QUIC handshakes (`MAX_PENDING_HANDSHAKES`) | 4096 | the same over QUIC; beyond it new clients are ignored | `listen/quic/mod.rs` |
//! | QUIC ClientHello waited for (`MAX_CLIENT_HELLO`) | 16 KiB | a client making the gateway buffer an endless ClientHello | `listen/quic/client_hello.rs` |
//! | QUIC receive window before routing (`INITIAL_RECEIVE_WINDOW`) | 64 KiB | data sent before the app (and its `quic_receive_window_kb`) is known | `listen/quic/mod.rs` |
//! | QUIC send window (`SEND_WINDOW`) | 1 MiB | a client that stops reading while a guest writes, keeping the gateway's memory | `listen/quic/mod.rs` |
//! | first byte of a TLS or plain-HTTP connection (`FIRST_BYTE_TIMEOUT`) | 3 s | idle connections holding handshake slots | `listen/accept.rs` |
//! | plain-HTTP (port 80) connections (`MAX_CONNECTIONS`, `CONNECTIONS_PER_CLIENT`) | 4096, 64 per client | one client holding every slot, blocking ACME HTTP-01 for every app | `listen/http.rs` |
//! | plain-HTTP request head (`MAX_REQUEST_HEAD`, `REQUEST_TIMEOUT`, `MAX_HEADERS`) | 8 KiB in 10 s, 64 headers | slowloris on port 80 | `listen/http.rs` |
//! | HTTP/1.1 request head of an HTTP app (`HEADER_READ_TIMEOUT`) | 10 s | slowloris on an HTTP app | `limits/http.rs` |
//! | HTTP/2 resets (`MAX_PENDING_RESETS`, `MAX_LOCAL_RESETS`) | 20 pending, 1024 local | "rapid reset": requests opened and cancelled at once | `limits/http.rs` |
//! | admin connections (`MAX_CONNECTIONS`, `CONNECTIONS_PER_CLIENT`) | 256, 32 per client | connection floods on the admin API | `admin/mod.rs` |
//! | admin request head, login body (`MAX_REQUEST_HEAD`, `HEADER_READ_TIMEOUT`, `MAX_LOGIN_BODY`) | 64 KiB in 10 s, 4 KiB | half-sent requests holding memory | `admin/mod.rs` |
//! | admin upload (`MAX_COMPONENT_BYTES`, `UPLOAD_TIMEOUT`) | 64 MiB in 5 minutes | an upload filling memory, or a slow one holding a deploy | `gateway/mod.rs`, `admin/api.rs` |
//! | dashboard sessions (`MAX_SESSIONS`, `LIFETIME`, `IDLE_TIMEOUT`) | 64, 12 h, 1 h idle | a stolen or forgotten session | `admin/session.rs` |
//!
//! ## Guests
//!
//! | bound | value | threat | where |
//! |---|---|---|---|
//! | store limiter (`GuestLimiter`: `MAX_TABLE_ELEMENTS`, `MAX_INSTANCES`, `MAX_TABLES`, `MAX_MEMORIES`) | 2^20 table elements, 100 core instances, 100 tables, 100 memories per store | a guest creating tables, instances or memories without bound, outside `memory_limit_mb` | `runtime/supervisor.rs` |
//! | WASI resource table (`WASI_TABLE_BASE`, `WASI_TABLE_PER_SOCKET`) | 1024 + 8 per outbound socket | resources (pollables, streams, sockets) created in a loop, held in host memory | `runtime/host_state.rs` |
//! | component-model table and guest handles (`CONCURRENT_TABLE_BASE`, `CONCURRENT_TABLE_PER_CONNECTION`, `DEFAULT_COMPONENT_HANDLES`) | 4096 + 16 per connection (at most 1,000,000), handles at most 100,000 | streams and futures created in a loop (`stream.new` needs no host call) | `runtime/host_state.rs` |
//! | per-connection pool slot (`TABLE_ELEMENTS`, `INSTANCE_METADATA_BYTES`, `CORE_INSTANCES_PER_COMPONENT`, `MEMORIES_PER_COMPONENT`, `TABLES_PER_COMPONENT`) | 100,000 elements, 4 MiB, 16, 2, 4 | every slot of the pool reserves address space for the largest | `runtime/engine.rs` |
//! | per-connection instances over all apps (`PER_CONNECTION_POOL`) | 1000 | each slot reserves address space and a fiber stack | `limits/gateway.rs` |
//! | name lookups over all apps (`GATEWAY_LOOKUPS`) | 32 | lookups filling the blocking pool deploys need | `limits/gateway.rs` |
//! | one name lookup (`LOOKUP_TIMEOUT`, `MAX_NAME`) | 5 s, 253 bytes | a slow resolver or a busy cap holding a guest's call | `runtime/name_lookup.rs` |
//! | addresses remembered from lookups (`RESOLVED_KEPT`) | 1024 | a guest resolving many names to grow the gateway's memory | `tenant/outbound.rs` |
//! | descriptors kept from guests (`RESERVED_DESCRIPTORS`) | 256, and guests get half of the process's limit | guests' sockets taking the descriptors listeners and the admin API need | `tenant/guest_budget.rs` |
//! | guest output line (`MAX_LOG_LINE`) | 8 KiB | a guest printing without newlines growing host memory | `runtime/host_state.rs` |
//! | log lines and events kept per app (`LOG_LINES_KEPT`, `EVENTS_KEPT`) | 1000, 200 | a chatty guest, or a flood of refusals, growing memory | `tenant/logs.rs` |
//! | events traced per app (`TRACED_EVENTS_PER_SECOND`) | 20 per second | a flood of events drowning the gateway's own log | `tenant/logs.rs` |
//! | trap explanation (`MAX_TRAP_TEXT`) | 4 KiB | enormous function names or deep stacks making every trap event as large as the guest likes | `runtime/trap.rs` |
//! | `conn-handler-sync` buffers (`READ_CHUNK`, `WRITE_BUDGET`) | 16 KiB read, 64 KiB written ahead | the gateway's buffer per connection | `runtime/sync_streams.rs` |
//! | finishing a connection (`FINISH_TIMEOUT`, `SHUTDOWN_TIMEOUT`) | 30 s (`conn-handler-sync`), 10 s (`close_notify`) | a client that stopped reading pinning the connection | `runtime/sync_streams.rs`, `runtime/pump.rs` |
//! | calls past their deadline in one WASI 0.3 instance (`MAX_LINGERING_CALLS`) | 64, then the instance is replaced | a guest that never answers some requests piling their tasks up in one store | `runtime/http/service_instance.rs` |
//! | requests held by one WASI 0.3 store (`MAX_REQUESTS_IN_STORE`) | 1024 (or `max_connections_per_instance` if lower) | the ends of earlier requests piling up in the store's table until the instance traps | `runtime/http/service_instance.rs` |
//! | unread response body drained (`DRAIN_LIMIT`) | 10 s | a body nobody reads holding its request's place in the instance | `runtime/http/bodies.rs` |
//! | event-world send queue (`SEND_HIGH_WATER`, `SEND_HARD_CAP`) | 64 KiB (reading from the client pauses), 1 MiB (the connection is closed) | a client that sends without reading, or a guest that ignores backpressure, making the gateway hold the replies | `runtime/events/conn.rs` |
//! | event-world batch (`MAX_BATCH_EVENTS`, `MAX_BATCH_BYTES`) | 256 events, 256 KiB per call | a batch so large that lowering it takes the guest's memory or one call runs long | `runtime/events/driver.rs` |
//! | event-world timers (`MAX_TIMERS`) | 65,536 pending per instance | a guest setting timers in a loop to grow the gateway's memory | `runtime/events/timers.rs` |
//! | event-world outbound connect (`CONNECT_TIMEOUT`) | 10 s | an address that never answers holding a socket lease | `runtime/events/outbound.rs` |
//! | versions kept per app (`VERSIONS_KEPT`) | 10 | deploys growing the state directory without end | `state/mod.rs` |
//!
//! Defaults a guest may change, not bounds: the outbound HTTP timeouts
//! (`CONNECT_TIMEOUT`, `FIRST_BYTE_TIMEOUT`, `BETWEEN_BYTES_TIMEOUT` in
//! `runtime/http/outbound.rs`); defaults an operator may change: the drain
//! of a replaced version (`DEFAULT_DRAIN`, `runtime/instance.rs`).

pub mod app;
pub mod gateway;
pub mod http;
#[cfg(test)]
mod tests;

pub use app::{
    AppLimits, Ceilings, HARD_MAX_ALPN, HARD_MAX_BUDGET_MS, HARD_MAX_CONNECTIONS, HARD_MAX_DOMAINS,
    HARD_MAX_INSTANCES, HARD_MAX_MEMORY_MB, HARD_MAX_OUTBOUND_RULES, HARD_MAX_SECS,
    MAX_CONCURRENT_LOOKUPS, MAX_LOG_LINES_PER_SECOND, MAX_OUTBOUND_SOCKETS,
    MAX_QUIC_RECEIVE_WINDOW_KB, MAX_QUIC_STREAMS_PER_CONNECTION, MAX_SYNC_INSTANCES,
};
pub use gateway::{GATEWAY_LOOKUPS, GatewayLimits, PER_CONNECTION_POOL};
pub use http::HttpLimits;
