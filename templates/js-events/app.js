// {{name}}: a sockgate guest in the event world. It echoes every byte a
// client sends, and finishes its sending side when the client finishes its
// own. Edit `handle` to make it yours.
//
// The gateway does every read, write, timer and connect. It calls `handle`
// with a batch of events (for every connection of this instance that had
// something happen) and carries out the actions `handle` returns, in
// order. `handle` is a plain function (not `async`) and must not block: one
// instance serves every connection, so state kept in module variables is
// shared by all of them.
//
// Backpressure is the gateway's job: each connection's send queue has a
// high-water mark (64 KiB). Past it the gateway stops reading from that
// client until the queue drains, then sends a `writable` event; a guest that
// keeps queueing past the hard cap (1 MiB) has the connection closed. An
// echo never sends more than it received, so it can ignore `writable`; a
// guest that produces data of its own (a file, a stream of updates) should
// stop at the mark and carry on when `writable` comes.
//
// Events and actions are WIT variants, `{ tag, val }` with the case's name
// as `tag`; records have camelCase keys (`afterMs`); `list<u8>` is a
// `Uint8Array`; connection ids (u64) are numbers, exact below 2^53.

/** The `handler` export: one plain call per batch of events. */
export const handler = {
  // Called with every event that is ready for this instance, never with an
  // empty list; returns what the gateway should do.
  handle(events) {
    const actions = [];
    for (const event of events) {
      switch (event.tag) {
        case "opened":
          // A client connected: `event.val` has its `id`, `peer` address,
          // `transport`, `serverName` and `alpn`. Nothing to do for an echo
          // (send a greeting here, or set a timer).
          break;
        case "received":
          // Bytes from a client (never empty; no message boundaries): send
          // them back.
          actions.push({
            tag: "send",
            val: { conn: event.val.conn, bytes: event.val.bytes },
          });
          break;
        case "ended":
          // The client finished sending: once everything queued is out, it
          // sees end of stream from us too, and the connection closes.
          actions.push({ tag: "shutdown", val: event.val });
          break;
        case "writable":
          // A send queue that passed its high-water mark drained: send
          // more now, if there is more.
          break;
        case "closed":
          // A connection is gone (`event.val.reason` says why): forget
          // whatever was kept for it.
          break;
        default:
          // Timers and outbound connections, which this guest never asks
          // for (`set-timer`, `connect` actions).
          break;
      }
    }
    return actions;
  },
};
