"""Chat: a line-based chat room. Every line a client sends goes to every
other connected client, prefixed with the sender's address; a client that
joins is greeted with `* welcome <address>, <n> in the room`. One instance
serves every client, so the room is ordinary module state.

Built with componentize-py (see guests/build-lang.sh).

componentize-py runs each export call as its own component-model task with
its own event loop state: a coroutine parked on an `asyncio` future is only
resumed when its own task receives an event. So a client's lines are not
handed to a writer coroutine of the receiving connection (which would sleep
until that client sends something); instead whoever queues a line for an
idle client starts the coroutine that writes it, in its own task.
"""

import ipaddress
from collections import deque

import componentize_py_async_support
from componentize_py_async_support.streams import ByteStreamReader, ByteStreamWriter

from wit_world import byte_stream
from wit_world import exports
from wit_world.imports import connection
from wit_world.imports.wasi_sockets_types import IpSocketAddress, IpSocketAddress_Ipv4

# Lines queued for one client before further lines to it are dropped: a
# client that does not read must not make the room buffer without bound.
QUEUE_PER_CLIENT = 256
# Longest line accepted; longer input is cut into pieces of this size so a
# client without newlines cannot grow the instance's memory.
MAX_LINE = 4096


class Member:
    """A client in the room: the stream to it and the lines queued for it."""

    def __init__(self, tx: ByteStreamWriter) -> None:
        self.tx = tx
        self.queue: deque[bytes] = deque()
        self.writing = False
        self.leaving = False

    def send(self, line: bytes) -> None:
        """Queues `line`; drops it if the queue is full or the client left."""
        if self.leaving or self.tx.reader_dropped or len(self.queue) >= QUEUE_PER_CLIENT:
            return
        self.queue.append(line)
        if not self.writing:
            self.writing = True
            componentize_py_async_support.spawn(self._write_queued())

    def leave(self) -> None:
        """Delivers what is queued, then closes the stream to the client."""
        self.leaving = True
        if not self.writing:
            self._close()

    async def _write_queued(self) -> None:
        while self.queue and not self.tx.reader_dropped:
            await self.tx.write_all(self.queue.popleft())
        self.queue.clear()
        self.writing = False
        if self.leaving:
            self._close()

    def _close(self) -> None:
        # Leaving the writer's context drops it: the client sees end of stream.
        with self.tx:
            pass


# Connection id -> member, for every client in the room.
ROOM: dict[int, Member] = {}


def broadcast(sender: int, line: bytes) -> None:
    """Queues `line` for every client except `sender`."""
    for conn_id, member in ROOM.items():
        if conn_id != sender:
            member.send(line)


def format_addr(addr: IpSocketAddress) -> str:
    """Formats a `wasi:sockets` address like Rust's `SocketAddr`."""
    if isinstance(addr, IpSocketAddress_Ipv4):
        return "{}.{}.{}.{}:{}".format(*addr.value.address, addr.value.port)
    groups = addr.value.address
    packed = b"".join(group.to_bytes(2, "big") for group in groups)
    ip = ipaddress.IPv6Address(packed)
    text = f"::ffff:{ip.ipv4_mapped}" if ip.ipv4_mapped else ip.compressed
    return f"[{text}]:{addr.value.port}"


class Handler(exports.Handler):
    """The `handler` export: one call per client connection."""

    async def handle(self, id: int, rx: ByteStreamReader) -> ByteStreamReader:
        tx, out = byte_stream()
        member = Member(tx)
        # The gateway tells the client's address on request; `None` if the
        # connection is already gone.
        info = connection.info(id)
        peer = format_addr(info.peer) if info is not None else f"connection {id}"
        # The welcome line also tells the client it is in the room now.
        member.send(f"* welcome {peer}, {len(ROOM) + 1} in the room\n".encode())
        ROOM[id] = member
        prefix = f"{peer}: "
        print(f"{prefix}joined (connection {id})", flush=True)
        componentize_py_async_support.spawn(_relay(id, prefix, rx, member))
        return out


async def _relay(conn_id: int, prefix: str, rx: ByteStreamReader, member: Member) -> None:
    """Splits the client's bytes into lines and broadcasts them until the
    client closes its sending side, then takes the client out of the room."""
    head = prefix.encode()
    pending = bytearray()
    with rx:
        while not rx.writer_dropped:
            pending += await rx.read(MAX_LINE)
            while (end := pending.find(b"\n")) >= 0:
                broadcast(conn_id, head + bytes(pending[: end + 1]))
                del pending[: end + 1]
            if len(pending) >= MAX_LINE:
                broadcast(conn_id, head + bytes(pending) + b"\n")
                pending.clear()
    del ROOM[conn_id]
    member.leave()
    print(f"{prefix}left", flush=True)
