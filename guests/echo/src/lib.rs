//! Echo: sends every byte a client sends straight back, and closes its
//! sending side when the client closes its own.

wit_bindgen::generate!({
    path: "../../wit",
    world: "sockgate:gateway/conn-handler",
    generate_all,
});

use exports::sockgate::gateway::handler::Guest;
use wit_bindgen::{StreamReader, StreamResult};

/// Bytes read per `read` call: large enough for bulk transfers, small enough
/// to keep thousands of idle connections cheap (the buffer is only held
/// while a read is outstanding).
const READ_CHUNK: usize = 16 * 1024;

struct Echo;

impl Guest for Echo {
    async fn handle(_id: u64, mut rx: StreamReader<u8>) -> StreamReader<u8> {
        let (mut tx, out) = wit_stream::new();
        wit_bindgen::spawn_local(async move {
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
                    StreamResult::Dropped | StreamResult::Cancelled => return,
                }
            }
        });
        out
    }
}

export!(Echo);
