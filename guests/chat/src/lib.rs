//! Chat: a line-based chat room. Every line a client sends goes to every
//! other connected client, prefixed with the sender's address; a client
//! that joins is greeted with `* welcome <address>, <n> in the room`. One instance
//! serves every client, so the room is ordinary instance state.

wit_bindgen::generate!({
    path: "../../wit",
    world: "sockgate:gateway/conn-handler",
    generate_all,
});

use std::cell::RefCell;
use std::collections::BTreeMap;

use exports::sockgate::gateway::handler::Guest;
use futures::StreamExt;
use futures::channel::mpsc;
use sockgate::gateway::types::RxError;
use wasi::sockets::types::IpSocketAddress;
use wit_bindgen::{StreamReader, StreamResult};

/// Lines queued for one client before further lines to it are dropped: a
/// client that does not read must not make the room buffer without bound.
const QUEUE_PER_CLIENT: usize = 256;
/// Longest line accepted; longer input is cut into pieces of this size so
/// a client without newlines cannot grow the instance's memory.
const MAX_LINE: usize = 4096;

thread_local! {
    /// Connection id → queue of lines to deliver to that client.
    static ROOM: RefCell<BTreeMap<u64, mpsc::Sender<Vec<u8>>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Queues `line` for every client except `from`; a full queue drops the line
/// for that client only.
fn broadcast(from: u64, line: &[u8]) {
    ROOM.with(|room| {
        for (id, queue) in room.borrow_mut().iter_mut() {
            if *id != from {
                let _ = queue.try_send(line.to_vec());
            }
        }
    });
}

fn format_addr(addr: &IpSocketAddress) -> String {
    match addr {
        IpSocketAddress::Ipv4(a) => {
            let (b0, b1, b2, b3) = a.address;
            format!("{b0}.{b1}.{b2}.{b3}:{}", a.port)
        }
        IpSocketAddress::Ipv6(a) => {
            let (s0, s1, s2, s3, s4, s5, s6, s7) = a.address;
            let ip = std::net::Ipv6Addr::new(s0, s1, s2, s3, s4, s5, s6, s7);
            format!("[{ip}]:{}", a.port)
        }
    }
}

struct Chat;

impl Guest for Chat {
    async fn handle(id: u64, mut rx: StreamReader<u8>) -> StreamReader<u8> {
        let (mut tx, out) = wit_stream::new();
        let (mut queue, mut lines) = mpsc::channel(QUEUE_PER_CLIENT);
        let peer = match sockgate::gateway::connection::info(id) {
            Some(info) => format_addr(&info.peer),
            None => format!("connection {id}"),
        };
        let online = ROOM.with(|room| room.borrow().len()) + 1;
        // The welcome line also tells the client it is in the room now.
        let _ = queue.try_send(format!("* welcome {peer}, {online} in the room\n").into_bytes());
        ROOM.with(|room| room.borrow_mut().insert(id, queue));
        let prefix = format!("{peer}: ");
        println!("{prefix}joined (connection {id})");

        // Writer: deliver queued lines until the client goes away.
        wit_bindgen::spawn_local(async move {
            while let Some(line) = lines.next().await {
                if !tx.write_all(line).await.is_empty() {
                    break;
                }
            }
        });

        // Reader: split the client's bytes into lines and broadcast them.
        wit_bindgen::spawn_local(async move {
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = Vec::with_capacity(MAX_LINE);
            loop {
                let (result, data) = rx.read(buf).await;
                if !matches!(result, StreamResult::Complete(_)) {
                    break;
                }
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let mut line = prefix.clone().into_bytes();
                    line.extend(pending.drain(..=end));
                    broadcast(id, &line);
                }
                if pending.len() >= MAX_LINE {
                    let mut line = prefix.clone().into_bytes();
                    line.append(&mut pending);
                    line.push(b'\n');
                    broadcast(id, &line);
                }
                buf = data;
                buf.clear();
            }
            // Leaving closes this client's queue, which ends its writer.
            ROOM.with(|room| room.borrow_mut().remove(&id));
            // A client whose bytes stopped early (a QUIC stream reset, a
            // lost connection) may have been cut off mid-line: say so.
            match sockgate::gateway::connection::receive_error(id) {
                Some(error) => {
                    let why = match error {
                        RxError::Reset(code) => format!("stream reset, code {code}"),
                        RxError::Aborted(what) => what,
                    };
                    broadcast(id, format!("* {peer} left: {why}\n").as_bytes());
                    println!("{prefix}left: {why}");
                }
                None => println!("{prefix}left"),
            }
        });
        out
    }
}

export!(Chat);
