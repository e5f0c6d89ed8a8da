//! Sync hostile: a `conn-handler-sync` guest (WASI 0.2, one instance per
//! connection) that misbehaves on request, for the gateway's tests. Each
//! connection is a line echo until a line names a misdeed:
//! - `panic` — the guest panics, which traps this connection's instance.
//! - `spin`, `spin-float`, `spin-memory`, `spin-recurse`, `spin-clock` —
//!   compute forever without waiting for I/O, in one of several loop shapes
//!   (the `hostile` guest's `spin.rs`; `spin-clock` calls the clock).
//! - `alloc-abort` — allocates memory until the allocator is refused, the
//!   Rust way: abort (trap).
//! - `log <text>` — writes `<text>` to stdout, then goes on echoing.
//! - `info` — answers `peer <ip:port> transport <t>` from the conn-info.
//! - `close-write` — drops its sending side (the client sees end of
//!   stream) but keeps reading, logging `received after close-write: <line>`.
//! - `sockets <n>` — creates up to `n` outbound TCP sockets (WASI 0.2) and
//!   keeps them for the connection's life, answering `sockets: opened <k>`
//!   or `sockets: opened <k>, then error: <code>`.

wit_bindgen::generate!({
    path: "../../wit/sync",
    world: "sockgate:gateway/conn-handler-sync",
    generate_all,
});

#[path = "../../hostile/src/spin.rs"]
mod spin;

use exports::sockgate::gateway::sync_handler::{ConnInfo, Guest};
use sockgate::gateway::sync_types::Transport;
use wasi::io::streams::{InputStream, OutputStream, StreamError};
use wasi::sockets::network::{IpAddressFamily, IpSocketAddress};
use wasi::sockets::tcp::TcpSocket;

struct Hostile;

impl Guest for Hostile {
    fn handle(info: ConnInfo, rx: InputStream, tx: OutputStream) {
        let _ = serve(&info, &rx, tx);
    }
}

fn serve(info: &ConnInfo, rx: &InputStream, tx: OutputStream) -> Result<(), StreamError> {
    let mut tx = Some(tx);
    // Sockets `sockets` opened, kept until the connection ends.
    let mut kept: Vec<TcpSocket> = Vec::new();
    let mut pending = Vec::new();
    loop {
        let data = match rx.blocking_read(16 * 1024) {
            Ok(data) => data,
            Err(StreamError::Closed) => return Ok(()),
            Err(err) => return Err(err),
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            let Some(out) = tx.as_ref() else {
                println!("received after close-write: {text}");
                continue;
            };
            if let Some(shape) = spin::Shape::parse(&text) {
                spin::forever(shape, || {
                    std::hint::black_box(wasi::clocks::monotonic_clock::now());
                });
            }
            match text.as_str() {
                "panic" => panic!("asked to panic"),
                "info" => {
                    let transport = match info.transport {
                        Transport::Tcp => "tcp",
                        Transport::Tls => "tls",
                        Transport::Quic => "quic",
                    };
                    let reply = format!("peer {} transport {transport}\n", show(info.peer));
                    write_all(out, reply.as_bytes())?;
                }
                "alloc-abort" => {
                    let mut held: Vec<Vec<u8>> = Vec::new();
                    loop {
                        held.push(std::hint::black_box(vec![1u8; 1 << 20]));
                    }
                }
                "close-write" => tx = None,
                _ if text.starts_with("sockets ") => {
                    let n: usize = text["sockets ".len()..].trim().parse().unwrap_or(0);
                    let reply = open_sockets(n, &mut kept);
                    write_all(out, format!("{reply}\n").as_bytes())?;
                }
                _ => {
                    if let Some(rest) = text.strip_prefix("log ") {
                        println!("{rest}");
                    }
                    write_all(out, &line)?;
                }
            }
        }
    }
}

/// Creates up to `n` TCP sockets into `kept`; says how many, and why not
/// more.
fn open_sockets(n: usize, kept: &mut Vec<TcpSocket>) -> String {
    let mut opened = 0;
    while opened < n {
        match wasi::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
            Ok(socket) => {
                kept.push(socket);
                opened += 1;
            }
            Err(code) => return format!("sockets: opened {opened}, then error: {code:?}"),
        }
    }
    format!("sockets: opened {opened}")
}

fn show(addr: IpSocketAddress) -> String {
    match addr {
        IpSocketAddress::Ipv4(a) => {
            let (a0, a1, a2, a3) = a.address;
            format!("{a0}.{a1}.{a2}.{a3}:{}", a.port)
        }
        IpSocketAddress::Ipv6(a) => format!("[{:?}]:{}", a.address, a.port),
    }
}

fn write_all(tx: &OutputStream, mut data: &[u8]) -> Result<(), StreamError> {
    let writable = tx.subscribe();
    while !data.is_empty() {
        let permit = tx.check_write()?;
        if permit == 0 {
            writable.block();
            continue;
        }
        let n = data
            .len()
            .min(usize::try_from(permit).unwrap_or(usize::MAX));
        tx.write(&data[..n])?;
        data = &data[n..];
    }
    Ok(())
}

export!(Hostile);
