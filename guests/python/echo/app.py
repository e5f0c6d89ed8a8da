"""Echo: sends every byte a client sends straight back, and closes its
sending side when the client closes its own.

Built with componentize-py (see guests/build-lang.sh):

    componentize-py -d ../../../wit -w sockgate:gateway/conn-handler componentize app -o echo.wasm
"""

import componentize_py_async_support
from componentize_py_async_support.streams import ByteStreamReader, ByteStreamWriter

from wit_world import byte_stream
from wit_world import exports

# Bytes read per `read` call: large enough for bulk transfers, small enough
# to keep thousands of idle connections cheap.
READ_CHUNK = 64 * 1024


class Handler(exports.Handler):
    """The `handler` export: one call per client connection."""

    async def handle(self, id: int, rx: ByteStreamReader) -> ByteStreamReader:
        # `id` gives the client's address through `connection.info`; echo
        # does not need it.
        tx, out = byte_stream()
        # Return the stream at once; keep serving the connection in a task.
        componentize_py_async_support.spawn(_echo(rx, tx))
        return out


async def _echo(rx: ByteStreamReader, tx: ByteStreamWriter) -> None:
    # Leaving the `with` drops both ends: the client sees end of stream.
    with rx, tx:
        while not rx.writer_dropped:
            data = await rx.read(READ_CHUNK)
            if data:
                await tx.write_all(data)
                if tx.reader_dropped:
                    return
