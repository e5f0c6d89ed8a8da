//! A test guest of the event world (`wit/events/conn-events.wit`): a line
//! protocol whose commands exercise what the gateway does around the
//! guest. Every line is answered on its connection:
//!
//! - `info`: the connection's `conn-info`, as `key=value` pairs.
//! - `timer MS`: after MS milliseconds, `tick`.
//! - `connect HOST PORT`: opens an outbound connection; `connected` and
//!   from then on the client's bytes and the outbound connection's are
//!   relayed both ways, or `connect-failed: REASON`.
//! - `flood KIB`: sends KIB KiB at once, ignoring backpressure.
//! - `spin`: computes forever (the CPU budget must stop it).
//! - `trap`: traps (the instance ends, its neighbours do not).
//! - `close-write`: echoed, then the guest shuts down its sending side;
//!   lines the client sends after that are written to stderr (the app's
//!   log) as `received after close-write: LINE`.
//! - anything else: echoed back.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

wit_bindgen::generate!({
    path: "../../wit/events",
    world: "sockgate:events/conn-events",
});

use exports::sockgate::events::handler::Guest;
use sockgate::events::types::{
    Action, CloseReason, ConnInfo, Connect, Event, Send as SendBytes, Timer, Transport,
};

/// What one connection is doing.
enum Mode {
    /// Reading command lines; the bytes of an unfinished line.
    Lines(Vec<u8>),
    /// Waiting for the outbound connection asked for.
    Connecting,
    /// Relaying to and from this connection.
    Relay(u64),
}

#[derive(Default)]
struct State {
    conns: HashMap<u64, Mode>,
    infos: HashMap<u64, ConnInfo>,
    /// Connections whose sending side the guest shut down.
    write_closed: HashSet<u64>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Probe;

impl Guest for Probe {
    fn handle(events: Vec<Event>) -> Vec<Action> {
        let mut actions = Vec::new();
        STATE.with(|state| {
            let mut state = state.borrow_mut();
            for event in events {
                state.on(event, &mut actions);
            }
        });
        actions
    }
}

fn send(conn: u64, bytes: impl Into<Vec<u8>>) -> Action {
    Action::Send(SendBytes {
        conn,
        bytes: bytes.into(),
    })
}

impl State {
    fn on(&mut self, event: Event, actions: &mut Vec<Action>) {
        match event {
            Event::Opened(info) => {
                self.conns.insert(info.id, Mode::Lines(Vec::new()));
                self.infos.insert(info.id, info);
            }
            Event::Received(received) => match self.conns.get_mut(&received.conn) {
                Some(Mode::Relay(other)) => actions.push(send(*other, received.bytes)),
                Some(Mode::Lines(buf)) => {
                    buf.extend_from_slice(&received.bytes);
                    let mut lines = Vec::new();
                    while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        lines.push(String::from_utf8_lossy(&line).trim().to_owned());
                    }
                    for line in lines {
                        self.command(received.conn, &line, actions);
                    }
                }
                Some(Mode::Connecting) | None => {}
            },
            // A relayed side that finished sending finishes the other
            // side's sending too; each closes once both of its directions
            // are done.
            Event::Ended(conn) => match self.conns.get(&conn) {
                Some(Mode::Relay(other)) => actions.push(Action::Shutdown(*other)),
                _ => actions.push(Action::Shutdown(conn)),
            },
            Event::Writable(_) => {}
            // A relayed side that ended cleanly leaves the other to finish
            // sending what it has; one that was lost takes the other along.
            Event::Closed(closed) => {
                self.infos.remove(&closed.conn);
                self.write_closed.remove(&closed.conn);
                if let Some(Mode::Relay(other)) = self.conns.remove(&closed.conn)
                    && !matches!(closed.reason, CloseReason::Done)
                    && self.conns.remove(&other).is_some()
                {
                    actions.push(Action::Close(other));
                }
            }
            Event::Timer(conn) => {
                if self.conns.contains_key(&conn) {
                    actions.push(send(conn, "tick\n"));
                }
            }
            Event::Connected(connected) => {
                let client = connected.token;
                let outbound = connected.info.id;
                if self.conns.contains_key(&client) {
                    self.conns.insert(client, Mode::Relay(outbound));
                    self.conns.insert(outbound, Mode::Relay(client));
                    actions.push(send(client, "connected\n"));
                } else {
                    actions.push(Action::Close(outbound));
                }
            }
            Event::ConnectFailed(failed) => {
                if let Some(mode) = self.conns.get_mut(&failed.token) {
                    *mode = Mode::Lines(Vec::new());
                    actions.push(send(
                        failed.token,
                        format!("connect-failed: {}\n", failed.reason),
                    ));
                }
            }
        }
    }

    fn command(&mut self, conn: u64, line: &str, actions: &mut Vec<Action>) {
        if self.write_closed.contains(&conn) {
            eprintln!("received after close-write: {line}");
            return;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("info"), None, None) => {
                let reply = self.infos.get(&conn).map(describe).unwrap_or_default();
                actions.push(send(conn, reply + "\n"));
            }
            (Some("timer"), Some(ms), None) => {
                let after_ms = ms.parse().unwrap_or(0);
                actions.push(Action::SetTimer(Timer {
                    token: conn,
                    after_ms,
                }));
            }
            (Some("connect"), Some(host), Some(port)) => {
                self.conns.insert(conn, Mode::Connecting);
                actions.push(Action::Connect(Connect {
                    token: conn,
                    host: host.to_owned(),
                    port: port.parse().unwrap_or(0),
                }));
            }
            (Some("flood"), Some(kib), None) => {
                let kib: usize = kib.parse().unwrap_or(0);
                for _ in 0..kib {
                    actions.push(send(conn, vec![b'x'; 1024]));
                }
            }
            (Some("close-write"), None, None) => {
                actions.push(send(conn, "close-write\n"));
                actions.push(Action::Shutdown(conn));
                self.write_closed.insert(conn);
            }
            (Some("spin"), None, None) => spin(),
            (Some("trap"), None, None) => panic!("trap requested by the client"),
            _ => actions.push(send(conn, format!("{line}\n"))),
        }
    }
}

fn describe(info: &ConnInfo) -> String {
    let transport = match info.transport {
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
        Transport::Quic => "quic",
        Transport::Outbound => "outbound",
    };
    let quic = info
        .quic
        .map(|q| format!("{}/{}", q.connection_id, q.stream_id))
        .unwrap_or_default();
    format!(
        "id={} transport={transport} peer={} local={} sni={} alpn={} quic={quic}",
        info.id,
        info.peer,
        info.local,
        info.server_name.as_deref().unwrap_or(""),
        info.alpn.as_deref().unwrap_or(""),
    )
}

/// Computes forever, in a way the optimiser cannot remove.
fn spin() -> ! {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

export!(Probe);
