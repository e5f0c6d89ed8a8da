// Events echo: the `conn-events` world (wit/events/). Sends every byte a
// client sends straight back, and shuts down its sending side when the
// client finishes its own, so a client that half-closes still gets all its
// bytes and then end of stream.
//
// It keeps no state at all: the gateway does the I/O and the flow control
// (above the send queue's high-water mark it stops reading from the peer
// until the queue drains), so the `writable`, `opened` and `closed` events
// need no answer here.
//
// Built with componentize-qjs --sync (see guests/build-lang.sh): the
// export is a plain function, so the non-async runtime serves it.

/** The `handler` export: one plain call per batch of events. */
export const handler = {
  // Answers each `received` with a `send` of the same bytes and each
  // `ended` with a `shutdown`. Events and actions are `{ tag, val }`
  // variants; records have camelCase keys; `list<u8>` is a `Uint8Array`.
  handle(events) {
    const actions = [];
    for (const event of events) {
      switch (event.tag) {
        case "received":
          actions.push({
            tag: "send",
            val: { conn: event.val.conn, bytes: event.val.bytes },
          });
          break;
        case "ended":
          actions.push({ tag: "shutdown", val: event.val });
          break;
      }
    }
    return actions;
  },
};
