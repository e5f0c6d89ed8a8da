"""Events echo: the `conn-events` world (wit/events/). Sends every byte a
client sends straight back, and shuts down its sending side when the client
finishes its own, so a client that half-closes still gets all its bytes and
then end of stream.

It keeps no state at all: the gateway does the I/O and the flow control
(above the send queue's high-water mark it stops reading from the peer until
the queue drains), so the `writable`, `opened` and `closed` events need no
answer here.

Built with componentize-py (see guests/build-lang.sh):

    componentize-py -d ../../../wit/events -w sockgate:events/conn-events componentize app -o events-echo.wasm
"""

from typing import List

from wit_world import exports
from wit_world.imports.types import (
    Action,
    Action_Send,
    Action_Shutdown,
    Event,
    Event_Ended,
    Event_Received,
    Send,
)


class Handler(exports.Handler):
    """The `handler` export: one plain call per batch of events."""

    def handle(self, events: List[Event]) -> List[Action]:
        """Answers each `received` with a `send` of the same bytes and each
        `ended` with a `shutdown`."""
        actions: List[Action] = []
        for event in events:
            if isinstance(event, Event_Received):
                received = event.value
                actions.append(Action_Send(Send(received.conn, received.bytes)))
            elif isinstance(event, Event_Ended):
                actions.append(Action_Shutdown(event.value))
        return actions
