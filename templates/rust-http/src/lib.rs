//! An HTTP app: a `wasi:http` 0.3 component (world `wasi:http/service`).
//! The gateway calls `handle` for every request, many at once on one
//! instance, over HTTP/1.1, HTTP/2 and HTTP/3; the request's URI is
//! absolute (`https://{{name}}.example.org/path`) and the client's address
//! is in the `sockgate-client-addr` header.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

wasip3::http::service::export!(App);

struct App;

impl wasip3::exports::http::handler::Guest for App {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_else(|| "/".into());
        let page = format!("Hello from {{name}}: you asked for {path}\n");
        let headers = Fields::from_list(&[
            ("content-type".to_owned(), b"text/plain; charset=utf-8".to_vec()),
            ("content-length".to_owned(), page.len().to_string().into_bytes()),
        ])
        .map_err(|e| ErrorCode::InternalError(Some(format!("{e:?}"))))?;
        let (mut body, contents) = wit_stream::new();
        let (_, trailers) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(contents), trailers);
        // The body is written once the response is returned.
        wasip3::spawn_local(async move {
            body.write_all(page.into_bytes()).await;
        });
        Ok(response)
    }
}
