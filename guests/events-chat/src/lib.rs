//! Events chat: the chat room of `guests/chat` in the `conn-events` world
//! (wit/events/), with the same wire protocol. Every line a client sends
//! goes to every other client in the room (not back to the sender),
//! prefixed with the sender's address; a client that joins is greeted with
//! `* welcome <address>, <n> in the room`. One instance serves every
//! client, so the room is ordinary instance state.
//!
//! A client that does not read is not buffered for here: the gateway queues
//! what is sent to it and closes it once its queue passes the hard cap,
//! which the room then reports as the client leaving.

wit_bindgen::generate!({
    path: "../../wit/events",
    world: "sockgate:events/conn-events",
});

use std::cell::RefCell;
use std::collections::BTreeMap;

use exports::sockgate::events::handler::Guest;
use sockgate::events::types::{Action, CloseReason, Event, Send};

/// Longest line accepted; longer input is cut into pieces of this size so
/// a client without newlines cannot grow the instance's memory.
const MAX_LINE: usize = 4096;

/// A client in the room.
struct Member {
    /// The client's address, which prefixes its lines.
    peer: String,
    /// Bytes received after the last complete line.
    pending: Vec<u8>,
}

thread_local! {
    /// Connection id → client, for every client in the room.
    static ROOM: RefCell<BTreeMap<u64, Member>> = const { RefCell::new(BTreeMap::new()) };
}

/// Queues `line` for every client in `room` except `from`.
fn broadcast(room: &BTreeMap<u64, Member>, from: u64, line: &[u8], actions: &mut Vec<Action>) {
    for &conn in room.keys().filter(|&&id| id != from) {
        actions.push(Action::Send(Send {
            conn,
            bytes: line.to_vec(),
        }));
    }
}

/// Broadcasts `piece` (a line, or a piece of an overlong one, without its
/// `\n`) from `from`, prefixed with its address `peer`.
fn say(
    room: &BTreeMap<u64, Member>,
    from: u64,
    peer: &str,
    piece: &[u8],
    actions: &mut Vec<Action>,
) {
    let mut line = Vec::with_capacity(peer.len() + 2 + piece.len() + 1);
    line.extend_from_slice(peer.as_bytes());
    line.extend_from_slice(b": ");
    line.extend_from_slice(piece);
    line.push(b'\n');
    broadcast(room, from, &line, actions);
}

/// A client joined: greet it and put it in the room.
fn join(room: &mut BTreeMap<u64, Member>, conn: u64, peer: String, actions: &mut Vec<Action>) {
    let online = room.len() + 1;
    // The welcome line also tells the client it is in the room now.
    actions.push(Action::Send(Send {
        conn,
        bytes: format!("* welcome {peer}, {online} in the room\n").into_bytes(),
    }));
    println!("{peer}: joined (connection {conn})");
    room.insert(
        conn,
        Member {
            peer,
            pending: Vec::new(),
        },
    );
}

/// A client sent `bytes`: broadcast every line they complete.
fn receive(room: &mut BTreeMap<u64, Member>, conn: u64, bytes: Vec<u8>, actions: &mut Vec<Action>) {
    // Taken out of the room while its lines go to the others.
    let Some(mut member) = room.remove(&conn) else {
        return;
    };
    let mut pending = std::mem::take(&mut member.pending);
    if pending.is_empty() {
        pending = bytes;
    } else {
        pending.extend_from_slice(&bytes);
    }
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        if let Some(end) = rest.iter().position(|&b| b == b'\n') {
            say(room, conn, &member.peer, &rest[..end], actions);
            start += end + 1;
        } else if rest.len() >= MAX_LINE {
            say(room, conn, &member.peer, &rest[..MAX_LINE], actions);
            start += MAX_LINE;
        } else {
            break;
        }
    }
    pending.drain(..start);
    member.pending = pending;
    room.insert(conn, member);
}

/// A client left: take it out of the room, and if its bytes stopped early
/// (a QUIC stream reset, a lost connection, a limit) tell the others, since
/// it may have been cut off mid-line.
fn leave(
    room: &mut BTreeMap<u64, Member>,
    conn: u64,
    reason: Option<CloseReason>,
    actions: &mut Vec<Action>,
) {
    let Some(member) = room.remove(&conn) else {
        return;
    };
    let peer = member.peer;
    let why = match reason {
        None | Some(CloseReason::Done) => None,
        Some(CloseReason::Reset(code)) => Some(format!("stream reset, code {code}")),
        Some(CloseReason::Aborted(what) | CloseReason::Limit(what)) => Some(what),
    };
    match why {
        Some(why) => {
            broadcast(
                room,
                conn,
                format!("* {peer} left: {why}\n").as_bytes(),
                actions,
            );
            println!("{peer}: left: {why}");
        }
        None => println!("{peer}: left"),
    }
}

struct Chat;

impl Guest for Chat {
    /// Runs each event against the room and returns the lines to send.
    fn handle(events: Vec<Event>) -> Vec<Action> {
        let mut actions = Vec::new();
        ROOM.with(|room| {
            let room = &mut *room.borrow_mut();
            for event in events {
                match event {
                    Event::Opened(info) => join(room, info.id, info.peer, &mut actions),
                    Event::Received(r) => receive(room, r.conn, r.bytes, &mut actions),
                    // The client finished sending: it leaves (a partial
                    // last line is dropped), and our side finishes too.
                    Event::Ended(conn) => {
                        leave(room, conn, None, &mut actions);
                        actions.push(Action::Shutdown(conn));
                    }
                    Event::Closed(c) => leave(room, c.conn, Some(c.reason), &mut actions),
                    _ => {}
                }
            }
        });
        actions
    }
}

export!(Chat);
