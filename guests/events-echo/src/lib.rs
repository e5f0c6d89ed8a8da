//! Events echo: the `conn-events` world (wit/events/). Sends every byte a
//! client sends straight back, and shuts down its sending side when the
//! client finishes its own, so a client that half-closes still gets all its
//! bytes and then end of stream.
//!
//! It keeps no state at all: the gateway does the I/O and the flow control
//! (above the send queue's high-water mark it stops reading from the peer
//! until the queue drains), so the `writable`, `opened` and `closed` events
//! need no answer here.

wit_bindgen::generate!({
    path: "../../wit/events",
    world: "sockgate:events/conn-events",
});

use exports::sockgate::events::handler::Guest;
use sockgate::events::types::{Action, Event, Send};

struct Echo;

impl Guest for Echo {
    /// Answers each `received` with a `send` of the same bytes (moved, not
    /// copied) and each `ended` with a `shutdown`.
    fn handle(events: Vec<Event>) -> Vec<Action> {
        let mut actions = Vec::with_capacity(events.len());
        for event in events {
            match event {
                Event::Received(r) => actions.push(Action::Send(Send {
                    conn: r.conn,
                    bytes: r.bytes,
                })),
                Event::Ended(conn) => actions.push(Action::Shutdown(conn)),
                _ => {}
            }
        }
        actions
    }
}

export!(Echo);
