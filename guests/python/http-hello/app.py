"""Hello over HTTP: a `wasi:http` 0.3 component (world `wasi:http/service`)
in Python, which the gateway serves on a long-lived instance, many requests
at once.

Built with componentize-py (see guests/build-lang.sh), against the WASI 0.3
HTTP interfaces in the gateway's wit/http/:

    componentize-py -d ../../../wit/http -w wasi:http/service@0.3.0 componentize app -o http-hello.wasm
"""

import componentize_py_async_support
from componentize_py_async_support.streams import ByteStreamWriter
from componentize_py_types import Ok

from wit_world import byte_stream, exports
from wit_world import result_option_wasi_http_types_fields_wasi_http_types_error_code_future as trailers_future
from wit_world.imports.wasi_http_types import Fields, Request, Response

# Requests this instance served: state shared by every request.
served = 0


class Handler(exports.Handler):
    """The `wasi:http/handler` export: one call per request."""

    async def handle(self, request: Request) -> Response:
        global served
        served += 1
        path = request.get_path_with_query() or "/"
        page = (
            "<!doctype html>\n<html><head><title>Hello from Python</title></head>"
            f"<body><h1>Hello from Python</h1><p>{_escape(path)} is request {served} "
            "of this instance.</p></body></html>\n"
        ).encode()
        headers = Fields.from_list([
            ("content-type", b"text/html; charset=utf-8"),
            ("content-length", str(len(page)).encode()),
        ])
        tx, contents = byte_stream()
        trailers_tx, trailers = trailers_future(lambda: Ok(None))
        # No trailers: closing the writer sends the default, `Ok(None)`.
        with trailers_tx:
            pass
        response, _sent = Response.new(headers, contents, trailers)
        # The page goes out once the response is returned.
        componentize_py_async_support.spawn(_send(tx, page))
        return response


async def _send(tx: ByteStreamWriter, page: bytes) -> None:
    with tx:
        await tx.write_all(page)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
