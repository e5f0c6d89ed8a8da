//! Hostile: a guest that misbehaves on request, for the gateway's tests.
//! Each connection is an echo until a line names a misdeed:
//! - `panic` — the guest panics, which traps the instance.
//! - `log <text>` — writes `<text>` to stdout and stderr, then goes on echoing.
//! - `close-write` — closes the guest's sending side (the client sees end of
//!   stream) but keeps reading, logging `received after close-write: <line>`
//!   for every further line.
//! - `spin`, `spin-float`, `spin-memory`, `spin-recurse`, `spin-clock` —
//!   compute forever without handing control back, in one of several loop
//!   shapes (see `spin.rs`; `spin-clock` calls the clock, an import).
//! - `compute <n>` — runs `n` rounds of a hash and answers `computed <hash>`.
//! - `alloc <step-kib>` — allocates (and touches) memory step by step until
//!   the allocator is refused, answers `refused after <n> MiB`, and frees it.
//! - `alloc-abort` — allocates until refused, the Rust way: abort (trap).
//! - `connect <ip:port>` — opens an outbound TCP connection, sends `ping\n`,
//!   answers `connected: <first line received>` or `error: <code>`.
//! - `lookup <name>` — resolves a name, answers `resolved: <ips>` or
//!   `error: <code>`.
//! - `flood` — writes to the client forever without reading, logging
//!   `flood: <n> MiB written` after every MiB the client has taken.
//! - `sockets <n> [udp]` — creates up to `n` outbound TCP (or UDP) sockets
//!   (no connection needed: the OS socket exists from creation) and keeps
//!   them, answering `sockets: opened <k>` or
//!   `sockets: opened <k>, then error: <code>`.
//! - `streams <n> <ip:port>` — connects up to `n` times, keeps each
//!   connection's send and receive streams and drops the socket itself,
//!   answering `streams: kept <k>` or `streams: kept <k>, then error: <code>`.
//! - `release` — drops every socket and stream kept, answering `released`.
//! - `stream-pairs <n>` — creates `n` streams (`stream.new`, no host call)
//!   and keeps both ends, answering `stream-pairs: created <n>`: each one
//!   is host memory outside the guest's own, bounded by the store's tables.
//! - `log-flood <n>` — prints `n` lines of 100 bytes to stdout as fast as it
//!   can (yielding every 100 lines, so only the log limits stop it),
//!   answering `logged <n>`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "sockgate:gateway/conn-handler",
    generate_all,
});

use std::cell::RefCell;
use std::net::SocketAddr;

mod spin;

use exports::sockgate::gateway::handler::Guest;
use wasi::sockets::types::{
    IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress, TcpSocket,
    UdpSocket,
};
use wit_bindgen::{StreamReader, StreamResult, StreamWriter};

struct Hostile;

/// What `sockets` and `streams` keep, in this instance, until `release`.
#[derive(Default)]
struct Kept {
    sockets: Vec<TcpSocket>,
    udp: Vec<UdpSocket>,
    pairs: Vec<(StreamWriter<u8>, StreamReader<u8>)>,
    streams: Vec<(StreamWriter<u8>, StreamReader<u8>)>,
}

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
}

impl Guest for Hostile {
    async fn handle(id: u64, mut rx: StreamReader<u8>) -> StreamReader<u8> {
        let (tx, out) = wit_stream::new();
        wit_bindgen::spawn_local(async move {
            let mut line: Vec<u8> = Vec::new();
            let mut buf = Vec::with_capacity(4096);
            let mut tx = Some(tx);
            loop {
                let (result, data) = rx.read(buf).await;
                if !matches!(result, StreamResult::Complete(_)) {
                    return;
                }
                line.extend_from_slice(&data);
                while let Some(end) = line.iter().position(|&b| b == b'\n') {
                    let command: Vec<u8> = line.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&command).trim_end().to_owned();
                    let Some(writer) = tx.as_mut() else {
                        println!("received after close-write: {text}");
                        continue;
                    };
                    let reply = match run(&text, id, writer).await {
                        Reply::Echo => command,
                        Reply::Line(reply) => format!("{reply}\n").into_bytes(),
                        Reply::CloseWrite => {
                            let _ = writer.write_all(command).await;
                            // Dropping the writer shuts down our sending side.
                            tx = None;
                            continue;
                        }
                    };
                    if !writer.write_all(reply).await.is_empty() {
                        return;
                    }
                }
                buf = data;
                buf.clear();
            }
        });
        out
    }
}

enum Reply {
    Echo,
    Line(String),
    CloseWrite,
}

async fn run(command: &str, conn: u64, tx: &mut StreamWriter<u8>) -> Reply {
    let (verb, arg) = command.split_once(' ').unwrap_or((command, ""));
    if let Some(shape) = spin::Shape::parse(verb) {
        spin::forever(shape, || {
            std::hint::black_box(wasi::clocks::monotonic_clock::now());
        });
    }
    match verb {
        "panic" => panic!("hostile guest asked to panic on connection {conn}"),
        "log" => {
            println!("{arg}");
            eprintln!("{arg}");
            Reply::Echo
        }
        "close-write" => Reply::CloseWrite,
        "compute" => Reply::Line(format!("computed {}", compute(arg.parse().unwrap_or(0)))),
        "alloc" => Reply::Line(alloc_until_refused(arg.parse().unwrap_or(1024))),
        "alloc-abort" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
            }
        }
        "connect" => Reply::Line(connect(arg).await),
        "lookup" => Reply::Line(
            match wasi::sockets::ip_name_lookup::resolve_addresses(arg.to_owned()).await {
                Ok(ips) => {
                    let ips: Vec<String> = ips.iter().map(format_ip).collect();
                    format!("resolved: {}", ips.join(" "))
                }
                Err(code) => format!("error: {code:?}"),
            },
        ),
        "info" => Reply::Line(match sockgate::gateway::connection::info(conn) {
            Some(info) => {
                let quic = info
                    .quic
                    .map(|q| format!(" quic={}/{}", q.connection_id, q.stream_id))
                    .unwrap_or_default();
                format!(
                    "info transport={:?} server-name={} alpn={}{quic}",
                    info.transport,
                    info.server_name.as_deref().unwrap_or("-"),
                    info.alpn.as_deref().unwrap_or("-")
                )
            }
            None => "info none".to_owned(),
        }),
        "sockets" => {
            let (n, kind) = arg.split_once(' ').unwrap_or((arg, "tcp"));
            Reply::Line(open_sockets(n.parse().unwrap_or(0), kind == "udp"))
        }
        "streams" => {
            let (n, target) = arg.split_once(' ').unwrap_or(("0", ""));
            Reply::Line(keep_streams(n.parse().unwrap_or(0), target).await)
        }
        "stream-pairs" => {
            let n: usize = arg.parse().unwrap_or(0);
            for _ in 0..n {
                let pair = wit_stream::new();
                KEPT.with(|kept| kept.borrow_mut().pairs.push(pair));
            }
            Reply::Line(format!("stream-pairs: created {n}"))
        }
        "release" => {
            KEPT.with(|kept| *kept.borrow_mut() = Kept::default());
            Reply::Line("released".into())
        }
        "log-flood" => {
            let n: u64 = arg.parse().unwrap_or(0);
            let line = "x".repeat(100);
            for i in 0..n {
                println!("{line}");
                if i % 100 == 99 {
                    wit_bindgen::yield_async().await;
                }
            }
            Reply::Line(format!("logged {n}"))
        }
        "flood" => {
            let chunk = vec![b'x'; 1 << 20];
            let mut mib = 0u64;
            loop {
                if !tx.write_all(chunk.clone()).await.is_empty() {
                    return Reply::Line(String::new());
                }
                mib += 1;
                println!("flood: {mib} MiB written");
            }
        }
        _ => Reply::Echo,
    }
}

/// A CPU-bound loop whose result depends on every round.
fn compute(rounds: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    x
}

fn alloc_until_refused(step_kib: usize) -> String {
    let step = step_kib.max(1) * 1024;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    loop {
        let mut block: Vec<u8> = Vec::new();
        if block.try_reserve_exact(step).is_err() {
            break;
        }
        // Touch every page so the memory is really used.
        block.resize(step, 1);
        total += step;
        hoard.push(block);
    }
    format!("refused after {} MiB", total >> 20)
}

fn open_sockets(n: usize, udp: bool) -> String {
    let mut opened = 0;
    while opened < n {
        let created = if udp {
            UdpSocket::create(IpAddressFamily::Ipv4)
                .map(|socket| KEPT.with(|kept| kept.borrow_mut().udp.push(socket)))
        } else {
            TcpSocket::create(IpAddressFamily::Ipv4)
                .map(|socket| KEPT.with(|kept| kept.borrow_mut().sockets.push(socket)))
        };
        match created {
            Ok(()) => opened += 1,
            Err(code) => return format!("sockets: opened {opened}, then error: {code:?}"),
        }
    }
    format!("sockets: opened {opened}")
}

async fn keep_streams(n: usize, target: &str) -> String {
    let Ok(addr) = target.parse::<SocketAddr>() else {
        return format!("error: cannot parse {target:?}");
    };
    let (family, remote) = socket_address(addr);
    let mut kept = 0;
    while kept < n {
        let socket = match TcpSocket::create(family) {
            Ok(socket) => socket,
            Err(code) => return format!("streams: kept {kept}, then error: {code:?}"),
        };
        if let Err(code) = socket.connect(remote).await {
            return format!("streams: kept {kept}, then error: {code:?}");
        }
        let (send_tx, send_rx) = wit_stream::new();
        let _sent = socket.send(send_rx);
        let (incoming, _received) = socket.receive();
        // The socket resource goes; its streams keep the connection.
        drop(socket);
        KEPT.with(|k| k.borrow_mut().streams.push((send_tx, incoming)));
        kept += 1;
    }
    format!("streams: kept {kept}")
}

fn socket_address(addr: SocketAddr) -> (IpAddressFamily, IpSocketAddress) {
    match addr {
        SocketAddr::V4(a) => {
            let [b0, b1, b2, b3] = a.ip().octets();
            (
                IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv4(Ipv4SocketAddress {
                    port: a.port(),
                    address: (b0, b1, b2, b3),
                }),
            )
        }
        SocketAddr::V6(a) => {
            let s = a.ip().segments();
            (
                IpAddressFamily::Ipv6,
                IpSocketAddress::Ipv6(Ipv6SocketAddress {
                    port: a.port(),
                    address: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
                    flow_info: 0,
                    scope_id: 0,
                }),
            )
        }
    }
}

async fn connect(target: &str) -> String {
    let Ok(addr) = target.parse::<SocketAddr>() else {
        return format!("error: cannot parse {target:?}");
    };
    let (family, remote) = socket_address(addr);
    let socket = match TcpSocket::create(family) {
        Ok(socket) => socket,
        Err(code) => return format!("error: {code:?}"),
    };
    if let Err(code) = socket.connect(remote).await {
        return format!("error: {code:?}");
    }
    let (mut send_tx, send_rx) = wit_stream::new();
    let _sent = socket.send(send_rx);
    let (mut incoming, _received) = socket.receive();
    if !send_tx.write_all(b"ping\n".to_vec()).await.is_empty() {
        return "error: peer closed".into();
    }
    let mut reply = Vec::new();
    while !reply.contains(&b'\n') {
        let (result, data) = incoming.read(Vec::with_capacity(256)).await;
        if !matches!(result, StreamResult::Complete(_)) {
            break;
        }
        reply.extend_from_slice(&data);
    }
    let reply = String::from_utf8_lossy(&reply);
    format!("connected: {}", reply.trim_end())
}

fn format_ip(ip: &IpAddress) -> String {
    match ip {
        IpAddress::Ipv4((a, b, c, d)) => format!("{a}.{b}.{c}.{d}"),
        IpAddress::Ipv6(s) => {
            std::net::Ipv6Addr::new(s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7).to_string()
        }
    }
}

export!(Hostile);
