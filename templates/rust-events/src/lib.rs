//! {{name}}: a sockgate guest in the event world. It echoes every byte a
//! client sends, and finishes its sending side when the client finishes
//! its own. Edit `handle` to make it yours.
//!
//! The gateway does every read, write, timer and connect. It calls
//! `handle` with a batch of events (for every connection of this instance
//! that had something happen) and carries out the actions `handle` returns,
//! in order. `handle` must not block: one instance serves every
//! connection, so state kept in ordinary variables (a `thread_local!`) is
//! shared by all of them.
//!
//! Backpressure is the gateway's job: each connection's send queue has a
//! high-water mark (64 KiB). Past it the gateway stops reading from that
//! client until the queue drains, then sends `Event::Writable`; a guest
//! that keeps queueing past the hard cap (1 MiB) has the connection closed.
//! An echo never sends more than it received, so it can ignore `Writable`;
//! a guest that produces data of its own (a file, a stream of updates)
//! should stop at the mark and carry on when `Writable` comes.

wit_bindgen::generate!({
    // sockgate's WIT, copied here by `sockgate new`: the contract with the
    // gateway. Do not edit it; `sockgate new` a fresh project to update.
    path: "wit",
    world: "sockgate:events/conn-events",
});

use exports::sockgate::events::handler::Guest;
use sockgate::events::types::{Action, Event, Send};

struct App;

impl Guest for App {
    /// Called with every event that is ready for this instance, never with
    /// an empty list; returns what the gateway should do.
    fn handle(events: Vec<Event>) -> Vec<Action> {
        let mut actions = Vec::with_capacity(events.len());
        for event in events {
            match event {
                // A client connected: `info` has its id, peer address,
                // transport, server name and ALPN. Nothing to do for an
                // echo (send a greeting here, or set a timer).
                Event::Opened(_info) => {}
                // Bytes from a client (never empty; no message boundaries):
                // send them back. Moving the `Vec` copies nothing.
                Event::Received(r) => actions.push(Action::Send(Send {
                    conn: r.conn,
                    bytes: r.bytes,
                })),
                // The client finished sending: once everything queued is
                // out, it sees end of stream from us too, and the
                // connection closes.
                Event::Ended(conn) => actions.push(Action::Shutdown(conn)),
                // A send queue that passed its high-water mark drained:
                // send more now, if there is more.
                Event::Writable(_conn) => {}
                // A connection is gone (the reason says why): forget
                // whatever was kept for it.
                Event::Closed(_closed) => {}
                // Timers and outbound connections this guest never asks
                // for (`Action::SetTimer`, `Action::Connect`).
                Event::Timer(_) | Event::Connected(_) | Event::ConnectFailed(_) => {}
            }
        }
        actions
    }
}

export!(App);
