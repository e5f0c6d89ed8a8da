//! Plain-TCP helpers: a free loopback port, a line-protocol exchange, and
//! reading what a server sends until it closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A free loopback TCP port (bound and released; another process could
/// take it in between, which the tests and benchmarks accept).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port")
}

/// Sends one line on `stream` and returns the reply line (without its
/// newline), failing the test after a minute without one.
pub async fn ask(stream: &mut TcpStream, line: &str) -> String {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    let mut reader = tokio::io::BufReader::new(&mut *stream);
    tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut reply))
        .await
        .expect("no reply within a minute")
        .unwrap();
    reply.trim_end().to_owned()
}

/// Sends `bytes` on a fresh connection to `addr` (keeping it open for
/// writing), then reads everything the server sends until it closes, or
/// `limit` passes. Returns what was read and how long until the close
/// (`None`: still open at the limit).
pub async fn send_and_read_until_closed(
    addr: SocketAddr,
    bytes: &[u8],
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return (received, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Some(started.elapsed())),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}
