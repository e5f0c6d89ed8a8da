// Events chat: the chat room of guests/events-chat (Rust) in C, for the
// `conn-events` world (wit/events/), with the same wire protocol. Every
// line a client sends goes to every other client in the room (not back to
// the sender), prefixed with the sender's address; a client that joins is
// greeted with `* welcome <address>, <n> in the room`; a client whose bytes
// stopped early (reset, lost, cut off by a limit) is reported to the others
// as `* <address> left: <why>`. One instance serves every client, so the
// room is ordinary static state.
//
// A client that does not read is not buffered for here: the gateway queues
// what is sent to it and closes it once its queue passes the hard cap,
// which the room then reports as the client leaving.
//
// Memory: the room is one array of members sorted by connection id (the
// order the Rust guest's BTreeMap keeps), holding each member's address and
// the bytes after its last complete line. A member's memory is released
// when it leaves (`ended` or `closed`), and the array shrinks as the room
// empties, so clients that come and go leave nothing behind.
//
// Ownership, as in guests/c/events-echo: `handle` owns `events` and frees
// them; the gateway frees the returned actions and their bytes with `free`
// (the bindings' post-return function), so every `send` carries its own
// malloc'd buffer, never empty (post-return frees only non-empty lists).
// Buffers worth keeping (a member's address, a received chunk that becomes
// its pending bytes) are moved out of their events instead of copied.

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn_events.h"

typedef exports_sockgate_events_handler_list_event_t events_t;
typedef exports_sockgate_events_handler_list_action_t actions_t;
typedef sockgate_events_types_event_t event_t;
typedef sockgate_events_types_action_t action_t;
typedef sockgate_events_types_close_reason_t close_reason_t;

// Longest line accepted; longer input is cut into pieces of this size so a
// client without newlines cannot grow the instance's memory.
#define MAX_LINE 4096

// --- Allocation ----------------------------------------------------------

// Out of memory inside `handle` leaves nothing sensible to do: trapping
// ends this instance only, as a Rust guest's allocation failure does.
static void *xrealloc(void *ptr, size_t size) {
  void *p = realloc(ptr, size);
  if (p == NULL && size > 0) {
    abort();
  }
  return p;
}

static void *xmemdup(const void *data, size_t len) {
  void *p = xrealloc(NULL, len);
  memcpy(p, data, len);
  return p;
}

// --- The actions of one call -------------------------------------------

// Unlike events-echo, one event can call for many actions (a line goes to
// every other member), so the list grows as needed.
typedef struct {
  action_t *ptr;
  size_t len;
  size_t cap;
} action_list_t;

static action_t *push_action(action_list_t *actions) {
  if (actions->len == actions->cap) {
    actions->cap = actions->cap ? actions->cap * 2 : 16;
    actions->ptr = xrealloc(actions->ptr, actions->cap * sizeof(action_t));
  }
  return &actions->ptr[actions->len++];
}

// Queues `len` (> 0) bytes at `bytes` for `conn`: the action takes the
// buffer, which must come from malloc.
static void push_send(action_list_t *actions, uint64_t conn, uint8_t *bytes, size_t len) {
  action_t *action = push_action(actions);
  action->tag = SOCKGATE_EVENTS_TYPES_ACTION_SEND;
  action->val.send.conn = conn;
  action->val.send.bytes.ptr = bytes;
  action->val.send.bytes.len = len;
}

static void push_shutdown(action_list_t *actions, uint64_t conn) {
  action_t *action = push_action(actions);
  action->tag = SOCKGATE_EVENTS_TYPES_ACTION_SHUTDOWN;
  action->val.shutdown = conn;
}

// --- A growable byte string, to assemble lines ---------------------------

typedef struct {
  uint8_t *ptr;
  size_t len;
  size_t cap;
} bytes_t;

static void put(bytes_t *b, const void *data, size_t len) {
  if (len == 0) {
    return;
  }
  if (b->cap - b->len < len) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap - b->len < len) {
      cap *= 2;
    }
    b->ptr = xrealloc(b->ptr, cap);
    b->cap = cap;
  }
  memcpy(b->ptr + b->len, data, len);
  b->len += len;
}

static void put_str(bytes_t *b, const char *s) { put(b, s, strlen(s)); }

// In decimal. (Not snprintf: printf's machinery would more than double the
// size of the component.)
static void put_u64(bytes_t *b, uint64_t n) {
  char digits[24];
  size_t at = sizeof digits;
  do {
    digits[--at] = (char)('0' + n % 10);
    n /= 10;
  } while (n > 0);
  put(b, digits + at, sizeof digits - at);
}

// Writes a line of the app's log (stdout) and frees it; flushed at the end
// of the batch.
static void log_line(bytes_t *line) {
  fwrite(line->ptr, 1, line->len, stdout);
  free(line->ptr);
}

// --- The room --------------------------------------------------------------

// A client in the room.
typedef struct {
  uint64_t conn;
  // The client's address, which prefixes its lines (moved from `opened`).
  conn_events_string_t peer;
  // Bytes received after the last complete line (NULL when none).
  uint8_t *pending;
  size_t pending_len;
} member_t;

// Every client in the room, sorted by connection id.
static member_t *room;
static size_t room_len;
static size_t room_cap;

// Binary search: whether `conn` is in the room; `*at` is its index, or the
// index it would be inserted at.
static bool room_find(uint64_t conn, size_t *at) {
  size_t lo = 0, hi = room_len;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (room[mid].conn < conn) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  *at = lo;
  return lo < room_len && room[lo].conn == conn;
}

// The gateway hands out connection ids in increasing order, so a new member
// usually goes at the end and nothing moves.
static void room_insert(size_t at, member_t member) {
  if (room_len == room_cap) {
    room_cap = room_cap ? room_cap * 2 : 16;
    room = xrealloc(room, room_cap * sizeof(member_t));
  }
  memmove(&room[at + 1], &room[at], (room_len - at) * sizeof(member_t));
  room[at] = member;
  room_len++;
}

// Takes the member at `at` out of the room; the caller owns its buffers.
static member_t room_remove(size_t at) {
  member_t member = room[at];
  memmove(&room[at], &room[at + 1], (room_len - at - 1) * sizeof(member_t));
  room_len--;
  // Give memory back as the room empties: a crowd that has left must not
  // keep its array.
  if (room_len == 0) {
    free(room);
    room = NULL;
    room_cap = 0;
  } else if (room_cap > 16 && room_len <= room_cap / 4) {
    room_cap /= 2;
    room = xrealloc(room, room_cap * sizeof(member_t));
  }
  return member;
}

static void member_free(member_t *member) {
  conn_events_string_free(&member->peer);
  free(member->pending);
  member->pending = NULL;
  member->pending_len = 0;
}

// Queues `line` for every client in the room except `from`, each with its
// own copy (the gateway frees each send's bytes).
static void broadcast(action_list_t *actions, uint64_t from, const uint8_t *line, size_t len) {
  for (size_t i = 0; i < room_len; i++) {
    if (room[i].conn != from) {
      push_send(actions, room[i].conn, xmemdup(line, len), len);
    }
  }
}

// Broadcasts `piece` (a line, or a piece of an overlong one, without its
// `\n`) from `from`, prefixed with its address `peer`.
static void say(action_list_t *actions, uint64_t from, const conn_events_string_t *peer,
                const uint8_t *piece, size_t len) {
  bytes_t line = {0};
  put(&line, peer->ptr, peer->len);
  put_str(&line, ": ");
  put(&line, piece, len);
  put_str(&line, "\n");
  broadcast(actions, from, line.ptr, line.len);
  free(line.ptr);
}

// --- Events ------------------------------------------------------------------

// A client joined: greet it and put it in the room. Takes the address out
// of `info`.
static void join(action_list_t *actions, sockgate_events_types_conn_info_t *info) {
  uint64_t conn = info->id;
  conn_events_string_t peer = info->peer;
  info->peer.ptr = NULL;
  info->peer.len = 0;

  size_t online = room_len + 1;
  // The welcome line also tells the client it is in the room now.
  bytes_t welcome = {0};
  put_str(&welcome, "* welcome ");
  put(&welcome, peer.ptr, peer.len);
  put_str(&welcome, ", ");
  put_u64(&welcome, online);
  put_str(&welcome, " in the room\n");
  push_send(actions, conn, welcome.ptr, welcome.len);

  bytes_t log = {0};
  put(&log, peer.ptr, peer.len);
  put_str(&log, ": joined (connection ");
  put_u64(&log, conn);
  put_str(&log, ")\n");
  log_line(&log);

  member_t member = {.conn = conn, .peer = peer, .pending = NULL, .pending_len = 0};
  size_t at;
  if (room_find(conn, &at)) {
    // An id is never opened twice; should it be, the newcomer replaces
    // the old member, as in the Rust guest's map.
    member_free(&room[at]);
    room[at] = member;
  } else {
    room_insert(at, member);
  }
}

// A client sent bytes: broadcast every line they complete, and keep the
// rest. Takes the bytes out of `received` when they are kept.
static void receive(action_list_t *actions, sockgate_events_types_received_t *received) {
  size_t at;
  if (!room_find(received->conn, &at) || received->bytes.len == 0) {
    return;
  }
  member_t *member = &room[at];
  uint8_t *buf;
  size_t len;
  if (member->pending_len == 0) {
    // The usual case, a chunk with no leftovers before it: work on the
    // event's own buffer.
    buf = received->bytes.ptr;
    len = received->bytes.len;
    received->bytes.ptr = NULL;
    received->bytes.len = 0;
  } else {
    len = member->pending_len + received->bytes.len;
    buf = xrealloc(member->pending, len);
    memcpy(buf + member->pending_len, received->bytes.ptr, received->bytes.len);
  }
  member->pending = NULL;
  member->pending_len = 0;

  // As the Rust guest: a newline anywhere in what is buffered ends a line
  // (however long); only without one is the first MAX_LINE bytes cut off.
  size_t start = 0;
  for (;;) {
    const uint8_t *rest = buf + start;
    size_t rest_len = len - start;
    const uint8_t *newline = memchr(rest, '\n', rest_len);
    if (newline != NULL) {
      size_t end = (size_t)(newline - rest);
      say(actions, member->conn, &member->peer, rest, end);
      start += end + 1;
    } else if (rest_len >= MAX_LINE) {
      say(actions, member->conn, &member->peer, rest, MAX_LINE);
      start += MAX_LINE;
    } else {
      break;
    }
  }

  if (start == len) {
    free(buf);
  } else {
    // Less than MAX_LINE bytes: keep just those, not the whole chunk.
    memmove(buf, buf + start, len - start);
    member->pending_len = len - start;
    member->pending = xrealloc(buf, member->pending_len);
  }
}

// A client left: take it out of the room, and if its bytes stopped early
// (a QUIC stream reset, a lost connection, a limit) tell the others, since
// it may have been cut off mid-line. `reason` is NULL when the client
// finished sending (`ended`); a partial last line is dropped.
static void leave(action_list_t *actions, uint64_t conn, const close_reason_t *reason) {
  size_t at;
  if (!room_find(conn, &at)) {
    return;
  }
  member_t member = room_remove(at);

  bytes_t why = {0};
  if (reason != NULL) {
    switch (reason->tag) {
      case SOCKGATE_EVENTS_TYPES_CLOSE_REASON_RESET:
        put_str(&why, "stream reset, code ");
        put_u64(&why, reason->val.reset);
        break;
      case SOCKGATE_EVENTS_TYPES_CLOSE_REASON_ABORTED:
        put(&why, reason->val.aborted.ptr, reason->val.aborted.len);
        break;
      case SOCKGATE_EVENTS_TYPES_CLOSE_REASON_LIMIT:
        put(&why, reason->val.limit.ptr, reason->val.limit.len);
        break;
      default:  // done: a clean end, nothing to tell
        break;
    }
  }

  bytes_t log = {0};
  put(&log, member.peer.ptr, member.peer.len);
  put_str(&log, ": left");
  // (An empty `aborted` or `limit` text still counts as a reason.)
  if (reason != NULL && reason->tag != SOCKGATE_EVENTS_TYPES_CLOSE_REASON_DONE) {
    bytes_t line = {0};
    put_str(&line, "* ");
    put(&line, member.peer.ptr, member.peer.len);
    put_str(&line, " left: ");
    put(&line, why.ptr, why.len);
    put_str(&line, "\n");
    broadcast(actions, conn, line.ptr, line.len);
    free(line.ptr);
    put_str(&log, ": ");
    put(&log, why.ptr, why.len);
  }
  put_str(&log, "\n");
  log_line(&log);
  free(why.ptr);
  member_free(&member);
}

// Runs each event against the room and returns the lines to send.
void exports_sockgate_events_handler_handle(events_t *events, actions_t *ret) {
  action_list_t actions = {0};
  for (size_t i = 0; i < events->len; i++) {
    event_t *event = &events->ptr[i];
    switch (event->tag) {
      case SOCKGATE_EVENTS_TYPES_EVENT_OPENED:
        join(&actions, &event->val.opened);
        break;
      case SOCKGATE_EVENTS_TYPES_EVENT_RECEIVED:
        receive(&actions, &event->val.received);
        break;
      case SOCKGATE_EVENTS_TYPES_EVENT_ENDED:
        // The client finished sending: it leaves (a partial last line is
        // dropped), and our side finishes too.
        leave(&actions, event->val.ended, NULL);
        push_shutdown(&actions, event->val.ended);
        break;
      case SOCKGATE_EVENTS_TYPES_EVENT_CLOSED:
        leave(&actions, event->val.closed.conn, &event->val.closed.reason);
        break;
      default:
        break;
    }
  }
  // Frees what was not moved out (moved-out fields were emptied).
  exports_sockgate_events_handler_list_event_free(events);
  // stdout (the app's log) is fully buffered when it is not a terminal:
  // one write per batch, and no line held back until the next one.
  fflush(stdout);
  if (actions.len == 0) {
    // The post-return function frees only a non-empty list.
    free(actions.ptr);
    actions.ptr = NULL;
  }
  ret->ptr = actions.ptr;
  ret->len = actions.len;
}
