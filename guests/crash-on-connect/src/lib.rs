//! A guest that traps as soon as it is handed a connection, for the
//! gateway's crash-loop tests.

wit_bindgen::generate!({
    path: "../../wit",
    world: "sockgate:gateway/conn-handler",
    generate_all,
});

use exports::sockgate::gateway::handler::Guest;
use wit_bindgen::StreamReader;

struct CrashOnConnect;

impl Guest for CrashOnConnect {
    async fn handle(id: u64, _rx: StreamReader<u8>) -> StreamReader<u8> {
        panic!("crash-on-connect: refusing connection {id}");
    }
}

export!(CrashOnConnect);
