// {{name}}: a sockgate guest. It echoes every byte a client sends, and
// closes its sending side when the client closes its own. Edit `handle`
// (or `serve`) to make it yours.

/** The `handler` export: one call per client connection. */
export const handler = {
  // `id` names the connection (a JS number): `info(id)` from
  // "sockgate:gateway/connection@0.1.0" tells its peer address, transport,
  // server name and ALPN.
  async handle(id, rx) {
    // An async iterable returned from `handle` becomes the stream sent to
    // the client: componentize-qjs writes each chunk as the client takes
    // it (backpressure), and closes the stream when the iterable ends.
    return serve(id, rx);
  },
};

/** Serves one connection: yields the bytes to send for what `rx` brings. */
async function* serve(_id, rx) {
  try {
    // `stream<u8>` iterates as `Uint8Array` chunks; the loop ends when the
    // client closes its sending side.
    for await (const chunk of rx) {
      yield chunk;
    }
  } finally {
    // Also reached when the client went away and the writer stopped.
    rx.drop();
  }
}
