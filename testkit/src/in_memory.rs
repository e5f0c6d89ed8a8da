//! The message path without sockets: a guest app handed one end of an
//! in-memory duplex as if it were a TCP connection, for the benchmarks that
//! measure the wasm boundary and supervision rather than the network.

use std::net::SocketAddr;

use sockgate_host::apps::app::App;
use sockgate_host::base::conn::{ConnInfo, Connection, Transport, next_conn_id};

/// Hands `app` one end of an in-memory duplex of `buffer` bytes, as a TCP
/// connection from 127.0.0.1:1, and returns the client's end: the message
/// path without sockets.
pub fn connect_in_memory(app: &App, buffer: usize) -> tokio::io::DuplexStream {
    let (client, server) = tokio::io::duplex(buffer);
    let (server_rd, server_wr) = tokio::io::split(server);
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let conn = Connection {
        info: ConnInfo {
            id: next_conn_id(),
            transport: Transport::Tcp,
            peer: addr,
            local: addr,
            server_name: None,
            alpn: None,
            quic: None,
        },
        reader: Box::pin(server_rd),
        writer: Box::pin(server_wr),
        closer: Box::new(|| {}),
    };
    app.dispatch(conn).unwrap();
    client
}
