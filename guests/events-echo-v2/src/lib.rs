//! Events echo on version 0.2.0 of the event world (wit/events-0.2/): the
//! bytes of a batch come in one buffer. Sends every byte a client sends
//! straight back, and shuts down its sending side when the client finishes
//! its own, as `events-echo` does on 0.1.0.
//!
//! The reply's data is the batch's data, returned as it came: each
//! `received` of `len` bytes becomes a `send` of `len` bytes, in the same
//! order, so the sends take their bytes from the buffer exactly where the
//! events left them. Not a byte is copied in the guest.

wit_bindgen::generate!({
    path: "../../wit/events-0.2",
    world: "sockgate:events/conn-events@0.2.0",
});

use exports::sockgate::events::handler::Guest;
use sockgate::events::types::{Action, Batch, Event, Reply, Send};

struct Echo;

impl Guest for Echo {
    /// Answers each `received` with a `send` of the same length and each
    /// `ended` with a `shutdown`, and hands the data back.
    fn handle(batch: Batch) -> Reply {
        let mut actions = Vec::with_capacity(batch.events.len());
        for event in batch.events {
            match event {
                Event::Received(r) => actions.push(Action::Send(Send {
                    conn: r.conn,
                    len: r.len,
                })),
                Event::Ended(conn) => actions.push(Action::Shutdown(conn)),
                _ => {}
            }
        }
        Reply {
            actions,
            data: batch.data,
        }
    }
}

export!(Echo);
