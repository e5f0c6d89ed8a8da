//! Hostile: a guest that misbehaves on request, for the gateway's tests.
//! Each connection is an echo until a line names a misdeed:
//! - `panic` — the guest panics, which traps the instance.
//! - `log <text>` — writes `<text>` to stdout and stderr, then goes on echoing.
//! - `close-write` — closes the guest's sending side (the client sees end of
//!   stream) but keeps reading, logging `received after close-write: <line>`
//!   for every further line.

wit_bindgen::generate!({
    path: "../../wit",
    world: "sockgate:gateway/conn-handler",
    generate_all,
});

use exports::sockgate::gateway::handler::Guest;
use sockgate::gateway::types::ConnInfo;
use wit_bindgen::{StreamReader, StreamResult};

struct Hostile;

impl Guest for Hostile {
    async fn handle(info: ConnInfo, mut rx: StreamReader<u8>) -> StreamReader<u8> {
        let (tx, out) = wit_stream::new();
        wit_bindgen::spawn_local(async move {
            let mut line: Vec<u8> = Vec::new();
            let mut tx = Some(tx);
            let mut buf = Vec::with_capacity(4096);
            loop {
                let (result, data) = rx.read(buf).await;
                if !matches!(result, StreamResult::Complete(_)) {
                    return;
                }
                line.extend_from_slice(&data);
                while let Some(end) = line.iter().position(|&b| b == b'\n') {
                    let command: Vec<u8> = line.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&command);
                    let text = text.trim_end();
                    if text == "panic" {
                        panic!("hostile guest asked to panic on connection {}", info.id);
                    } else if let Some(message) = text.strip_prefix("log ") {
                        println!("{message}");
                        eprintln!("{message}");
                    }
                    let Some(writer) = tx.as_mut() else {
                        println!("received after close-write: {text}");
                        continue;
                    };
                    if text == "close-write" {
                        // Dropping the writer shuts down our sending side.
                        let _ = writer.write_all(command).await;
                        tx = None;
                        continue;
                    }
                    if !writer.write_all(command).await.is_empty() {
                        return;
                    }
                }
                buf = data;
                buf.clear();
            }
        });
        out
    }
}

export!(Hostile);
