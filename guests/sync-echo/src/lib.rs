//! Sync echo: the `conn-handler-sync` world (WASI 0.2, one instance per
//! connection). Sends every byte a client sends straight back, and returns
//! (which closes the connection) when the client closes its sending side.

wit_bindgen::generate!({
    path: "../../wit/sync",
    world: "sockgate:gateway/conn-handler-sync",
    generate_all,
});

use exports::sockgate::gateway::sync_handler::{ConnInfo, Guest};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

/// Most bytes asked for per read: large enough for bulk transfers.
const READ_CHUNK: u64 = 64 * 1024;

struct Echo;

impl Guest for Echo {
    fn handle(_info: ConnInfo, rx: InputStream, tx: OutputStream) {
        // Any error (the client went away) ends the connection the same way
        // as its end of stream: by returning.
        let _ = echo(&rx, &tx);
    }
}

/// Copies `rx` to `tx` until `rx` ends.
fn echo(rx: &InputStream, tx: &OutputStream) -> Result<(), StreamError> {
    loop {
        let data = match rx.blocking_read(READ_CHUNK) {
            Ok(data) => data,
            Err(StreamError::Closed) => return Ok(()),
            Err(err) => return Err(err),
        };
        write_all(tx, &data)?;
    }
}

/// Writes all of `data`, waiting whenever the client is slower than we are.
/// (`blocking-write-and-flush` takes at most 4096 bytes at a time.)
fn write_all(tx: &OutputStream, mut data: &[u8]) -> Result<(), StreamError> {
    let writable = tx.subscribe();
    while !data.is_empty() {
        let permit = tx.check_write()?;
        if permit == 0 {
            writable.block();
            continue;
        }
        let n = data
            .len()
            .min(usize::try_from(permit).unwrap_or(usize::MAX));
        tx.write(&data[..n])?;
        data = &data[n..];
    }
    Ok(())
}

export!(Echo);
