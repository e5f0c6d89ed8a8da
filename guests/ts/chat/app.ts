// Chat in TypeScript: a line-based chat room. Every line a client sends
// goes to every other connected client, prefixed with the sender's
// address; a client that joins is greeted with `* welcome <address>, <n> in
// the room`. One instance serves every client, so the room is ordinary
// module state.
//
// The same program as guests/js/chat/app.js, type-checked by tsc against
// the WIT's declarations, then built by componentize-qjs (see
// guests/build-lang.sh).

import connection from "sockgate:gateway/connection@0.1.0";
import type { Handler } from "sockgate:gateway/handler@0.1.0";
import type { IpSocketAddress } from "sockgate:gateway/types@0.1.0";
import stdout from "wasi:cli/stdout@0.3.0";

/** Lines queued for one client before further lines to it are dropped: a
 * client that does not read must not make the room buffer without bound. */
const QUEUE_PER_CLIENT = 256;
/** Longest line accepted; longer input is cut into pieces of this size so a
 * client without newlines cannot grow the instance's memory. */
const MAX_LINE = 4096;
const NEWLINE = 10;

/** Lines waiting for one client, delivered by its `lines()` iterator. */
class Mailbox {
  private queue: Uint8Array[] = [];
  private wake: (() => void) | null = null;
  private closed = false;

  /** Queues `line`; drops it if the queue is full or closed. */
  push(line: Uint8Array): void {
    if (this.closed || this.queue.length >= QUEUE_PER_CLIENT) {
      return;
    }
    this.queue.push(line);
    this.notify();
  }

  /** No more lines: `lines()` ends once the queue is drained. */
  close(): void {
    this.closed = true;
    this.notify();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** The queued lines, waiting for more until closed. */
  async *lines(): AsyncGenerator<Uint8Array> {
    try {
      for (;;) {
        const next = this.queue.shift();
        if (next !== undefined) {
          yield next;
        } else if (this.closed) {
          return;
        } else {
          await new Promise<void>((resolve) => {
            this.wake = resolve;
          });
        }
      }
    } finally {
      // Also reached when the client went away and stopped reading.
      this.closed = true;
      this.queue = [];
    }
  }
}

/** Connection id → mailbox of every client in the room. */
const room = new Map<number, Mailbox>();

/** Queues `line` for every client except `from`. */
function broadcast(from: number, line: Uint8Array): void {
  for (const [id, mailbox] of room) {
    if (id !== from) {
      mailbox.push(line);
    }
  }
}

/** ASCII text to bytes (addresses and our own messages are ASCII; QuickJS
 * has no TextEncoder). */
function ascii(text: string): Uint8Array {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    bytes[i] = text.charCodeAt(i) & 0x7f;
  }
  return bytes;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/** Formats a `wasi:sockets` `ip-socket-address` like Rust's `SocketAddr`. */
function formatAddr(addr: IpSocketAddress): string {
  if (addr.tag === "ipv4") {
    return `${addr.val.address.join(".")}:${addr.val.port}`;
  }
  const groups = addr.val.address;
  let ip: string;
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    // IPv4-mapped: ::ffff:a.b.c.d
    const [hi, lo] = [groups[6], groups[7]];
    ip = `::ffff:${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  } else {
    // RFC 5952: the longest run (2 or more) of zero groups becomes `::`.
    let best = -1;
    let bestLen = 1;
    for (let i = 0; i < 8; ) {
      let j = i;
      while (j < 8 && groups[j] === 0) {
        j++;
      }
      if (j - i > bestLen) {
        best = i;
        bestLen = j - i;
      }
      i = j > i ? j : i + 1;
    }
    const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(":");
    ip =
      best < 0
        ? hex(groups)
        : `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLen))}`;
  }
  return `[${ip}]:${addr.val.port}`;
}

/** The app's log: one line per entry, written to stdout through one stream
 * that lives as long as the instance. */
const log = (() => {
  let mailbox: Mailbox | null = null;
  return (text: string): void => {
    if (mailbox === null) {
      mailbox = new Mailbox();
      stdout.writeViaStream(mailbox.lines());
    }
    mailbox.push(ascii(`${text}\n`));
  };
})();

/** Splits the client's bytes into lines and broadcasts them until the client
 * closes its sending side, then takes the client out of the room. */
async function relay(
  id: number,
  prefix: string,
  rx: WitStreamReadable<Uint8Array, Uint8Array>,
  mailbox: Mailbox,
): Promise<void> {
  const head = ascii(prefix);
  let pending: Uint8Array = new Uint8Array(0);
  try {
    for await (const chunk of rx) {
      pending = concat(pending, chunk);
      let end;
      while ((end = pending.indexOf(NEWLINE)) >= 0) {
        broadcast(id, concat(head, pending.subarray(0, end + 1)));
        pending = pending.slice(end + 1);
      }
      if (pending.length >= MAX_LINE) {
        broadcast(id, concat(concat(head, pending), ascii("\n")));
        pending = new Uint8Array(0);
      }
    }
  } finally {
    rx.drop();
    // Leaving closes this client's mailbox, which ends its stream.
    room.delete(id);
    mailbox.close();
    log(`${prefix}left`);
  }
}

/** The `handler` export: one call per client connection. */
export const handler: Handler = {
  async handle(id, rx) {
    // The gateway tells the client's address on request; `null` if the
    // connection is already gone. (u64 ids arrive as numbers, exact below
    // 2^53.)
    const info = connection.info(id);
    const peer = info === null ? `connection ${id}` : formatAddr(info.peer);
    const mailbox = new Mailbox();
    // The welcome line also tells the client it is in the room now.
    mailbox.push(ascii(`* welcome ${peer}, ${room.size + 1} in the room\n`));
    room.set(id, mailbox);
    const prefix = `${peer}: `;
    log(`${prefix}joined (connection ${id})`);
    void relay(id, prefix, rx, mailbox);
    // The returned async iterable becomes the stream to the client.
    return mailbox.lines();
  },
};
