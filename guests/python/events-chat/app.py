"""Events chat: the chat room of `guests/python/chat` in the `conn-events`
world (wit/events/), with the same wire protocol. Every line a client sends
goes to every other client in the room (not back to the sender), prefixed
with the sender's address; a client that joins is greeted with
`* welcome <address>, <n> in the room`. One instance serves every client, so
the room is ordinary module state.

A client that does not read is not buffered for here: the gateway queues
what is sent to it and closes it once its queue passes the hard cap, which
the room then reports as the client leaving.

Built with componentize-py (see guests/build-lang.sh).
"""

from typing import List, Optional

from wit_world import exports
from wit_world.imports.types import (
    Action,
    Action_Send,
    Action_Shutdown,
    CloseReason,
    CloseReason_Aborted,
    CloseReason_Limit,
    CloseReason_Reset,
    Event,
    Event_Closed,
    Event_Ended,
    Event_Opened,
    Event_Received,
    Send,
)

# Longest line accepted; longer input is cut into pieces of this size so a
# client without newlines cannot grow the instance's memory.
MAX_LINE = 4096


class Member:
    """A client in the room."""

    def __init__(self, peer: str) -> None:
        # The client's address, which prefixes its lines.
        self.peer = peer
        # Bytes received after the last complete line.
        self.pending = bytearray()


# Connection id -> client, for every client in the room.
ROOM: dict[int, Member] = {}


def broadcast(sender: int, line: bytes, actions: List[Action]) -> None:
    """Queues `line` for every client in the room except `sender`."""
    for conn in ROOM:
        if conn != sender:
            actions.append(Action_Send(Send(conn, line)))


def say(sender: int, peer: str, piece: bytes, actions: List[Action]) -> None:
    """Broadcasts `piece` (a line, or a piece of an overlong one, without its
    newline) from `sender`, prefixed with its address `peer`."""
    broadcast(sender, peer.encode() + b": " + piece + b"\n", actions)


def join(conn: int, peer: str, actions: List[Action]) -> None:
    """A client joined: greet it and put it in the room."""
    # The welcome line also tells the client it is in the room now.
    welcome = f"* welcome {peer}, {len(ROOM) + 1} in the room\n"
    actions.append(Action_Send(Send(conn, welcome.encode())))
    print(f"{peer}: joined (connection {conn})", flush=True)
    ROOM[conn] = Member(peer)


def receive(conn: int, data: bytes, actions: List[Action]) -> None:
    """A client sent `data`: broadcast every line it completes."""
    member = ROOM.get(conn)
    if member is None:
        return
    pending = member.pending
    pending += data
    start = 0
    while True:
        end = pending.find(b"\n", start)
        if end >= 0:
            say(conn, member.peer, bytes(pending[start:end]), actions)
            start = end + 1
        elif len(pending) - start >= MAX_LINE:
            say(conn, member.peer, bytes(pending[start : start + MAX_LINE]), actions)
            start += MAX_LINE
        else:
            break
    del pending[:start]


def leave(conn: int, reason: Optional[CloseReason], actions: List[Action]) -> None:
    """A client left: take it out of the room, and if its bytes stopped early
    (a QUIC stream reset, a lost connection, a limit) tell the others, since
    it may have been cut off mid-line."""
    member = ROOM.pop(conn, None)
    if member is None:
        return
    peer = member.peer
    why: Optional[str] = None
    if isinstance(reason, CloseReason_Reset):
        why = f"stream reset, code {reason.value}"
    elif isinstance(reason, (CloseReason_Aborted, CloseReason_Limit)):
        why = reason.value
    if why is not None:
        broadcast(conn, f"* {peer} left: {why}\n".encode(), actions)
        print(f"{peer}: left: {why}", flush=True)
    else:
        print(f"{peer}: left", flush=True)


class Handler(exports.Handler):
    """The `handler` export: one plain call per batch of events."""

    def handle(self, events: List[Event]) -> List[Action]:
        """Runs each event against the room and returns the lines to send."""
        actions: List[Action] = []
        for event in events:
            if isinstance(event, Event_Opened):
                join(event.value.id, event.value.peer, actions)
            elif isinstance(event, Event_Received):
                receive(event.value.conn, event.value.bytes, actions)
            elif isinstance(event, Event_Ended):
                # The client finished sending: it leaves (a partial last line
                # is dropped), and our side finishes too.
                leave(event.value, None, actions)
                actions.append(Action_Shutdown(event.value))
            elif isinstance(event, Event_Closed):
                leave(event.value.conn, event.value.reason, actions)
        return actions
