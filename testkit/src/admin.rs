//! The admin API over plain HTTP/1.1 for benchmarks and tests: a deploy is
//! one request, so thousands of deploys start no process.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::output::printed_admin;
use crate::server::Server;

/// The admin API over plain HTTP/1.1: a deploy is one request, so
/// thousands of deploys start no process.
pub struct Admin {
    addr: SocketAddr,
    token: String,
}

impl Admin {
    /// The admin API of `server`, whose state directory is `state` (where
    /// its token is).
    pub fn of(server: &Server, state: &Path) -> Self {
        let addr = printed_admin(&server.stdout().text()).expect("no admin address printed");
        Self::at(addr, state)
    }

    /// The admin API at `addr`, whose state directory is `state`.
    pub fn at(addr: SocketAddr, state: &Path) -> Self {
        let token = std::fs::read_to_string(state.join("admin-token")).expect("no admin token");
        Self {
            addr,
            token: token.trim().to_owned(),
        }
    }

    /// One request; the status code and the body.
    pub fn request(&self, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut stream = std::net::TcpStream::connect(self.addr).expect("admin API unreachable");
        let head = format!(
            "{head}\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            self.token,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("no HTTP head");
        let status = std::str::from_utf8(&response[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("no status code");
        let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
        let mut body = response[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = unchunk(&body);
        }
        (status, body)
    }

    /// Deploys `component` as app `name` with `settings` (the
    /// `sockgate-settings` header's JSON); panics unless it is accepted.
    pub fn deploy(&self, name: &str, component: &[u8], settings: &str) {
        let (status, body) = self.request(
            &format!("PUT /v1/apps/{name} HTTP/1.1\r\nsockgate-settings: {settings}"),
            component,
        );
        assert_eq!(
            status,
            200,
            "deploy of {name}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// `GET /v1/apps`.
    pub fn apps(&self) -> Vec<Value> {
        let (status, body) = self.request("GET /v1/apps HTTP/1.1", b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<Value>(&body)
            .expect("the app list is not JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// A chunked HTTP/1.1 body, joined.
fn unchunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = end + 2;
        out.extend_from_slice(&body[start..start + size]);
        body = &body[start + size + 2..];
    }
}
