// Events chat: the chat room of `guests/js/chat` in the `conn-events` world
// (wit/events/), with the same wire protocol. Every line a client sends goes
// to every other client in the room (not back to the sender), prefixed with
// the sender's address; a client that joins is greeted with
// `* welcome <address>, <n> in the room`. One instance serves every client,
// so the room is ordinary module state.
//
// A client that does not read is not buffered for here: the gateway queues
// what is sent to it and closes it once its queue passes the hard cap, which
// the room then reports as the client leaving.
//
// Built with componentize-qjs --sync (see guests/build-lang.sh), against
// `world.wit`: the event world plus WASI 0.2 stdout for the log.

import stdout from "wasi:cli/stdout@0.2.12";

/** Longest line accepted; longer input is cut into pieces of this size so a
 * client without newlines cannot grow the instance's memory. */
const MAX_LINE = 4096;
const NEWLINE = 10;

/** Connection id → `{ peer, pending }` of every client in the room: its
 * address, which prefixes its lines, and the bytes received after its last
 * complete line. (u64 ids arrive as numbers, exact below 2^53.) */
const room = new Map();

/** Text to UTF-8 bytes (QuickJS has no TextEncoder). */
function utf8(text) {
  const bytes = [];
  for (const char of text) {
    const c = char.codePointAt(0);
    if (c < 0x80) {
      bytes.push(c);
    } else if (c < 0x800) {
      bytes.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
      bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
    } else {
      bytes.push(
        0xf0 | (c >> 18),
        0x80 | ((c >> 12) & 0x3f),
        0x80 | ((c >> 6) & 0x3f),
        0x80 | (c & 0x3f),
      );
    }
  }
  return new Uint8Array(bytes);
}

/** The app's log: one line per entry on stdout. The stream is taken on
 * first use, not when the module is evaluated: componentize-qjs evaluates
 * it at build time, and a handle taken then would not exist at run time. */
const log = (() => {
  let out = null;
  return (text) => {
    if (out === null) {
      out = stdout.getStdout();
    }
    const bytes = utf8(`${text}\n`);
    // `blocking-write-and-flush` takes at most 4096 bytes at a time.
    for (let at = 0; at < bytes.length; at += 4096) {
      out.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
    }
  };
})();

/** Queues `line` (bytes) for every client in the room except `from`. */
function broadcast(from, line, actions) {
  for (const conn of room.keys()) {
    if (conn !== from) {
      actions.push({ tag: "send", val: { conn, bytes: line } });
    }
  }
}

/** Broadcasts `piece` (a line, or a piece of an overlong one, without its
 * newline) from `from`, prefixed with its address `peer`. */
function say(from, peer, piece, actions) {
  const head = utf8(`${peer}: `);
  const line = new Uint8Array(head.length + piece.length + 1);
  line.set(head, 0);
  line.set(piece, head.length);
  line[line.length - 1] = NEWLINE;
  broadcast(from, line, actions);
}

/** A client joined: greet it and put it in the room. */
function join(conn, peer, actions) {
  // The welcome line also tells the client it is in the room now.
  const welcome = `* welcome ${peer}, ${room.size + 1} in the room\n`;
  actions.push({ tag: "send", val: { conn, bytes: utf8(welcome) } });
  log(`${peer}: joined (connection ${conn})`);
  room.set(conn, { peer, pending: new Uint8Array(0) });
}

/** A client sent `bytes`: broadcast every line they complete. */
function receive(conn, bytes, actions) {
  const member = room.get(conn);
  if (member === undefined) {
    return;
  }
  let pending = bytes;
  if (member.pending.length > 0) {
    pending = new Uint8Array(member.pending.length + bytes.length);
    pending.set(member.pending, 0);
    pending.set(bytes, member.pending.length);
  }
  let start = 0;
  for (;;) {
    const end = pending.indexOf(NEWLINE, start);
    if (end >= 0) {
      say(conn, member.peer, pending.subarray(start, end), actions);
      start = end + 1;
    } else if (pending.length - start >= MAX_LINE) {
      say(conn, member.peer, pending.subarray(start, start + MAX_LINE), actions);
      start += MAX_LINE;
    } else {
      break;
    }
  }
  // A copy: keeps only the rest, not the whole buffer it was cut from.
  member.pending = pending.slice(start);
}

/** A client left: take it out of the room, and if its bytes stopped early
 * (a QUIC stream reset, a lost connection, a limit) tell the others, since
 * it may have been cut off mid-line. `reason` is null for a clean end. */
function leave(conn, reason, actions) {
  const member = room.get(conn);
  if (member === undefined) {
    return;
  }
  room.delete(conn);
  const peer = member.peer;
  let why = null;
  if (reason !== null) {
    switch (reason.tag) {
      case "reset":
        why = `stream reset, code ${reason.val}`;
        break;
      case "aborted":
      case "limit":
        why = reason.val;
        break;
    }
  }
  if (why !== null) {
    broadcast(conn, utf8(`* ${peer} left: ${why}\n`), actions);
    log(`${peer}: left: ${why}`);
  } else {
    log(`${peer}: left`);
  }
}

/** The `handler` export: one plain call per batch of events. */
export const handler = {
  // Runs each event against the room and returns the lines to send. Events
  // and actions are `{ tag, val }` variants; records have camelCase keys.
  handle(events) {
    const actions = [];
    for (const event of events) {
      switch (event.tag) {
        case "opened":
          join(event.val.id, event.val.peer, actions);
          break;
        case "received":
          receive(event.val.conn, event.val.bytes, actions);
          break;
        case "ended":
          // The client finished sending: it leaves (a partial last line is
          // dropped), and our side finishes too.
          leave(event.val, null, actions);
          actions.push({ tag: "shutdown", val: event.val });
          break;
        case "closed":
          leave(event.val.conn, event.val.reason, actions);
          break;
      }
    }
    return actions;
  },
};
