//! A guest that imports an interface the gateway does not provide
//! (`test:wrong-world/database`), so the gateway must refuse it at start.

wit_bindgen::generate!({
    path: ["../../wit", "wit"],
    world: "test:wrong-world/wrong-world",
    generate_all,
});

use exports::sockgate::gateway::handler::Guest;
use wit_bindgen::StreamReader;

struct WrongWorld;

impl Guest for WrongWorld {
    async fn handle(_id: u64, _rx: StreamReader<u8>) -> StreamReader<u8> {
        let rows = test::wrong_world::database::query("select 1");
        let (mut tx, out) = wit_stream::new();
        wit_bindgen::spawn_local(async move {
            let _ = tx.write_all(rows.join("\n").into_bytes()).await;
        });
        out
    }
}

export!(WrongWorld);
