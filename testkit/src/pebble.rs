//! Pebble, Let's Encrypt's test ACME CA, and pebble-challtestsrv as its
//! DNS server, on free loopback ports, for the ACME tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gateway::WAIT;
use crate::net::free_port;
use crate::output::Output;
use crate::paths::ScratchDir;
use crate::tls::{client_config, connect, make_test_ca};

/// Spawns `command` with its stdout and stderr collected into one `Output`.
fn spawn_collected(mut command: Command) -> (Child, Output) {
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
    let lines = Output::default();
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
    /// pebble-challtestsrv's management API (DNS records per name).
    dns_management: SocketAddr,
    /// What Pebble printed.
    pub output: Output,
    /// The ACME directory URL.
    pub directory: String,
    /// The CA of Pebble's own HTTPS certificate (for `directory_ca`).
    pub https_ca: PathBuf,
    management: SocketAddr,
    /// How to start Pebble again after [`Pebble::stop`].
    command: (PathBuf, u16),
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
        let dns_management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut dns = Command::new("pebble-challtestsrv");
        dns.args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &dns_management.to_string()])
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
        let (pebble, output) = Self::spawn_pebble(&config_path, dns_port);
        Self {
            pebble: Some(pebble),
            dns,
            dns_management,
            output,
            directory: format!("https://{listen}/dir"),
            https_ca,
            management,
            command: (config_path, dns_port),
            _dir: dir,
        }
    }

    /// Starts Pebble on `config`, asking the DNS server on `dns_port`, and
    /// waits until it serves its directory.
    fn spawn_pebble(config: &Path, dns_port: u16) -> (Child, Output) {
        let mut pebble = Command::new("pebble");
        pebble
            .arg("-config")
            .arg(config)
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
        (pebble, output)
    }

    /// Starts Pebble again after [`Pebble::stop`], on the same addresses
    /// (a CA that comes back). It has forgotten every account and order,
    /// and issues under a new root.
    pub fn resume(&mut self) {
        if self.pebble.is_none() {
            let (config, dns_port) = &self.command;
            let (pebble, output) = Self::spawn_pebble(config, *dns_port);
            self.pebble = Some(pebble);
            self.output = output;
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

    /// Makes the CA resolve `name` to `ip` (instead of 127.0.0.1): where it
    /// validates that name's challenges (a cluster test points each name
    /// at another node).
    pub fn resolve(&self, name: &str, ip: IpAddr) {
        use std::io::{Read, Write};
        let body = format!(r#"{{"host":"{name}.","addresses":["{ip}"]}}"#);
        let mut stream = std::net::TcpStream::connect(self.dns_management)
            .expect("cannot reach pebble-challtestsrv's management API");
        write!(
            stream,
            "POST /add-a HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "pebble-challtestsrv refused the A record for {name}: {response}"
        );
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
