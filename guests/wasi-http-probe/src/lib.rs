//! A `wasi:http` 0.3 service (world `wasi:http/service`) for the gateway's
//! tests: each path exercises one thing the gateway promises.
//!
//! | path | answer |
//! |---|---|
//! | `/` | `hello from p3` |
//! | `/info` | the request as the guest sees it: method, scheme, authority, path, headers |
//! | `/echo` | the request body, streamed back |
//! | `/big?bytes=N` | N bytes of `x` |
//! | `/count` | how many requests this instance has served (state shared across requests) |
//! | `/sleep?ms=N` | `slept` after N ms (the gateway's request timeout) |
//! | `/status?code=N` | an empty response with status N |
//! | `/fetch?url=URL` | the status and body of a GET of URL, made through `wasi:http/client` |
//! | `/trap` | a trap (a Rust panic) |
//! | `/spin` | a loop that never ends (the CPU budget) |
//!
//! Anything else: 404.

use std::sync::atomic::{AtomicU64, Ordering};

use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Scheme};
use wasip3::wit_bindgen::{StreamReader, StreamResult};
use wasip3::{wit_future, wit_stream};

wasip3::http::service::export!(Probe);

/// Requests this instance served: state that lives as long as the instance.
static SERVED: AtomicU64 = AtomicU64::new(0);

/// Bytes per chunk of a generated body.
const CHUNK: usize = 64 * 1024;

struct Probe;

impl wasip3::exports::http::handler::Guest for Probe {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let target = request.get_path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        match path {
            "/" => text(200, "hello from p3\n".into()),
            "/info" => text(200, info(&request)),
            "/echo" => Ok(echo(request)),
            "/big" => Ok(big(param(query, "bytes").unwrap_or(0))),
            "/count" => text(200, format!("{served}\n")),
            "/sleep" => {
                let ms = param(query, "ms").unwrap_or(0);
                wasip3::clocks::monotonic_clock::wait_for(ms.saturating_mul(1_000_000)).await;
                text(200, "slept\n".into())
            }
            "/status" => {
                let code = param(query, "code").unwrap_or(200);
                let response = text(200, String::new())?;
                let code = u16::try_from(code).unwrap_or(500);
                response
                    .set_status_code(code)
                    .map_err(|()| ErrorCode::InternalError(Some(format!("bad status {code}"))))?;
                Ok(response)
            }
            "/fetch" => match query.strip_prefix("url=") {
                Some(url) => Ok(fetch(url).await),
                None => text(400, "/fetch?url=URL\n".into()),
            },
            "/trap" => panic!("probe: /trap asked for a trap"),
            "/spin" => spin(),
            _ => text(404, format!("no such path: {path}\n")),
        }
    }
}

/// The request as the guest sees it, one `name: value` per line.
fn info(request: &Request) -> String {
    let scheme = match request.get_scheme() {
        Some(Scheme::Http) => "http".to_owned(),
        Some(Scheme::Https) => "https".to_owned(),
        Some(Scheme::Other(other)) => other,
        None => "-".to_owned(),
    };
    let mut out = format!(
        "world: p3\nmethod: {}\nscheme: {scheme}\nauthority: {}\npath: {}\n",
        method_name(&request.get_method()),
        request.get_authority().unwrap_or_else(|| "-".into()),
        request.get_path_with_query().unwrap_or_else(|| "-".into()),
    );
    for (name, value) in request.get_headers().copy_all() {
        out.push_str(&format!(
            "header {name}: {}\n",
            String::from_utf8_lossy(&value)
        ));
    }
    out
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

/// A response with `status` and a plain-text `body`.
fn text(status: u16, body: String) -> Result<Response, ErrorCode> {
    let response = respond(
        "text/plain; charset=utf-8",
        Some(body.len()),
        move |mut tx| async move {
            tx.write_all(body.into_bytes()).await;
        },
    );
    response
        .set_status_code(status)
        .map_err(|()| ErrorCode::InternalError(Some(format!("bad status {status}"))))?;
    Ok(response)
}

/// A 200 response whose body `write` produces, in a task of its own (the
/// head goes out while it runs).
fn respond<F>(
    content_type: &str,
    length: Option<usize>,
    write: impl FnOnce(wasip3::wit_bindgen::StreamWriter<u8>) -> F,
) -> Response
where
    F: Future<Output = ()> + 'static,
{
    let mut fields = vec![("content-type".to_owned(), content_type.as_bytes().to_vec())];
    if let Some(length) = length {
        fields.push(("content-length".to_owned(), length.to_string().into_bytes()));
    }
    let headers = Fields::from_list(&fields).unwrap_or_else(|_| Fields::new());
    let (tx, contents) = wit_stream::new();
    let (_, trailers) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(contents), trailers);
    wasip3::spawn_local(write(tx));
    response
}

/// Streams the request body back as it arrives.
fn echo(request: Request) -> Response {
    let (_, done) = wit_future::new(|| Ok(()));
    let (mut body, _trailers) = Request::consume_body(request, done);
    respond("application/octet-stream", None, move |mut tx| async move {
        let mut buf = Vec::with_capacity(CHUNK);
        loop {
            let (result, data) = body.read(buf).await;
            match result {
                StreamResult::Complete(_) => {
                    let rest = tx.write_all(data).await;
                    if !rest.is_empty() {
                        return;
                    }
                    buf = rest;
                    buf.reserve(CHUNK);
                }
                StreamResult::Dropped | StreamResult::Cancelled => return,
            }
        }
    })
}

/// `bytes` bytes of `x`, in chunks.
fn big(bytes: u64) -> Response {
    let length = usize::try_from(bytes).unwrap_or(usize::MAX);
    respond(
        "application/octet-stream",
        Some(length),
        move |mut tx| async move {
            let mut left = length;
            while left > 0 {
                let n = left.min(CHUNK);
                if !tx.write_all(vec![b'x'; n]).await.is_empty() {
                    return;
                }
                left -= n;
            }
        },
    )
}

/// GETs `url` (`http://host[:port]/path` or `https://…`) and answers with
/// its status and body, or 502 with the error.
async fn fetch(url: &str) -> Response {
    match get(url).await {
        Ok((status, body)) => text(200, format!("upstream {status}\n{body}")),
        Err(err) => text(502, format!("fetch failed: {err:?}\n")),
    }
    .unwrap_or_else(|_| respond("text/plain", None, |_| async {}))
}

async fn get(url: &str) -> Result<(u16, String), ErrorCode> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(ErrorCode::HttpRequestUriInvalid),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (_, trailers) = wit_future::new(|| Ok(None));
    let (request, _sent) = Request::new(Fields::new(), None, trailers, None);
    let invalid = |()| ErrorCode::HttpRequestUriInvalid;
    request.set_method(&Method::Get).map_err(invalid)?;
    request.set_scheme(Some(&scheme)).map_err(invalid)?;
    request.set_authority(Some(authority)).map_err(invalid)?;
    request.set_path_with_query(Some(path)).map_err(invalid)?;
    let response = wasip3::http::client::send(request).await?;
    let status = response.get_status_code();
    let (_, done) = wit_future::new(|| Ok(()));
    let (body, _trailers) = Response::consume_body(response, done);
    Ok((
        status,
        String::from_utf8_lossy(&read_all(body).await).into_owned(),
    ))
}

async fn read_all(mut body: StreamReader<u8>) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        let (result, data) = body.read(Vec::with_capacity(CHUNK)).await;
        all.extend_from_slice(&data);
        if !matches!(result, StreamResult::Complete(_)) {
            return all;
        }
    }
}

/// Computes forever: only the gateway's CPU budget ends it.
fn spin() -> ! {
    let mut x = 1u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// The number after `name=` in a query string.
fn param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}
