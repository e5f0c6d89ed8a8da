//! HTTP hello: answers HTTP/1.1 requests with a small HTML page, keeping the
//! connection open between requests (keep-alive, pipelining) and parsing the
//! requests itself, with no HTTP library.

wit_bindgen::generate!({
    path: "../../wit",
    world: "sockgate:gateway/conn-handler",
    generate_all,
});

use exports::sockgate::gateway::handler::Guest;
use wit_bindgen::{StreamReader, StreamResult};

/// Largest request head (request line plus headers) accepted; a client that
/// sends more gets `431` and the connection is closed.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted (it is read and discarded).
const MAX_BODY: usize = 1024 * 1024;

const PAGE: &str = "<!doctype html>\n<html><head><title>Hello from sockgate</title></head>\
<body><h1>Hello from sockgate</h1><p>Served by a WebAssembly component.</p></body></html>\n";

/// What to do with one parsed request.
enum Parsed {
    /// A full request head of `head_len` bytes with a body of `body_len`.
    Request {
        head_len: usize,
        body_len: usize,
        close: bool,
        method_head: bool,
    },
    /// Not enough bytes yet.
    Incomplete,
    /// A request we refuse, with the status line to send before closing.
    Refuse(&'static str),
}

fn parse(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Parsed::Refuse("431 Request Header Fields Too Large")
        } else {
            Parsed::Incomplete
        };
    };
    let head_len = end + 4;
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Refuse("400 Bad Request");
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Refuse("400 Bad Request");
    };
    let mut close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Parsed::Refuse("505 HTTP Version Not Supported"),
    };
    let mut body_len = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Parsed::Refuse("400 Bad Request");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if n <= MAX_BODY => body_len = n,
                Ok(_) => return Parsed::Refuse("413 Content Too Large"),
                Err(_) => return Parsed::Refuse("400 Bad Request"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Refuse("501 Not Implemented");
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                close = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        }
    }
    Parsed::Request {
        head_len,
        body_len,
        close,
        method_head: method == "HEAD",
    }
}

fn response(status: &str, body: &str, close: bool, include_body: bool) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\n\
         content-length: {}\r\nconnection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if include_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

struct HttpHello;

impl Guest for HttpHello {
    async fn handle(_id: u64, mut rx: StreamReader<u8>) -> StreamReader<u8> {
        let (mut tx, out) = wit_stream::new();
        wit_bindgen::spawn_local(async move {
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = Vec::with_capacity(8192);
            loop {
                let (result, data) = rx.read(buf).await;
                if !matches!(result, StreamResult::Complete(_)) {
                    return;
                }
                pending.extend_from_slice(&data);
                buf = data;
                buf.clear();
                // Answer every complete request in the buffer (pipelining).
                let mut replies = Vec::new();
                let mut close = false;
                loop {
                    match parse(&pending) {
                        Parsed::Incomplete => break,
                        Parsed::Refuse(status) => {
                            replies.extend(response(status, "", true, true));
                            close = true;
                            break;
                        }
                        Parsed::Request {
                            head_len,
                            body_len,
                            close: c,
                            method_head,
                        } => {
                            if pending.len() < head_len + body_len {
                                break;
                            }
                            pending.drain(..head_len + body_len);
                            replies.extend(response("200 OK", PAGE, c, !method_head));
                            if c {
                                close = true;
                                break;
                            }
                        }
                    }
                }
                if !replies.is_empty() && !tx.write_all(replies).await.is_empty() {
                    return;
                }
                if close {
                    return;
                }
            }
        });
        out
    }
}

export!(HttpHello);
