// {{name}}: a sockgate guest. It echoes every byte a client sends, and
// closes its sending side when the client closes its own. Edit `run` (the
// per-connection state machine) to make it yours.
//
// C has no async runtime: `handle` is a callback-style async export (the
// component model calls `handle` once, then `handle_callback` for every
// event the task waits for), so each connection is a small state machine
// kept in the task's context slot. `conn_handler.h` is generated from `wit/`
// by `sockgate c-guest bindings` (see build.sh).

#include <stdlib.h>

#include "conn_handler.h"

// Bytes read per `read` call: large enough for bulk transfers, small enough
// to keep thousands of connections cheap.
#define READ_CHUNK (16 * 1024)

typedef exports_sockgate_gateway_handler_stream_u8_t reader_t;
typedef exports_sockgate_gateway_handler_stream_u8_writer_t writer_t;
typedef conn_handler_waitable_status_t status_t;

// One connection: what we read from the client and have not yet written
// back, and whether a read or a write is in flight.
typedef struct conn {
  reader_t rx;
  writer_t tx;
  conn_handler_waitable_set_t set;
  // Bytes [done, len) of buf are still to be written back.
  size_t len;
  size_t done;
  // The client closed its sending side: finish writing, then close ours.
  bool rx_ended;
  uint8_t buf[READ_CHUNK];
} conn_t;

// Ends the connection: dropping both ends closes it; the task exits.
static conn_handler_callback_code_t finish(conn_t *c) {
  exports_sockgate_gateway_handler_stream_u8_drop_readable(c->rx);
  exports_sockgate_gateway_handler_stream_u8_drop_writable(c->tx);
  conn_handler_waitable_set_drop(c->set);
  free(c);
  return CONN_HANDLER_CALLBACK_CODE_EXIT;
}

// Waits for the operation just started to complete, with `c` as the
// task's state.
static conn_handler_callback_code_t wait(conn_t *c) {
  conn_handler_context_set_0(c);
  return CONN_HANDLER_CALLBACK_CODE_WAIT(c->set);
}

// A read finished with `status`: queue the bytes for writing.
static void read_done(conn_t *c, status_t status) {
  c->len = CONN_HANDLER_WAITABLE_COUNT(status);
  c->done = 0;
  if (CONN_HANDLER_WAITABLE_STATE(status) != CONN_HANDLER_WAITABLE_COMPLETED) {
    c->rx_ended = true;
  }
}

// A write finished with `status`; returns false if the client went away.
static bool write_done(conn_t *c, status_t status) {
  c->done += CONN_HANDLER_WAITABLE_COUNT(status);
  return CONN_HANDLER_WAITABLE_STATE(status) == CONN_HANDLER_WAITABLE_COMPLETED;
}

// Moves the connection forward until an operation blocks (then waits for
// it) or the connection is over.
static conn_handler_callback_code_t run(conn_t *c) {
  for (;;) {
    if (c->done < c->len) {
      status_t status = exports_sockgate_gateway_handler_stream_u8_write(
          c->tx, c->buf + c->done, c->len - c->done);
      if (status == CONN_HANDLER_WAITABLE_STATUS_BLOCKED) {
        return wait(c);
      }
      if (!write_done(c, status)) {
        return finish(c);
      }
    } else if (c->rx_ended) {
      return finish(c);
    } else {
      status_t status = exports_sockgate_gateway_handler_stream_u8_read(c->rx, c->buf, READ_CHUNK);
      if (status == CONN_HANDLER_WAITABLE_STATUS_BLOCKED) {
        return wait(c);
      }
      read_done(c, status);
    }
  }
}

// Called once per client connection. `id` names the connection:
// `sockgate_gateway_connection_info(id, &info)` tells its peer address,
// transport, server name and ALPN.
conn_handler_callback_code_t exports_sockgate_gateway_handler_handle(uint64_t id, reader_t rx) {
  (void)id;
  conn_t *c = calloc(1, sizeof(conn_t));
  if (c == NULL) {
    abort();
  }
  c->rx = rx;
  // Return the stream to the client at once; keep serving it afterwards.
  reader_t out = exports_sockgate_gateway_handler_stream_u8_new(&c->tx);
  exports_sockgate_gateway_handler_handle_return(out);
  c->set = conn_handler_waitable_set_new();
  conn_handler_waitable_join(c->rx, c->set);
  conn_handler_waitable_join(c->tx, c->set);
  return run(c);
}

conn_handler_callback_code_t exports_sockgate_gateway_handler_handle_callback(
    conn_handler_event_t *event) {
  conn_t *c = conn_handler_context_get_0();
  switch (event->event) {
    case CONN_HANDLER_EVENT_STREAM_READ:
      read_done(c, event->code);
      break;
    case CONN_HANDLER_EVENT_STREAM_WRITE:
      if (!write_done(c, event->code)) {
        return finish(c);
      }
      break;
    default:
      // Nothing else is waited for; cancellation ends the connection.
      return finish(c);
  }
  return run(c);
}
