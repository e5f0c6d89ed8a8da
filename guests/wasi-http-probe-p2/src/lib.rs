//! The paths of `wasi-http-probe` as a `wasi:http` 0.2 proxy component
//! (world `wasi:http/proxy`, export `wasi:http/incoming-handler@0.2.x`):
//! the gateway creates an instance for each request.
//!
//! | path | answer |
//! |---|---|
//! | `/` | `hello from p2` |
//! | `/info` | the request as the guest sees it |
//! | `/echo` | the request body |
//! | `/count` | requests this instance served (always 1: an instance per request) |
//! | `/sleep?ms=N` | `slept` after N ms |
//! | `/fetch?url=URL` | the status and body of a GET of URL (`wasi:http/outgoing-handler`) |
//! | `/trap` | a trap |
//! | `/spin` | a loop that never ends |

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};

use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Probe);

static SERVED: AtomicU64 = AtomicU64::new(0);

struct Probe;

impl wasip2::exports::http::incoming_handler::Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let (status, body) = match path {
            "/" => (200, b"hello from p2\n".to_vec()),
            "/info" => (200, info(&request).into_bytes()),
            "/echo" => (200, read_body(&request)),
            "/count" => (200, format!("{served}\n").into_bytes()),
            "/sleep" => {
                let ms = param(query, "ms").unwrap_or(0);
                wasip2::clocks::monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000))
                    .block();
                (200, b"slept\n".to_vec())
            }
            "/fetch" => match query.strip_prefix("url=") {
                Some(url) => match get(url) {
                    Ok((status, body)) => (200, format!("upstream {status}\n{body}").into_bytes()),
                    Err(err) => (502, format!("fetch failed: {err:?}\n").into_bytes()),
                },
                None => (400, b"/fetch?url=URL\n".to_vec()),
            },
            "/trap" => panic!("probe: /trap asked for a trap"),
            "/spin" => spin(),
            _ => (404, format!("no such path: {path}\n").into_bytes()),
        };
        respond(out, status, &body);
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"text/plain; charset=utf-8");
    let _ = headers.append("content-length", body.len().to_string().as_bytes());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    let Ok(mut stream) = outgoing.write() else {
        return;
    };
    // A client that went away is not the guest's problem.
    for chunk in body.chunks(4096) {
        if stream.write_all(chunk).is_err() {
            return;
        }
    }
    let _ = stream.flush();
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

fn info(request: &IncomingRequest) -> String {
    let scheme = match request.scheme() {
        Some(Scheme::Http) => "http".to_owned(),
        Some(Scheme::Https) => "https".to_owned(),
        Some(Scheme::Other(other)) => other,
        None => "-".to_owned(),
    };
    let method = match request.method() {
        Method::Get => "GET".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Head => "HEAD".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Other(other) => other,
        other => format!("{other:?}"),
    };
    let mut out = format!(
        "world: p2\nmethod: {method}\nscheme: {scheme}\nauthority: {}\npath: {}\n",
        request.authority().unwrap_or_else(|| "-".into()),
        request.path_with_query().unwrap_or_else(|| "-".into()),
    );
    for (name, value) in request.headers().entries() {
        out.push_str(&format!(
            "header {name}: {}\n",
            String::from_utf8_lossy(&value)
        ));
    }
    out
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut all = Vec::new();
    if let Ok(body) = request.consume()
        && let Ok(mut stream) = body.stream()
    {
        let _ = stream.read_to_end(&mut all);
    }
    all
}

fn get(url: &str) -> Result<(u16, String), ErrorCode> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(ErrorCode::HttpRequestUriInvalid),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let invalid = |()| ErrorCode::HttpRequestUriInvalid;
    request.set_scheme(Some(&scheme)).map_err(invalid)?;
    request.set_authority(Some(authority)).map_err(invalid)?;
    request.set_path_with_query(Some(path)).map_err(invalid)?;
    let future = wasip2::http::outgoing_handler::handle(request, None)?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(result)) => result?,
        _ => return Err(ErrorCode::InternalError(Some("no response".into()))),
    };
    let status = response.status();
    let mut body = Vec::new();
    if let Ok(incoming) = response.consume()
        && let Ok(mut stream) = incoming.stream()
    {
        let _ = stream.read_to_end(&mut body);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn spin() -> ! {
    let mut x = 1u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}
