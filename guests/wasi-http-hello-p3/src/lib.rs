//! The HTTP hello page, as a `wasi:http` 0.3 component (world
//! `wasi:http/service`, export `wasi:http/handler@0.3.0`), written with the
//! `wasip3` crate the way any WASI 0.3 HTTP component is. The gateway
//! serves it on a long-lived instance, many requests at once; `wasmtime
//! serve` runs the same file in the benchmark.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

/// The page `http-hello` and `wasi-http-hello` serve, byte for byte.
const PAGE: &str = "<!doctype html>\n<html><head><title>Hello from sockgate</title></head>\
<body><h1>Hello from sockgate</h1><p>Served by a WebAssembly component.</p></body></html>\n";

wasip3::http::service::export!(Hello);

struct Hello;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        let headers = Fields::from_list(&[
            (
                "content-type".to_owned(),
                b"text/html; charset=utf-8".to_vec(),
            ),
            (
                "content-length".to_owned(),
                PAGE.len().to_string().into_bytes(),
            ),
        ])
        .map_err(|e| ErrorCode::InternalError(Some(format!("{e:?}"))))?;
        let (mut body, contents) = wit_stream::new();
        let (_, trailers) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(contents), trailers);
        // The page goes out once the response is returned: a task of the
        // instance writes it while the gateway sends the head.
        wasip3::spawn_local(async move {
            body.write_all(PAGE.as_bytes().to_vec()).await;
        });
        Ok(response)
    }
}
