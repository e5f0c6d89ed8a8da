//! The `conn-events` world (wit/events/conn-events.wit): a guest that is a
//! state machine without I/O, called once per batch of socket events.
//!
//! - [`bindings`]: the host side of the WIT world.
//! - [`driver`]: one instance's event loop — gathering a batch, calling
//!   the guest, carrying out its actions.
//! - [`conn`]: one connection's state: its send queue, backpressure and
//!   the flags that decide whether the gateway reads from it.
//! - [`ready`]: which connections woke since the last turn.
//! - [`timers`]: the guest's timers, behind one sleep.
//! - [`outbound`]: outbound connects, checked against the app's policy.
//! - [`instance`]: creating, supervising and disposing of an instance.

pub(crate) mod bindings;
pub(crate) mod conn;
pub(crate) mod driver;
pub(crate) mod instance;
pub(crate) mod outbound;
pub(crate) mod ready;
pub(crate) mod timers;

pub(crate) use bindings::ConnEventsPre;
pub use instance::run_events_instance;
