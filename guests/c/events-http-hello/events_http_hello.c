// Events HTTP hello: guests/events-http-hello (Rust) in C, for the
// `conn-events` world (wit/events/). Answers HTTP/1.1 requests with a small
// HTML page, keeping the connection open between requests (keep-alive,
// pipelining) and parsing the requests itself, with no HTTP library. The
// response bytes, and which requests are refused with which status, are the
// Rust guest's to the byte.
//
// A connection holds memory here only while it has an incomplete request
// buffered (or has been answered for the last time): an idle keep-alive
// connection costs nothing in the guest. That state lives in a small hash
// table keyed by connection id, and an entry is released as soon as it is
// not needed (the request completed, the peer ended, the connection
// closed); the table itself is freed when it empties.
//
// Ownership, as in guests/c/events-echo: `handle` owns `events` and frees
// them; the gateway frees the returned actions and their bytes with `free`
// (the bindings' post-return function), so each `send` carries its own
// malloc'd buffer, never empty (post-return frees only non-empty lists). A
// received chunk that starts a request is moved out of its event rather
// than copied.

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "conn_events.h"

typedef exports_sockgate_events_handler_list_event_t events_t;
typedef exports_sockgate_events_handler_list_action_t actions_t;
typedef sockgate_events_types_event_t event_t;
typedef sockgate_events_types_action_t action_t;

// Largest request head (request line plus headers) accepted; a client that
// sends more gets `431` and the connection is closed.
#define MAX_HEAD (16 * 1024)
// Largest request body accepted (it is read and discarded).
#define MAX_BODY (1024 * 1024)

static const char PAGE[] =
    "<!doctype html>\n<html><head><title>Hello from sockgate</title></head>"
    "<body><h1>Hello from sockgate</h1><p>Served by a WebAssembly component.</p></body></html>\n";

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

static void *xcalloc(size_t count, size_t size) {
  void *p = calloc(count, size);
  if (p == NULL) {
    abort();
  }
  return p;
}

// --- The actions of one call -------------------------------------------

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

// --- A growable byte string, for the responses ---------------------------

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
    size_t cap = b->cap ? b->cap * 2 : 512;
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
static void put_size(bytes_t *b, size_t n) {
  char digits[24];
  size_t at = sizeof digits;
  do {
    digits[--at] = (char)('0' + n % 10);
    n /= 10;
  } while (n > 0);
  put(b, digits + at, sizeof digits - at);
}

// --- Connection state --------------------------------------------------------

// A connection the guest keeps something for.
typedef struct {
  uint64_t conn;
  // Whether this slot of the table holds a connection.
  bool used;
  // Answered for the last time and shut down: whatever else it sends is
  // ignored. Otherwise `buf` holds the start of a request that is not
  // complete yet.
  bool done;
  uint8_t *buf;
  size_t len;
} conn_state_t;

// Open addressing with linear probing; the capacity is a power of two (or
// 0: no table) and at most half the slots are used, so probes stay short.
static conn_state_t *table;
static size_t table_cap;
static size_t table_len;

// Connection ids are sequential: mix their bits so that they spread over
// the table (splitmix64's finalizer).
static size_t slot_of(uint64_t conn) {
  conn ^= conn >> 30;
  conn *= 0xbf58476d1ce4e5b9u;
  conn ^= conn >> 27;
  conn *= 0x94d049bb133111ebu;
  conn ^= conn >> 31;
  return (size_t)conn & (table_cap - 1);
}

static void table_resize(size_t cap) {
  conn_state_t *old = table;
  size_t old_cap = table_cap;
  table = cap ? xcalloc(cap, sizeof(conn_state_t)) : NULL;
  table_cap = cap;
  for (size_t i = 0; i < old_cap; i++) {
    if (old[i].used) {
      size_t at = slot_of(old[i].conn);
      while (table[at].used) {
        at = (at + 1) & (cap - 1);
      }
      table[at] = old[i];
    }
  }
  free(old);
}

static conn_state_t *table_find(uint64_t conn) {
  if (table_len == 0) {
    return NULL;
  }
  for (size_t at = slot_of(conn); table[at].used; at = (at + 1) & (table_cap - 1)) {
    if (table[at].conn == conn) {
      return &table[at];
    }
  }
  return NULL;
}

// Adds `conn` (not in the table) with no state yet; the pointer is valid
// until the table next changes.
static conn_state_t *table_insert(uint64_t conn) {
  if ((table_len + 1) * 2 > table_cap) {
    table_resize(table_cap ? table_cap * 2 : 16);
  }
  size_t at = slot_of(conn);
  while (table[at].used) {
    at = (at + 1) & (table_cap - 1);
  }
  table[at] = (conn_state_t){.conn = conn, .used = true};
  table_len++;
  return &table[at];
}

// Removes the entry `state` points to, releasing its buffer.
static void table_remove(conn_state_t *state) {
  free(state->buf);
  size_t hole = (size_t)(state - table);
  table[hole].used = false;
  table_len--;
  // Backward-shift deletion instead of tombstones: every entry after the
  // hole that could live in it moves up, so lookups never need to skip
  // deleted slots and the table never fills with them.
  for (size_t at = (hole + 1) & (table_cap - 1); table[at].used; at = (at + 1) & (table_cap - 1)) {
    size_t home = slot_of(table[at].conn);
    // Movable unless its home lies cyclically in (hole, at].
    bool stays = hole <= at ? (hole < home && home <= at) : (hole < home || home <= at);
    if (!stays) {
      table[hole] = table[at];
      table[at].used = false;
      hole = at;
    }
  }
  // Give memory back as connections finish: an idle gateway holds no
  // table at all, and a burst of partial requests does not keep its size.
  if (table_len == 0) {
    table_resize(0);
  } else if (table_cap > 16 && table_len * 8 <= table_cap) {
    table_resize(table_cap / 2);
  }
}

// --- Parsing -------------------------------------------------------------------

// A byte string inside the request.
typedef struct {
  const uint8_t *ptr;
  size_t len;
} slice_t;

static bool slice_eq(slice_t s, const char *text) {
  return s.len == strlen(text) && memcmp(s.ptr, text, s.len) == 0;
}

static bool slice_eq_ignore_ascii_case(slice_t s, const char *text) {
  if (s.len != strlen(text)) {
    return false;
  }
  for (size_t i = 0; i < s.len; i++) {
    uint8_t a = s.ptr[i], b = (uint8_t)text[i];
    if (a >= 'A' && a <= 'Z') a += 'a' - 'A';
    if (b >= 'A' && b <= 'Z') b += 'a' - 'A';
    if (a != b) {
      return false;
    }
  }
  return true;
}

// Where `needle` first occurs in `s`, or SIZE_MAX.
static size_t find(slice_t s, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= s.len; i++) {
    if (memcmp(s.ptr + i, needle, n) == 0) {
      return i;
    }
  }
  return SIZE_MAX;
}

// Whether `s` is valid UTF-8, as Rust's `str::from_utf8` decides (no
// overlong forms, no surrogates, nothing past U+10FFFF): the Rust guest
// refuses any other head with 400.
static bool valid_utf8(slice_t s) {
  size_t i = 0;
  while (i < s.len) {
    uint8_t c = s.ptr[i];
    size_t more;
    uint32_t cp, min;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      more = 1, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      more = 2, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      more = 3, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (s.len - i <= more) {
      return false;
    }
    for (size_t k = 1; k <= more; k++) {
      if ((s.ptr[i + k] & 0xc0) != 0x80) {
        return false;
      }
      cp = (cp << 6) | (s.ptr[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += more + 1;
  }
  return true;
}

// Rust's `char::is_whitespace` (Unicode White_Space), which `str::trim`
// strips: the Rust guest reads `connection:\u00a0close` as `close`, so
// this one does too.
static bool is_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
         cp == 0x205f || cp == 0x3000;
}

// Decodes the character of valid UTF-8 at `p`, setting `*len` to its size.
static uint32_t decode(const uint8_t *p, size_t *len) {
  if (p[0] < 0x80) {
    *len = 1;
    return p[0];
  }
  size_t more = (p[0] & 0xe0) == 0xc0 ? 1 : (p[0] & 0xf0) == 0xe0 ? 2 : 3;
  uint32_t cp = p[0] & (0x3f >> more);
  for (size_t k = 1; k <= more; k++) {
    cp = (cp << 6) | (p[k] & 0x3f);
  }
  *len = more + 1;
  return cp;
}

// `str::trim` on valid UTF-8.
static slice_t trim(slice_t s) {
  size_t n;
  while (s.len > 0 && is_whitespace(decode(s.ptr, &n))) {
    s.ptr += n;
    s.len -= n;
  }
  while (s.len > 0) {
    size_t start = s.len - 1;
    while ((s.ptr[start] & 0xc0) == 0x80) {
      start--;
    }
    if (!is_whitespace(decode(s.ptr + start, &n))) {
      break;
    }
    s.len = start;
  }
  return s;
}

// Rust's `usize::from_str` (usize is 32 bits on wasm32, as size_t is here):
// ASCII digits after an optional `+`, and no overflow.
static bool parse_size(slice_t s, size_t *out) {
  if (s.len > 1 && s.ptr[0] == '+') {
    s.ptr++;
    s.len--;
  }
  if (s.len == 0) {
    return false;
  }
  size_t n = 0;
  for (size_t i = 0; i < s.len; i++) {
    if (s.ptr[i] < '0' || s.ptr[i] > '9') {
      return false;
    }
    size_t digit = s.ptr[i] - '0';
    if (n > (SIZE_MAX - digit) / 10) {
      return false;
    }
    n = n * 10 + digit;
  }
  *out = n;
  return true;
}

// What to do with one parsed request.
typedef enum {
  // Not enough bytes yet.
  INCOMPLETE,
  // A full request head of `head_len` bytes with a body of `body_len`.
  REQUEST,
  // A request we refuse, with the status line to send before closing.
  REFUSE,
} parsed_kind_t;

typedef struct {
  parsed_kind_t kind;
  size_t head_len;
  size_t body_len;
  bool close;
  bool method_head;
  const char *status;
} parsed_t;

static parsed_t refuse(const char *status) {
  return (parsed_t){.kind = REFUSE, .status = status};
}

// Parses the request at the start of `buf`.
static parsed_t parse(slice_t buf) {
  size_t end = find(buf, "\r\n\r\n");
  if (end == SIZE_MAX) {
    return buf.len > MAX_HEAD ? refuse("431 Request Header Fields Too Large")
                              : (parsed_t){.kind = INCOMPLETE};
  }
  slice_t head = {buf.ptr, end};
  if (!valid_utf8(head)) {
    return refuse("400 Bad Request");
  }

  // The request line: exactly three parts separated by single spaces.
  size_t line_end = find(head, "\r\n");
  slice_t request_line = {head.ptr, line_end == SIZE_MAX ? head.len : line_end};
  slice_t parts[3];
  size_t count = 0;
  size_t from = 0;
  for (size_t i = 0; i <= request_line.len; i++) {
    if (i == request_line.len || request_line.ptr[i] == ' ') {
      if (count == 3) {
        return refuse("400 Bad Request");
      }
      parts[count++] = (slice_t){request_line.ptr + from, i - from};
      from = i + 1;
    }
  }
  if (count != 3) {
    return refuse("400 Bad Request");
  }
  parsed_t request = {.kind = REQUEST, .head_len = end + 4};
  request.method_head = slice_eq(parts[0], "HEAD");
  if (slice_eq(parts[2], "HTTP/1.1")) {
    request.close = false;
  } else if (slice_eq(parts[2], "HTTP/1.0")) {
    request.close = true;
  } else {
    return refuse("505 HTTP Version Not Supported");
  }

  // The headers, one per `\r\n`-separated line after the request line.
  size_t at = line_end == SIZE_MAX ? head.len : line_end + 2;
  while (line_end != SIZE_MAX) {
    slice_t rest = {head.ptr + at, head.len - at};
    line_end = find(rest, "\r\n");
    slice_t line = {rest.ptr, line_end == SIZE_MAX ? rest.len : line_end};
    at += line.len + 2;

    const uint8_t *colon = memchr(line.ptr, ':', line.len);
    if (colon == NULL) {
      return refuse("400 Bad Request");
    }
    // As the Rust guest: the name is not trimmed, the value is.
    slice_t name = {line.ptr, (size_t)(colon - line.ptr)};
    slice_t value = trim((slice_t){colon + 1, line.len - name.len - 1});
    if (slice_eq_ignore_ascii_case(name, "content-length")) {
      size_t n;
      if (!parse_size(value, &n)) {
        return refuse("400 Bad Request");
      }
      if (n > MAX_BODY) {
        return refuse("413 Content Too Large");
      }
      request.body_len = n;
    } else if (slice_eq_ignore_ascii_case(name, "transfer-encoding")) {
      return refuse("501 Not Implemented");
    } else if (slice_eq_ignore_ascii_case(name, "connection")) {
      if (slice_eq_ignore_ascii_case(value, "close")) {
        request.close = true;
      } else if (slice_eq_ignore_ascii_case(value, "keep-alive")) {
        request.close = false;
      }
    }
  }
  return request;
}

// Appends a response to `out`.
static void response(bytes_t *out, const char *status, const char *body, bool close,
                     bool include_body) {
  put_str(out, "HTTP/1.1 ");
  put_str(out, status);
  put_str(out, "\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: ");
  put_size(out, strlen(body));
  put_str(out, "\r\nconnection: ");
  put_str(out, close ? "close" : "keep-alive");
  put_str(out, "\r\n\r\n");
  if (include_body) {
    put_str(out, body);
  }
}

// Answers every complete request at the start of `buf` (pipelining):
// appends the responses to `replies`, sets `*used` to how many bytes of
// `buf` they took, and returns whether the connection is to be closed after
// them.
static bool serve(slice_t buf, bytes_t *replies, size_t *used) {
  *used = 0;
  for (;;) {
    parsed_t parsed = parse((slice_t){buf.ptr + *used, buf.len - *used});
    switch (parsed.kind) {
      case INCOMPLETE:
        return false;
      case REFUSE:
        response(replies, parsed.status, "", true, true);
        return true;
      case REQUEST:
        // (Both at most 16 KiB + 1 MiB: the sum cannot overflow.)
        if (buf.len - *used < parsed.head_len + parsed.body_len) {
          return false;
        }
        *used += parsed.head_len + parsed.body_len;
        response(replies, "200 OK", PAGE, parsed.close, !parsed.method_head);
        if (parsed.close) {
          return true;
        }
        break;
    }
  }
}

// --- Events ------------------------------------------------------------------

// A connection sent bytes: answer the requests they complete. Takes the
// bytes out of `received` when they start the buffer.
static void receive(action_list_t *actions, sockgate_events_types_received_t *received) {
  uint64_t conn = received->conn;
  conn_state_t *state = table_find(conn);
  if ((state != NULL && state->done) || received->bytes.len == 0) {
    return;
  }
  uint8_t *buf;
  size_t len;
  if (state == NULL) {
    buf = received->bytes.ptr;
    len = received->bytes.len;
    received->bytes.ptr = NULL;
    received->bytes.len = 0;
  } else {
    len = state->len + received->bytes.len;
    buf = xrealloc(state->buf, len);
    memcpy(buf + state->len, received->bytes.ptr, received->bytes.len);
    state->buf = buf;
    state->len = len;
  }

  bytes_t replies = {0};
  size_t used;
  bool close = serve((slice_t){buf, len}, &replies, &used);
  if (replies.len > 0) {
    push_send(actions, conn, replies.ptr, replies.len);
  }

  if (close) {
    push_shutdown(actions, conn);
    if (state == NULL) {
      free(buf);
      state = table_insert(conn);
    } else {
      free(state->buf);
    }
    state->buf = NULL;
    state->len = 0;
    state->done = true;
  } else if (used < len) {
    // Keep the incomplete request only, not what was answered before it.
    memmove(buf, buf + used, len - used);
    buf = xrealloc(buf, len - used);
    if (state == NULL) {
      state = table_insert(conn);
    }
    state->buf = buf;
    state->len = len - used;
  } else if (state != NULL) {
    table_remove(state);
  } else {
    free(buf);
  }
}

// A connection finished sending: finish ours too, unless that is done
// already (an incomplete request is dropped).
static void end(action_list_t *actions, uint64_t conn) {
  conn_state_t *state = table_find(conn);
  bool done = state != NULL && state->done;
  if (state != NULL) {
    table_remove(state);
  }
  if (!done) {
    push_shutdown(actions, conn);
  }
}

// Answers the requests the batch completes, and finishes sending to clients
// that finished sending.
void exports_sockgate_events_handler_handle(events_t *events, actions_t *ret) {
  action_list_t actions = {0};
  for (size_t i = 0; i < events->len; i++) {
    event_t *event = &events->ptr[i];
    switch (event->tag) {
      case SOCKGATE_EVENTS_TYPES_EVENT_RECEIVED:
        receive(&actions, &event->val.received);
        break;
      case SOCKGATE_EVENTS_TYPES_EVENT_ENDED:
        end(&actions, event->val.ended);
        break;
      case SOCKGATE_EVENTS_TYPES_EVENT_CLOSED: {
        conn_state_t *state = table_find(event->val.closed.conn);
        if (state != NULL) {
          table_remove(state);
        }
        break;
      }
      default:
        break;
    }
  }
  // Frees what was not moved out (moved-out fields were emptied).
  exports_sockgate_events_handler_list_event_free(events);
  if (actions.len == 0) {
    // The post-return function frees only a non-empty list.
    free(actions.ptr);
    actions.ptr = NULL;
  }
  ret->ptr = actions.ptr;
  ret->len = actions.len;
}
