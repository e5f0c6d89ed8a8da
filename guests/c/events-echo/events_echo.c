// Events echo: the `conn-events` world (wit/events/) in C. Sends every
// byte a client sends straight back, and shuts down its sending side when
// the client finishes its own, so a client that half-closes still gets all
// its bytes and then end of stream.
//
// No state and no I/O: the gateway calls `handle` with a batch of events
// and carries out the actions it returns. Flow control is the gateway's
// (above the send queue's high-water mark it stops reading from the peer),
// so `writable`, `opened` and `closed` need no answer here. Built by
// guests/build-lang.sh with clang (wasm32-wasi, reactor) and bindings from
// `wit-bindgen c`.
//
// Ownership, as the bindings define it: `handle` owns `events` and must
// free it; the gateway frees the returned actions (and the bytes they
// point to) with `free` once it has read them (the bindings' post-return
// function), so each received buffer is moved from its event into its
// `send` action without a copy.

#include <stdlib.h>

#include "conn_events.h"

typedef exports_sockgate_events_handler_list_event_t events_t;
typedef exports_sockgate_events_handler_list_action_t actions_t;
typedef sockgate_events_types_event_t event_t;
typedef sockgate_events_types_action_t action_t;

void exports_sockgate_events_handler_handle(events_t *events, actions_t *ret) {
  // At most one action per event.
  action_t *actions = malloc(events->len * sizeof(action_t));
  if (actions == NULL && events->len > 0) {
    abort();
  }
  size_t n = 0;
  for (size_t i = 0; i < events->len; i++) {
    event_t *event = &events->ptr[i];
    switch (event->tag) {
      case SOCKGATE_EVENTS_TYPES_EVENT_RECEIVED:
        actions[n].tag = SOCKGATE_EVENTS_TYPES_ACTION_SEND;
        actions[n].val.send.conn = event->val.received.conn;
        actions[n].val.send.bytes = event->val.received.bytes;
        n++;
        // Moved into the action: the event no longer owns the bytes.
        event->val.received.bytes.ptr = NULL;
        event->val.received.bytes.len = 0;
        break;
      case SOCKGATE_EVENTS_TYPES_EVENT_ENDED:
        actions[n].tag = SOCKGATE_EVENTS_TYPES_ACTION_SHUTDOWN;
        actions[n].val.shutdown = event->val.ended;
        n++;
        break;
      default:
        break;
    }
  }
  exports_sockgate_events_handler_list_event_free(events);
  if (n == 0) {
    // The post-return function frees only a non-empty list.
    free(actions);
    actions = NULL;
  }
  ret->ptr = actions;
  ret->len = n;
}
