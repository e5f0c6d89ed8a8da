//! {{name}}: a sockgate guest. It echoes every byte a client sends, and
//! closes its sending side when the client closes its own. Edit `handle`
//! (or `serve`) to make it yours.

wit_bindgen::generate!({
    // sockgate's WIT, copied here by `sockgate new`: the contract with the
    // gateway. Do not edit it; `sockgate new` a fresh project to update.
    path: "wit",
    world: "sockgate:gateway/conn-handler",
    generate_all,
});

use exports::sockgate::gateway::handler::Guest;
use wit_bindgen::{StreamReader, StreamResult, StreamWriter};

/// Bytes read per `read` call: large enough for bulk transfers, small enough
/// to keep thousands of idle connections cheap.
const READ_CHUNK: usize = 16 * 1024;

struct App;

impl Guest for App {
    /// Called once per client connection, concurrently with the others.
    /// `id` names the connection: `sockgate::gateway::connection::info(id)`
    /// tells its peer address, transport, server name and ALPN.
    async fn handle(id: u64, rx: StreamReader<u8>) -> StreamReader<u8> {
        let (tx, out) = wit_stream::new();
        // Return the stream to the client at once; keep serving the
        // connection in a task.
        wit_bindgen::spawn_local(serve(id, rx, tx));
        out
    }
}

/// Serves one connection: `rx` is what the client sends, `tx` what it gets.
async fn serve(_id: u64, mut rx: StreamReader<u8>, mut tx: StreamWriter<u8>) {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        let (result, data) = rx.read(buf).await;
        match result {
            StreamResult::Complete(_) => {
                // `write_all` hands back what the client did not take,
                // which is non-empty only if the client went away.
                let rest = tx.write_all(data).await;
                if !rest.is_empty() {
                    return;
                }
                buf = rest;
                buf.reserve(READ_CHUNK);
            }
            // The client closed its sending side (or went away).
            StreamResult::Dropped | StreamResult::Cancelled => return,
        }
    }
    // Returning drops `tx`: the client sees end of stream.
}

export!(App);
