"""An HTTP app: a `wasi:http` 0.3 component (world `wasi:http/service`) in
Python. The gateway calls `handle` for every request, many at once on one
instance, over HTTP/1.1, HTTP/2 and HTTP/3; the request's URI is absolute
and the client's address is in the `sockgate-client-addr` header."""

import componentize_py_async_support
from componentize_py_async_support.streams import ByteStreamWriter
from componentize_py_types import Ok

from wit_world import byte_stream, exports
from wit_world import result_option_wasi_http_types_fields_wasi_http_types_error_code_future as trailers_future
from wit_world.imports.wasi_http_types import Fields, Request, Response


class Handler(exports.Handler):
    """The `wasi:http/handler` export: one call per request."""

    async def handle(self, request: Request) -> Response:
        path = request.get_path_with_query() or "/"
        page = f"Hello from {{name}}: you asked for {path}\n".encode()
        headers = Fields.from_list([
            ("content-type", b"text/plain; charset=utf-8"),
            ("content-length", str(len(page)).encode()),
        ])
        tx, contents = byte_stream()
        trailers_tx, trailers = trailers_future(lambda: Ok(None))
        # No trailers: closing the writer sends the default, `Ok(None)`.
        with trailers_tx:
            pass
        response, _sent = Response.new(headers, contents, trailers)
        # The body is written once the response is returned.
        componentize_py_async_support.spawn(_send(tx, page))
        return response


async def _send(tx: ByteStreamWriter, page: bytes) -> None:
    with tx:
        await tx.write_all(page)
