//! Helpers for the TLS and ACME tests: a gateway with a `[tls]` section, a
//! rustls client, raw ClientHellos, and Pebble (Let's Encrypt's test CA)
//! with its mock DNS server, each on free loopback ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::{Gateway, ScratchDir, TestApp, guest_component, shared_cache_dir};

/// How long a test waits for anything the gateway or Pebble does.
pub const WAIT: Duration = Duration::from_secs(60);

/// A gateway serving TLS, with the addresses it printed.
pub struct TlsGateway {
    /// The running gateway (its output, its TCP addresses).
    pub gateway: Gateway,
    /// Where the TLS listener is bound.
    pub tls: SocketAddr,
    /// Where the plain-HTTP listener is bound, if enabled.
    pub http: Option<SocketAddr>,
    /// Where the QUIC endpoint is bound (UDP), if enabled.
    pub quic: Option<SocketAddr>,
}

impl TlsGateway {
    /// Starts a gateway whose state directory is `state` and whose
    /// configuration has the `tables` (TOML: `[tls]`, `[http]`, ...) and
    /// `apps`, each app also on a free loopback TCP port.
    pub fn start(state: &Path, tables: &str, apps: &[TestApp<'_>]) -> Self {
        let dir = ScratchDir::new("tls-gateway");
        let mut config = format!(
            "[gateway]\ncache_dir = {:?}\nstate_dir = {:?}\n\n{tables}\n",
            shared_cache_dir().display().to_string(),
            state.display().to_string(),
        );
        for app in apps {
            config.push_str(&format!(
                "\n[[app]]\nname = {:?}\ncomponent = {:?}\nlisten = \"127.0.0.1:0\"\n{}\n",
                app.name,
                guest_component(app.guest).display().to_string(),
                app.extra
            ));
        }
        let config_path = dir.0.join("sockgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
        command.arg("serve").arg("--config").arg(&config_path);
        let gateway = Gateway::spawn(command, dir);
        let printed = |what: &str| {
            gateway.stdout.text().lines().find_map(|line| {
                let rest = line.strip_prefix(what)?;
                rest.split_whitespace().next()?.parse().ok()
            })
        };
        let tls = printed("tls listening on ")
            .unwrap_or_else(|| panic!("no TLS listener printed:\n{}", gateway.stdout.text()));
        let http = printed("http listening on ");
        let quic = printed("quic listening on ");
        Self {
            gateway,
            tls,
            http,
            quic,
        }
    }
}

/// A rustls client configuration trusting `roots`, offering `alpn`.
pub fn client_config(roots: &[CertificateDer<'static>], alpn: &[&str]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Connects over TLS to `addr` asking for server name `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// The TLS alert a failed handshake received, if that is why it failed.
pub fn received_alert(err: &std::io::Error) -> Option<rustls::AlertDescription> {
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Sends `data` through an echo app over `stream` and reads it back.
pub async fn echo_through(stream: &mut TlsStream<TcpStream>, data: &[u8]) {
    stream.write_all(data).await.unwrap();
    let mut back = vec![0; data.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(back, data, "echoed bytes differ");
}

/// The end-entity certificate the server presented.
pub fn served_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("no certificate")[0]
        .clone()
}

/// A ClientHello as rustls would send it: with SNI `sni` (or none).
pub fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut config = (*client_config(&[], &[])).clone();
    config.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
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

/// The development CA root a gateway with state directory `state` uses.
pub fn dev_ca_root(state: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(state.join("dev-ca/root.pem")).expect("no dev CA root")
}

/// A free loopback TCP port (bound and released; another process could
/// take it in between, which the tests accept).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA and a server certificate it issued for `names`, as PEM files
/// in `dir`: `ca.pem`, `cert.pem` (the leaf), `key.pem`.
pub fn make_test_ca(dir: &Path, names: &[&str], ips: &[IpAddr]) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sockgate test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
    let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Lines a child process printed (the harness's collector).
pub type Lines = crate::support::Output;

/// Spawns `command` with its stdout and stderr collected into one `Lines`.
fn spawn_collected(mut command: Command) -> (Child, Lines) {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run {program} ({err}): install Debian's `pebble` package \
                 (apt-get install pebble; .ci/run does)"
            )
        });
    let lines = Lines::default();
    lines.collect_from(child.stdout.take().unwrap());
    lines.collect_from(child.stderr.take().unwrap());
    (child, lines)
}

/// Pebble, Let's Encrypt's test ACME CA, and pebble-challtestsrv as its
/// DNS server (every name resolves to 127.0.0.1), on loopback. Both are
/// killed when dropped.
pub struct Pebble {
    pebble: Option<Child>,
    dns: Child,
    /// What Pebble printed.
    pub output: Lines,
    /// The ACME directory URL.
    pub directory: String,
    /// The CA of Pebble's own HTTPS certificate (for `directory_ca`).
    pub https_ca: PathBuf,
    management: SocketAddr,
    _dir: ScratchDir,
}

impl Pebble {
    /// Starts Pebble validating challenges on the gateway's `tls_port`
    /// (TLS-ALPN-01) and `http_port` (HTTP-01).
    pub fn start(tls_port: u16, http_port: u16) -> Self {
        let dir = ScratchDir::new("pebble");
        let (https_ca, cert, key) =
            make_test_ca(&dir.0, &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let dns_port = free_port();
        let mut dns = Command::new("pebble-challtestsrv");
        dns.args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        let (dns, dns_output) = spawn_collected(dns);
        assert!(
            dns_output.wait_for(WAIT, |t| t.contains("Starting challenge servers")),
            "pebble-challtestsrv did not start:\n{}",
            dns_output.text()
        );
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            r#"{{"pebble": {{"listenAddress": "{listen}", "managementListenAddress": "{management}",
            "certificate": {:?}, "privateKey": {:?}, "httpPort": {http_port}, "tlsPort": {tls_port},
            "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
            cert.display().to_string(),
            key.display().to_string(),
        );
        let config_path = dir.0.join("pebble.json");
        std::fs::write(&config_path, config).unwrap();
        let mut pebble = Command::new("pebble");
        pebble
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // Validate at once, never reject a good nonce, and validate
            // every order afresh.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let (pebble, output) = spawn_collected(pebble);
        assert!(
            output.wait_for(WAIT, |t| t.contains("ACME directory available at")),
            "pebble did not start:\n{}",
            output.text()
        );
        Self {
            pebble: Some(pebble),
            dns,
            output,
            directory: format!("https://{listen}/dir"),
            https_ca,
            management,
            _dir: dir,
        }
    }

    /// The `[tls.acme]` table for a gateway ordering from this Pebble.
    pub fn acme_table(&self, challenge: &str, extra: &str) -> String {
        format!(
            "[tls.acme]\ndirectory = {:?}\ndirectory_ca = {:?}\nchallenge = {challenge:?}\n\
             contact = [\"admin@sockgate.test\"]\n{extra}\n",
            self.directory,
            self.https_ca.display().to_string()
        )
    }

    /// Pebble's issuing root, from its management API (Pebble makes a new
    /// one at every start).
    pub async fn root(&self) -> CertificateDer<'static> {
        let https_ca = CertificateDer::from_pem_file(&self.https_ca).unwrap();
        // Pebble logs its management address before its goroutine has
        // bound it, and prints nothing once it has: poll the port briefly.
        let deadline = Instant::now() + WAIT;
        let mut stream = loop {
            match connect(
                self.management,
                "localhost",
                client_config(std::slice::from_ref(&https_ca), &[]),
            )
            .await
            {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!(
                    "cannot reach Pebble's management API: {err}\n{}",
                    self.output.text()
                ),
            }
        };
        stream
            .write_all(b"GET /roots/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        // Go's server may end without close_notify: keep what was read.
        let _ = stream.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        let begin = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("no root PEM");
        CertificateDer::from_pem_slice(text[begin..].as_bytes()).unwrap()
    }

    /// Orders Pebble has received so far.
    pub fn orders(&self) -> usize {
        self.output.text().matches("POST /order-plz").count()
    }

    /// Stops Pebble (its DNS server keeps running).
    pub fn stop(&mut self) {
        if let Some(mut pebble) = self.pebble.take() {
            let _ = pebble.kill();
            let _ = pebble.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}
