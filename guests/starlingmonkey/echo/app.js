// Echo for the `conn-handler-sync` world (WASI 0.2, one instance per
// connection), in JavaScript on StarlingMonkey (SpiderMonkey), built with
// componentize-js (see guests/build-lang.sh). Sends every byte a client
// sends straight back, and returns (which closes the connection) when the
// client closes its sending side.

/** Most bytes asked for per read. */
const READ_CHUNK = 64n * 1024n;

/** The `sync-handler` export: one call per connection, on a fresh instance. */
export const syncHandler = {
  handle(_info, rx, tx) {
    const writable = tx.subscribe();
    try {
      for (;;) {
        let data;
        try {
          data = rx.blockingRead(READ_CHUNK);
        } catch {
          // `closed`: the client shut down its sending side (or went away).
          return;
        }
        writeAll(tx, writable, data);
      }
    } catch {
      // The client went away while we were writing: nothing left to do.
    }
  },
};

/** Writes all of `data`, waiting whenever the client is slower than we are
 * (`blockingWriteAndFlush` takes at most 4096 bytes at a time). */
function writeAll(tx, writable, data) {
  let offset = 0;
  while (offset < data.length) {
    const permit = Number(tx.checkWrite());
    if (permit === 0) {
      writable.block();
      continue;
    }
    const n = Math.min(permit, data.length - offset);
    tx.write(data.subarray(offset, offset + n));
    offset += n;
  }
}
