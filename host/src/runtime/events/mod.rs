//! The `conn-events` world (wit/events/conn-events.wit): a guest that is a
//! state machine without I/O, called once per batch of socket events.
//!
//! - [`bindings`]: the host side of the WIT world, version 0.1.0;
//!   [`bindings_v2`]: version 0.2.0 (a batch's bytes in one buffer), and
//!   its conversions; [`contract`]: which of the two a guest speaks.
//! - [`driver`]: one instance's event loop — gathering a batch, calling
//!   the guest, carrying out its actions.
//! - [`conn`]: one connection's state: its send queue, backpressure and
//!   the flags that decide whether the gateway reads from it.
//! - [`ready`]: which connections woke since the last turn.
//! - [`spare`]: `received` buffers kept from batch to batch.
//! - [`timers`]: the guest's timers, behind one sleep.
//! - [`outbound`]: outbound connects, checked against the app's policy.
//! - [`instance`]: creating, supervising and disposing of an instance.

pub(crate) mod bindings;
pub(crate) mod bindings_v2;
pub(crate) mod conn;
pub(crate) mod contract;
pub(crate) mod driver;
pub(crate) mod instance;
pub(crate) mod outbound;
pub(crate) mod ready;
pub(crate) mod spare;
pub(crate) mod timers;

pub use instance::run_events_instance;
