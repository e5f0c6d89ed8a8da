//! Host bindings for version 0.2.0 of the event world
//! (`wit/events-0.2/`), where the bytes of a batch travel in one buffer,
//! and the two conversions between it and the driver, which gathers and
//! carries out 0.1.0's events and actions for both versions: [`pack`] lays
//! a batch out as 0.2.0 has it, [`unpack`] goes through a reply's actions
//! with each send's bytes borrowed from its data. The generated items are documented in
//! `wit/events-0.2/conn-events.wit`.
#![allow(missing_docs)]

use super::bindings as v1;

wasmtime::component::bindgen!({
    path: "../wit/events-0.2",
    world: "sockgate:events/conn-events@0.2.0",
    exports: { default: async },
    require_store_data_send: true,
});

/// The fully qualified name of the interface a 0.2.0 guest exports.
pub(crate) const EVENTS_HANDLER_EXPORT_V2: &str = "sockgate:events/handler@0.2.0";

/// The types-only interface its `handler` uses, which guests import.
pub(crate) const EVENTS_TYPES_IMPORT_V2: &str = "sockgate:events/types@0.2.0";

/// The guest's `handler` export, as the driver calls it.
pub(crate) use exports::sockgate::events::handler::Guest as HandlerV2;

use self::sockgate::events::types as v2;
pub(crate) use v2::{Batch, Reply};

/// Moves the driver's `events` (emptied) into `into`, whose buffers are
/// reused from call to call: each `received` event's bytes go to the end of
/// `into.data`, and the event keeps only their length; the buffer they
/// came in goes to `spent`.
pub(crate) fn pack(events: &mut Vec<v1::Event>, into: &mut Batch, mut spent: impl FnMut(Vec<u8>)) {
    into.events.clear();
    into.data.clear();
    into.events.reserve(events.len());
    for event in events.drain(..) {
        let packed = match event {
            v1::Event::Received(received) => {
                into.data.extend_from_slice(&received.bytes);
                // A turn reads at most `MAX_TURN_BYTES` per event.
                let len = u32::try_from(received.bytes.len()).unwrap_or(u32::MAX);
                spent(received.bytes);
                v2::Event::Received(v2::Received {
                    conn: received.conn,
                    len,
                })
            }
            v1::Event::Opened(info) => v2::Event::Opened(conn_info(info)),
            v1::Event::Ended(id) => v2::Event::Ended(id),
            v1::Event::Writable(id) => v2::Event::Writable(id),
            v1::Event::Closed(closed) => v2::Event::Closed(v2::Closed {
                conn: closed.conn,
                reason: close_reason(closed.reason),
            }),
            v1::Event::Timer(token) => v2::Event::Timer(token),
            v1::Event::Connected(connected) => v2::Event::Connected(v2::Connected {
                token: connected.token,
                info: conn_info(connected.info),
            }),
            v1::Event::ConnectFailed(failed) => v2::Event::ConnectFailed(v2::ConnectFailed {
                token: failed.token,
                reason: failed.reason,
            }),
        };
        into.events.push(packed);
    }
}

/// One action of a 0.2.0 reply, as the driver carries it out.
pub(crate) enum Unpacked<'a> {
    /// A send, its bytes borrowed from the reply's data.
    Send { conn: u64, bytes: &'a [u8] },
    /// Any other action, as 0.1.0 has it.
    Other(v1::Action),
}

/// Gives `each` the actions of a guest's `reply` in order, each `send` with
/// its bytes taken from the reply's data in order. A guest whose sends add
/// up to more than its data holds is wrong; the sends past the end carry
/// what is left (none at all, past the last byte), which the driver
/// ignores as empty.
pub(crate) fn unpack(reply: Reply, mut each: impl FnMut(Unpacked<'_>)) {
    let Reply { actions, data } = reply;
    let mut taken = 0usize;
    for action in actions {
        each(match action {
            v2::Action::Send(send) => {
                let start = taken;
                let len = usize::try_from(send.len).unwrap_or(usize::MAX);
                taken = start.saturating_add(len).min(data.len());
                Unpacked::Send {
                    conn: send.conn,
                    bytes: &data[start..taken],
                }
            }
            v2::Action::Shutdown(id) => Unpacked::Other(v1::Action::Shutdown(id)),
            v2::Action::Close(id) => Unpacked::Other(v1::Action::Close(id)),
            v2::Action::Pause(id) => Unpacked::Other(v1::Action::Pause(id)),
            v2::Action::Resume(id) => Unpacked::Other(v1::Action::Resume(id)),
            v2::Action::SetTimer(timer) => Unpacked::Other(v1::Action::SetTimer(v1::WitTimer {
                token: timer.token,
                after_ms: timer.after_ms,
            })),
            v2::Action::CancelTimer(token) => Unpacked::Other(v1::Action::CancelTimer(token)),
            v2::Action::Connect(connect) => Unpacked::Other(v1::Action::Connect(v1::WitConnect {
                token: connect.token,
                host: connect.host,
                port: connect.port,
            })),
        });
    }
}

/// An empty batch, whose buffers [`pack`] fills.
pub(crate) fn empty_batch() -> Batch {
    Batch {
        events: Vec::new(),
        data: Vec::new(),
    }
}

fn conn_info(info: v1::WitConnInfo) -> v2::ConnInfo {
    v2::ConnInfo {
        id: info.id,
        transport: match info.transport {
            v1::WitTransport::Tcp => v2::Transport::Tcp,
            v1::WitTransport::Tls => v2::Transport::Tls,
            v1::WitTransport::Quic => v2::Transport::Quic,
            v1::WitTransport::Outbound => v2::Transport::Outbound,
        },
        peer: info.peer,
        local: info.local,
        server_name: info.server_name,
        alpn: info.alpn,
        quic: info.quic.map(|quic| v2::QuicStream {
            connection_id: quic.connection_id,
            stream_id: quic.stream_id,
        }),
    }
}

fn close_reason(reason: v1::CloseReason) -> v2::CloseReason {
    match reason {
        v1::CloseReason::Done => v2::CloseReason::Done,
        v1::CloseReason::Reset(code) => v2::CloseReason::Reset(code),
        v1::CloseReason::Aborted(text) => v2::CloseReason::Aborted(text),
        v1::CloseReason::Limit(text) => v2::CloseReason::Limit(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_take_their_bytes_in_order_and_none_past_the_data() {
        let send = |conn, len| v2::Action::Send(v2::Send { conn, len });
        let reply = Reply {
            actions: vec![send(1, 3), v2::Action::Shutdown(1), send(2, 2), send(3, 9)],
            data: b"abcdef".to_vec(),
        };
        let mut sent: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut others = 0;
        unpack(reply, |action| match action {
            Unpacked::Send { conn, bytes } => sent.push((conn, bytes.to_vec())),
            Unpacked::Other(_) => others += 1,
        });
        assert_eq!(others, 1);
        assert_eq!(
            sent,
            vec![
                (1, b"abc".to_vec()),
                (2, b"de".to_vec()),
                (3, b"f".to_vec())
            ]
        );
    }

    #[test]
    fn received_bytes_are_laid_end_to_end_in_event_order() {
        let received = |conn, bytes: &[u8]| {
            v1::Event::Received(v1::Received {
                conn,
                bytes: bytes.to_vec(),
            })
        };
        let mut events = vec![
            received(7, b"hello"),
            v1::Event::Ended(7),
            received(8, b"!"),
        ];
        let mut batch = empty_batch();
        batch
            .data
            .extend_from_slice(b"left over from the last call");
        let mut spent = Vec::new();
        pack(&mut events, &mut batch, |bytes| spent.push(bytes));
        assert!(events.is_empty());
        assert_eq!(spent, vec![b"hello".to_vec(), b"!".to_vec()]);
        assert_eq!(batch.data, b"hello!");
        let lens: Vec<(u64, u32)> = batch
            .events
            .iter()
            .filter_map(|event| match event {
                v2::Event::Received(r) => Some((r.conn, r.len)),
                _ => None,
            })
            .collect();
        assert_eq!(lens, vec![(7, 5), (8, 1)]);
    }
}
