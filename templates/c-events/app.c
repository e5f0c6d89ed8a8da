// {{name}}: a sockgate guest in the event world. It echoes every byte a
// client sends, and finishes its sending side when the client finishes its
// own. Edit `handle` to make it yours.
//
// The gateway does every read, write, timer and connect. It calls `handle`
// with a batch of events (for every connection of this instance that had
// something happen) and carries out the actions `handle` returns, in
// order. `handle` must not block: one instance serves every connection, so
// state kept in global variables is shared by all of them.
//
// Backpressure is the gateway's job: each connection's send queue has a
// high-water mark (64 KiB). Past it the gateway stops reading from that
// client until the queue drains, then sends a `writable` event; a guest
// that keeps queueing past the hard cap (1 MiB) has the connection closed.
// An echo never sends more than it received, so it can ignore `writable`.
//
// Memory: `handle` owns `events` and frees it; the returned actions, and
// the bytes of each `send`, are freed with `free` once the gateway has read
// them (by the bindings' post-return function). So the bytes of a
// `received` event can be moved into a `send` action without a copy.
// `conn_events.h` is generated from `wit/` by `sockgate c-guest bindings`
// (see build.sh).

#include <stdlib.h>

#include "conn_events.h"

typedef exports_sockgate_events_handler_list_event_t events_t;
typedef exports_sockgate_events_handler_list_action_t actions_t;
typedef sockgate_events_types_event_t event_t;
typedef sockgate_events_types_action_t action_t;

void exports_sockgate_events_handler_handle(events_t *events, actions_t *ret) {
  // This guest makes at most one action per event.
  action_t *actions = malloc(events->len * sizeof(action_t));
  if (actions == NULL && events->len > 0) {
    abort();
  }
  size_t n = 0;
  for (size_t i = 0; i < events->len; i++) {
    event_t *event = &events->ptr[i];
    switch (event->tag) {
      case SOCKGATE_EVENTS_TYPES_EVENT_OPENED:
        // A client connected: `event->val.opened` has its id, peer
        // address, transport, server name and ALPN. Nothing to do for an
        // echo (send a greeting here, or set a timer).
        break;
      case SOCKGATE_EVENTS_TYPES_EVENT_RECEIVED:
        // Bytes from a client (never empty; no message boundaries): send
        // them back, moving the buffer into the action.
        actions[n].tag = SOCKGATE_EVENTS_TYPES_ACTION_SEND;
        actions[n].val.send.conn = event->val.received.conn;
        actions[n].val.send.bytes = event->val.received.bytes;
        n++;
        event->val.received.bytes.ptr = NULL;
        event->val.received.bytes.len = 0;
        break;
      case SOCKGATE_EVENTS_TYPES_EVENT_ENDED:
        // The client finished sending: once everything queued is out, it
        // sees end of stream from us too, and the connection closes.
        actions[n].tag = SOCKGATE_EVENTS_TYPES_ACTION_SHUTDOWN;
        actions[n].val.shutdown = event->val.ended;
        n++;
        break;
      case SOCKGATE_EVENTS_TYPES_EVENT_WRITABLE:
        // A send queue that passed its high-water mark drained: send more
        // now, if there is more.
        break;
      case SOCKGATE_EVENTS_TYPES_EVENT_CLOSED:
        // A connection is gone (`event->val.closed.reason` says why):
        // forget whatever was kept for it.
        break;
      default:
        // Timers and outbound connections this guest never asks for.
        break;
    }
  }
  // Frees every event's contents (the moved buffers are NULL now).
  exports_sockgate_events_handler_list_event_free(events);
  if (n == 0) {
    // The post-return function frees only a non-empty list.
    free(actions);
    actions = NULL;
  }
  ret->ptr = actions;
  ret->len = n;
}
