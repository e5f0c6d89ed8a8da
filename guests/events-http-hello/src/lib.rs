//! Events HTTP hello: `guests/http-hello` in the `conn-events` world
//! (wit/events/). Answers HTTP/1.1 requests with a small HTML page, keeping
//! the connection open between requests (keep-alive, pipelining) and
//! parsing the requests itself, with no HTTP library.
//!
//! A connection holds memory here only while it has an incomplete request
//! buffered (or has been answered for the last time): an idle keep-alive
//! connection costs nothing in the guest.

wit_bindgen::generate!({
    path: "../../wit/events",
    world: "sockgate:events/conn-events",
});

use std::cell::RefCell;
use std::collections::HashMap;

use exports::sockgate::events::handler::Guest;
use sockgate::events::types::{Action, Event, Send};

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

/// Parses the request at the start of `buf`.
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

/// Appends a response to `out`.
fn response(out: &mut Vec<u8>, status: &str, body: &str, close: bool, include_body: bool) {
    let connection = if close { "close" } else { "keep-alive" };
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\n\
             content-length: {}\r\nconnection: {connection}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    if include_body {
        out.extend_from_slice(body.as_bytes());
    }
}

/// Answers every complete request at the start of `buf` (pipelining):
/// returns the responses, how many bytes of `buf` they used, and whether
/// the connection is to be closed after them.
fn serve(buf: &[u8]) -> (Vec<u8>, usize, bool) {
    let mut replies = Vec::new();
    let mut used = 0;
    loop {
        match parse(&buf[used..]) {
            Parsed::Incomplete => return (replies, used, false),
            Parsed::Refuse(status) => {
                response(&mut replies, status, "", true, true);
                return (replies, used, true);
            }
            Parsed::Request {
                head_len,
                body_len,
                close,
                method_head,
            } => {
                if buf.len() - used < head_len + body_len {
                    return (replies, used, false);
                }
                used += head_len + body_len;
                response(&mut replies, "200 OK", PAGE, close, !method_head);
                if close {
                    return (replies, used, true);
                }
            }
        }
    }
}

/// A connection the guest keeps something for.
enum Conn {
    /// The start of a request that is not complete yet.
    Partial(Vec<u8>),
    /// Answered for the last time and shut down: whatever else it sends is
    /// ignored.
    Done,
}

thread_local! {
    /// Connection id → state, for connections that have any (idle ones
    /// have none).
    static CONNS: RefCell<HashMap<u64, Conn>> = RefCell::new(HashMap::new());
}

/// A connection sent `bytes`: answer the requests they complete.
fn receive(conns: &mut HashMap<u64, Conn>, conn: u64, bytes: Vec<u8>, actions: &mut Vec<Action>) {
    let mut buf = match conns.remove(&conn) {
        None => bytes,
        Some(Conn::Partial(mut buf)) => {
            buf.extend_from_slice(&bytes);
            buf
        }
        Some(Conn::Done) => {
            conns.insert(conn, Conn::Done);
            return;
        }
    };
    let (replies, used, close) = serve(&buf);
    if !replies.is_empty() {
        actions.push(Action::Send(Send {
            conn,
            bytes: replies,
        }));
    }
    if close {
        actions.push(Action::Shutdown(conn));
        conns.insert(conn, Conn::Done);
    } else if used < buf.len() {
        buf.drain(..used);
        conns.insert(conn, Conn::Partial(buf));
    }
}

/// A connection finished sending: finish ours too, unless that is done
/// already (an incomplete request is dropped).
fn end(conns: &mut HashMap<u64, Conn>, conn: u64, actions: &mut Vec<Action>) {
    if !matches!(conns.remove(&conn), Some(Conn::Done)) {
        actions.push(Action::Shutdown(conn));
    }
}

struct HttpHello;

impl Guest for HttpHello {
    /// Answers the requests the batch completes, and finishes sending to
    /// clients that finished sending.
    fn handle(events: Vec<Event>) -> Vec<Action> {
        let mut actions = Vec::new();
        CONNS.with(|conns| {
            let conns = &mut *conns.borrow_mut();
            for event in events {
                match event {
                    Event::Received(r) => receive(conns, r.conn, r.bytes, &mut actions),
                    Event::Ended(conn) => end(conns, conn, &mut actions),
                    Event::Closed(c) => {
                        conns.remove(&c.conn);
                    }
                    _ => {}
                }
            }
        });
        actions
    }
}

export!(HttpHello);
