//! Entry points for the fuzz targets of `fuzz/` (cargo feature `fuzzing`,
//! off by default, so neither the default build nor the public API has
//! them). Each is a thin shell around the real code path that reads one
//! kind of untrusted input — the function the listener, the admin API or a
//! deploy calls — and checks the properties the gateway relies on besides
//! "no panic". The parsers stay `pub(crate)`: only these shells are public.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admin::Admin;
use crate::admin::api::deploy_config;
use crate::apps::route::Router;
use crate::base::names::{AppName, DnsName, normalize_name};
use crate::config::{Config, file};
use crate::http::request::{CLIENT_ADDR_HEADER, prepare};
use crate::http::{ConnMeta, Protocol};
use crate::limits::Ceilings;
use crate::listen::http::{Site, respond};
use crate::listen::quic::client_hello::{self, Hello as QuicHello};
use crate::listen::quic::crypto::check_hello;
use crate::listen::route::{Lookup, Routing};
use crate::listen::tls::handshake::routing_of;
use crate::runtime::Runtime;
use crate::runtime::load::{detect_world, load_component_bytes};
use crate::tenant::outbound::OutboundPolicy;

mod events;

/// The admin token the admin API target's gateway requires (the seed
/// corpus's requests carry it, so the fuzzer gets past authentication).
pub const ADMIN_TOKEN: &str = "fuzz-admin-token";

/// The largest component the component targets read: compiling is slow,
/// and the real example guests the corpus starts from are smaller.
pub const MAX_COMPONENT_BYTES: usize = 256 * 1024;

/// The gateway the TLS, QUIC and plain-HTTP targets route against: base
/// domain `example.org`, apps `chat`, `echo` (ALPN `h2`, `echo/1`) and
/// `shop` (custom domain `shop.example.com`); `pending` has no certificate
/// yet; an ACME challenge is under way for `acme.example.org`.
struct Table {
    router: Arc<Router>,
}

impl Table {
    fn new() -> Self {
        let router = Router::new();
        router.set_domains(&["example.org".to_owned()]);
        if let Ok(shop) = DnsName::parse("shop.example.com") {
            router.set_custom_domains("shop", &[shop]);
        }
        Self { router }
    }
}

const RUNNING: [&str; 4] = ["chat", "echo", "shop", "pending"];

impl Lookup for Table {
    type App = String;
    type Certificate = ();

    fn app(&self, name: &str) -> Option<String> {
        self.router
            .app_name_for_server_name(name)
            .filter(|app| RUNNING.contains(&app.as_str()))
    }

    fn app_name(&self, app: &String) -> String {
        app.clone()
    }

    fn protocols(&self, app: &String) -> Vec<String> {
        match app.as_str() {
            "echo" => vec!["h2".to_owned(), "echo/1".to_owned()],
            _ => vec![crate::listen::quic::DEFAULT_ALPN.to_owned()],
        }
    }

    fn certificate(&self, name: &str) -> Option<()> {
        (!name.starts_with("pending.")).then_some(())
    }

    fn challenge_under_way(&self, name: &str) -> bool {
        name == "acme.example.org"
    }
}

impl Site for Table {
    fn list_apps(&self) -> bool {
        true
    }

    fn https_port(&self) -> u16 {
        8443
    }

    fn domains(&self) -> Vec<String> {
        self.router.domains()
    }

    fn app_names(&self) -> Vec<String> {
        RUNNING.iter().map(|s| (*s).to_owned()).collect()
    }

    fn serves(&self, host: &str) -> bool {
        Lookup::app(self, host).is_some()
    }

    fn key_authorization(&self, token: &str) -> Option<String> {
        (token == "tok").then(|| "tok.thumbprint".to_owned())
    }
}

/// Checks what every routing decision promises: a served name is
/// normalised and selects the app it is served with; a refusal has an
/// alert and a reason.
fn check_routing(table: &Table, routing: Routing<String, ()>) {
    match routing {
        Routing::Serve { name, app, .. } => {
            assert_eq!(name, normalize_name(&name), "served name not normalised");
            assert_eq!(Lookup::app(table, &name), Some(app), "served the wrong app");
        }
        Routing::Challenge(name) => assert!(table.challenge_under_way(&name)),
        Routing::Refuse(refusal) => {
            let _ = refusal.alert();
            assert!(!refusal.reason().is_empty());
        }
    }
}

/// Feeds `records` (TLS records, as a client sends them) to rustls's
/// `Acceptor`, as the TLS listener's `LazyConfigAcceptor` does, and gives
/// the ClientHello it parsed, if any, to `then`.
fn with_client_hello(mut records: &[u8], then: impl FnOnce(&rustls::server::ClientHello<'_>)) {
    let mut acceptor = rustls::server::Acceptor::default();
    loop {
        match acceptor.read_tls(&mut records) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => return then(&accepted.client_hello()),
            Err(_) => return,
        }
    }
}

/// TLS listener: a client's first bytes (TLS records), through rustls's
/// ClientHello parsing, SNI normalisation, the ACME TLS-ALPN-01 check and
/// [`crate::listen::route::route_hello`] — the handshake's decision.
pub fn tls_client_hello(bytes: &[u8]) {
    let table = Table::new();
    with_client_hello(bytes, |hello| {
        check_routing(&table, routing_of(hello, &table));
    });
}

/// QUIC endpoint: the contents of a client's CRYPTO frames, through the
/// gateway's own ClientHello reader (which picks the app's TLS
/// configuration) and, as quinn hands them to rustls, the certificate
/// resolver's routing with the client's ALPN protocols. When rustls reads
/// a server name too, both must agree: the configuration picked by one
/// reading and the app routed by the other must be the same app's.
pub fn quic_client_hello(bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(2 * client_hello::MAX_CLIENT_HELLO)];
    let ours = client_hello::server_name(bytes);
    let QuicHello::Complete(our_name) = ours else {
        return;
    };
    // The handshake message as TLS records (QUIC carries it without them).
    let mut records: Vec<u8> = Vec::with_capacity(bytes.len() + 16);
    for chunk in bytes.chunks(16 * 1024) {
        records.extend([22, 3, 1]);
        records.extend((chunk.len() as u16).to_be_bytes());
        records.extend(chunk);
    }
    let table = Table::new();
    with_client_hello(&records, |hello| {
        if let Some(theirs) = hello.server_name() {
            assert_eq!(
                our_name.as_deref().map(normalize_name),
                Some(normalize_name(theirs)),
                "the gateway's ClientHello reader and rustls read different server names"
            );
        }
        let routing = match check_hello(hello, &table) {
            Ok(()) => {
                let name = hello.server_name().map(normalize_name).unwrap_or_default();
                let app = Lookup::app(&table, &name).expect("served a name that selects no app");
                let offered: Vec<&[u8]> = hello.alpn().map(|p| p.collect()).unwrap_or_default();
                assert!(
                    table
                        .protocols(&app)
                        .iter()
                        .any(|p| offered.contains(&p.as_bytes())),
                    "served a client that offered none of the app's protocols"
                );
                Routing::Serve {
                    name,
                    app,
                    certificate: (),
                }
            }
            Err(refusal) => Routing::Refuse(refusal),
        };
        check_routing(&table, routing);
    });
}

/// Plain-HTTP port: a request head, through its parsing and the answer
/// (ACME HTTP-01, redirect to HTTPS, the base domain's info page). The
/// answer must be well-formed HTTP: no line of its head may be split or
/// extended by the request (header injection through `Host` or the path).
pub fn plain_http(bytes: &[u8]) {
    let table = Table::new();
    let Some(response) = respond(&table, bytes) else {
        return;
    };
    let sent = response.to_bytes(bytes.starts_with(b"HEAD "));
    let end = sent
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head ends with an empty line");
    let head = std::str::from_utf8(&sent[..end]).expect("the response head is text");
    for line in head.split("\r\n") {
        assert!(!line.is_empty(), "an empty line inside the head: {head:?}");
        assert!(
            !line.contains(['\r', '\n']),
            "a bare CR or LF in the head: {head:?}"
        );
    }
    assert!(head.starts_with("HTTP/1.1 "), "{head:?}");
    if let Some(location) = head.lines().find_map(|l| l.strip_prefix("Location: ")) {
        assert!(location.starts_with("https://"), "{location:?}");
    }
}

/// A gateway with a state directory and no apps, and its admin API
/// requiring [`ADMIN_TOKEN`], on a current-thread runtime: made once per
/// fuzzing process.
struct AdminUnderTest {
    runtime: tokio::runtime::Runtime,
    admin: Arc<Admin>,
}

fn admin_under_test() -> &'static AdminUnderTest {
    static ADMIN: OnceLock<AdminUnderTest> = OnceLock::new();
    ADMIN.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = scratch_dir("admin");
        let mut config = Config::default();
        config.gateway.state_dir = Some(dir.join("state"));
        config.gateway.cache_dir = Some(dir.join("cache"));
        config.gateway.admin = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let gateway = runtime
            .block_on(crate::Gateway::start(config))
            .expect("the fuzzed gateway starts");
        let admin = Admin::new(gateway, ADMIN_TOKEN.to_owned());
        AdminUnderTest { runtime, admin }
    })
}

/// A fresh private directory for one fuzzing process.
fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sockgate-fuzz-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .expect("a private scratch directory");
    dir
}

/// Admin API: `bytes` sent as one client connection (HTTP/1.1 requests,
/// then the end of the stream), served by hyper with the admin API's
/// settings and router: authentication, routes, the deploy's settings
/// header and body. Every request must be answered once the client has
/// sent everything: within 10 s, or it counts as a hang.
pub fn admin_request(bytes: &[u8]) {
    let under_test = admin_under_test();
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 40000));
    under_test.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serve = crate::admin::serve_connection(under_test.admin.clone(), server, peer, true);
        let talk = async move {
            let _ = client.write_all(bytes).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let (_, answer) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(serve, talk) })
                .await
                .expect("the admin API answered within 10 s of the client's last byte");
        if !answer.is_empty() {
            // (HTTP/1.1, or HTTP/1.0 to an HTTP/1.0 request.)
            assert!(answer.starts_with(b"HTTP/1."), "not an HTTP answer");
        }
    });
}

/// Configuration file: the text of a `sockgate.toml`, through parsing,
/// relative paths and every check ([`Config::load`] without the read). A
/// file that passes must pass [`Config::validate`] again.
pub fn config_file(text: &str) {
    let path = Path::new("/nonexistent/sockgate-fuzz/sockgate.toml");
    if let Ok(config) = file::parse(path, text) {
        config.validate().expect("a parsed configuration validates");
    }
}

/// A deploy's settings: the app name of the URL and the
/// `sockgate-settings` header (its bytes as hyper would carry them),
/// through the admin API's parsing ([`deploy_config`]) and the gateway's
/// check of the settings against the default ceilings; a refusal says
/// what was wrong, and the outbound rules of settings that pass parse.
pub fn deploy_settings(name: &str, header: &[u8]) {
    let Ok(name) = AppName::parse(name) else {
        return;
    };
    let Ok(value) = http::HeaderValue::from_bytes(header) else {
        return;
    };
    match deploy_config(name, Some(&value)) {
        Ok((config, origin)) => {
            if let Some(origin) = origin {
                assert!(origin.len() <= crate::admin::api::MAX_ORIGIN_BYTES);
                assert!(origin.bytes().all(|b| b.is_ascii_graphic()));
            }
            if config.check(Some(&Ceilings::default())).is_ok() {
                config
                    .check(None)
                    .expect("within the ceilings is within the maxima");
                OutboundPolicy::parse(&config.outbound).expect("checked outbound rules parse");
            }
        }
        Err(why) => assert!(!why.is_empty()),
    }
}

/// Outbound rules: lines of text, each a rule (as in `outbound = [...]`),
/// except `connect ADDR` and `lookup NAME` lines, which are asked of the
/// policy the rules make (each name allowed is recorded as resolving to
/// every `connect` address). Deny-by-default must hold: no rules allow
/// nothing, and an address that is not public (loopback, private,
/// metadata…) is reached only through a rule naming an address or a
/// range, never through `*` or a name.
pub fn outbound_rules(text: &str) {
    let mut rules = Vec::new();
    let mut connects = Vec::new();
    let mut lookups = Vec::new();
    for line in text.lines() {
        if let Some(addr) = line.strip_prefix("connect ") {
            if let Ok(addr) = addr.parse::<SocketAddr>() {
                connects.push(addr);
            }
        } else if let Some(name) = line.strip_prefix("lookup ") {
            lookups.push(name.to_owned());
        } else {
            rules.push(line.to_owned());
        }
    }
    let Ok(policy) = OutboundPolicy::parse(&rules) else {
        return;
    };
    for name in &lookups {
        if policy.allows_lookup(name) {
            // (An IP literal is "looked up" without DNS; connecting to it is
            // what the rules decide.)
            let literal = name.trim_end_matches('.').parse::<IpAddr>().is_ok();
            assert!(
                literal || !rules.is_empty(),
                "a lookup allowed without rules"
            );
            let found: Vec<IpAddr> = connects.iter().map(SocketAddr::ip).collect();
            policy.record_lookup(name, &found);
        }
    }
    for addr in connects {
        if policy.allows_connect(addr) {
            assert!(!rules.is_empty(), "a connection allowed without rules");
            assert!(
                crate::tenant::outbound::is_public(addr.ip())
                    || rules.iter().any(|rule| rule_names_address(rule, addr.ip())),
                "{addr}, not public, reached without a rule whose address or range holds it: \
                 {rules:?}"
            );
        }
    }
}

/// Whether `rule`'s host is an address or range that holds `ip`: the
/// fuzzer's oracle, judged apart from the policy's code, in IPv6's space,
/// where an IPv4 address is its mapped form (`::ffff:a.b.c.d`) and an IPv4
/// prefix is 96 longer. (Asking only whether some rule named an address
/// let a mapped range that matched all of IPv4 through in release builds.)
fn rule_names_address(rule: &str, ip: IpAddr) -> bool {
    let Some((host, _port)) = rule.trim().rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (network, prefix) = match host.split_once('/') {
        Some((network, prefix)) => match (network.parse::<IpAddr>(), prefix.parse::<u32>()) {
            (Ok(network), Ok(prefix)) => (network, prefix),
            _ => return false,
        },
        None => match host.parse::<IpAddr>() {
            Ok(network) => (network, if network.is_ipv4() { 32 } else { 128 }),
            Err(_) => return false,
        },
    };
    let in_v6_space = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let prefix = if network.is_ipv4() {
        prefix.saturating_add(96)
    } else {
        prefix
    };
    let Some(host_bits) = 128_u32.checked_sub(prefix) else {
        return false;
    };
    let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
    in_v6_space(ip) & mask == in_v6_space(network) & mask
}

/// HTTP apps: a request head (HTTP/1.1 bytes, parsed as hyper parses them)
/// on a connection the first byte describes, through the head
/// normalisation every request goes through before an app sees it. A
/// head that passes has an absolute URI, one client-address header, and a
/// host the connection's server name allows.
pub fn http_request(bytes: &[u8]) {
    let Some((&pick, head)) = bytes.split_first() else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(head) else {
        return;
    };
    let mut request = http::Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"))
        .version(if parsed.version == Some(0) {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
    for header in parsed.headers.iter() {
        request = request.header(header.name, header.value);
    }
    let Ok(request) = request.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let conn = ConnMeta {
        peer: match pick & 1 {
            0 => SocketAddr::from((Ipv4Addr::new(203, 0, 113, 7), 51234)),
            _ => SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7), 51234)),
        },
        local: SocketAddr::from((Ipv4Addr::LOCALHOST, 8443)),
        server_name: (pick & 2 != 0).then(|| "echo.example.org".to_owned()),
        protocol: match (pick >> 2) % 3 {
            0 => Protocol::Http1,
            1 => Protocol::Http2,
            _ => Protocol::Http3,
        },
    };
    let serves = |host: &str| host == "echo.example.org" || host == "www.example.org";
    if prepare(&mut parts, &conn, &serves, 1 << 20).is_ok() {
        assert!(parts.uri.scheme().is_some() && parts.uri.authority().is_some());
        assert_eq!(parts.headers.get_all(CLIENT_ADDR_HEADER).iter().count(), 1);
        if let Some(name) = &conn.server_name {
            let host = parts.uri.host().unwrap_or_default().to_ascii_lowercase();
            let host = host.trim_end_matches('.');
            assert!(host == name || serves(host), "{host} served on {name}");
        }
    }
}

/// Component loading, the fast part: what a deploy reads of the bytes
/// before compiling (the magic and layer, the world by its export names,
/// the refusal of release candidates), then wasmparser's validation with
/// every proposal it knows. Never a panic.
pub fn component_detect(bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(MAX_COMPONENT_BYTES)];
    if detect_world(Path::new("fuzz.wasm"), bytes).is_ok() {
        let mut validator =
            wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
        let _ = validator.validate_all(bytes);
    }
}

/// The runtime the compile target loads components with, its compile
/// cache in a private scratch directory (emptied after each input).
fn runtime_under_test() -> &'static (Runtime, PathBuf) {
    static RUNTIME: OnceLock<(Runtime, PathBuf)> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let cache = scratch_dir("compile").join("cache");
        let runtime = Runtime::new(cache.clone()).expect("the fuzzed runtime starts");
        (runtime, cache)
    })
}

/// Component loading, whole: the function a deploy calls
/// ([`load_component_bytes`]): world detection, validation and compiling
/// by wasmtime (Cranelift) for the world's engine, the export and import
/// checks, linking. A bad component is an error, never a panic or an
/// abort.
pub fn component_compile(bytes: &[u8]) {
    if bytes.len() > MAX_COMPONENT_BYTES {
        return;
    }
    let (runtime, cache) = runtime_under_test();
    let _ = load_component_bytes(runtime, Path::new("fuzz.wasm"), bytes);
    empty_cache(cache);
}

/// Removes the compiled artifacts under `dir`, so a long run does not fill
/// the disk with them (each input is new anyway).
fn empty_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            empty_cache(&path);
        } else if path.extension().is_some_and(|e| e == "cwasm") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The event world's actions: a hostile guest's `list<action>` (sends of
/// any size, shutdowns, closes, pauses, timers, connects, to open, closed
/// and unknown connection ids) carried out turn after turn by the real
/// event-loop driver (`Driver::apply`) on real loopback TCP connections
/// whose peers send, read, finish and reset, with the driver gathering
/// between turns as it does for a guest. Checks what the world promises:
/// batches of at most `MAX_BATCH_EVENTS`; `closed` once per connection,
/// never for one not opened, and nothing after it (or after the guest's
/// `close`); no connection holding `SEND_HARD_CAP` bytes queued (one sent
/// past it is reported closed with a limit reason); timers bounded; a
/// connect the policy refuses answered by `connect-failed`, every connect
/// answered once. The input format is in `fuzzing/events.rs`.
pub fn event_actions(bytes: &[u8]) {
    events::run(bytes);
}
