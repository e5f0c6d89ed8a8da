// {{name}}: a sockgate guest. It echoes every byte a client sends, and
// closes its sending side when the client closes its own. Edit `serve` to
// make it yours.
//
// `types/` (written by `sockgate ts-guest types`, see package.json)
// declares the WIT's interfaces as componentize-qjs presents them, so tsc
// checks this file against what the gateway really passes.

import type { Handler } from "sockgate:gateway/handler@0.1.0";

/** The `handler` export: one call per client connection. */
export const handler: Handler = {
  // `id` names the connection (a number): `info(id)` from
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
async function* serve(
  _id: number,
  rx: WitStreamReadable<Uint8Array, Uint8Array>,
): AsyncGenerator<Uint8Array> {
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
