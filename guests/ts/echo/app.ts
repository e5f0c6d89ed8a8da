// Echo in TypeScript: sends every byte a client sends straight back, and
// closes its sending side when the client closes its own.
//
// Type-checked by tsc against the declarations `sockgate-guest-tool
// ts-types` writes for the WIT (what componentize-qjs passes and accepts),
// then built into a component by componentize-qjs (see
// guests/build-lang.sh).

import type { Handler } from "sockgate:gateway/handler@0.1.0";

/** The `handler` export: one call per client connection. */
export const handler: Handler = {
  // `_id` gives the client's address through `connection.info`; echo does
  // not need it.
  async handle(_id, rx) {
    // An async iterable returned from `handle` becomes the stream sent to
    // the client: componentize-qjs writes each chunk as the client takes
    // it (backpressure), and closes the stream when the iterable ends.
    return echo(rx);
  },
};

async function* echo(rx: WitStreamReadable<Uint8Array, Uint8Array>): AsyncGenerator<Uint8Array> {
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
