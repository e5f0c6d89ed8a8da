//! The HTTP benchmark's `wasmtime serve` baseline: the same hello page as
//! the `http-hello` guest, written the way a `wasi:http` 0.2 proxy component
//! is (`wasmtime serve` instantiates it once per request). Not a sockgate
//! guest: it implements `wasi:http/proxy`, not `conn-handler`.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// The page `http-hello` serves, byte for byte.
const PAGE: &str = "<!doctype html>\n<html><head><title>Hello from sockgate</title></head>\
<body><h1>Hello from sockgate</h1><p>Served by a WebAssembly component.</p></body></html>\n";

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::new();
        // Header names and values are constants: these cannot fail.
        let _ = headers.append("content-type", b"text/html; charset=utf-8");
        let _ = headers.append("content-length", PAGE.len().to_string().as_bytes());
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        let Ok(mut out) = body.write() else {
            return;
        };
        if out.write_all(PAGE.as_bytes()).is_err() || std::io::Write::flush(&mut out).is_err() {
            return;
        }
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}
