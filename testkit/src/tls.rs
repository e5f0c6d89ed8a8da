//! TLS for tests and benchmarks: certificates from a throw-away CA, the
//! configuration table serving them, rustls clients (one that verifies,
//! for tests; one that does not, for load generators), and what a
//! handshake tells.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::gateway::WAIT;

/// A test CA and a server certificate it issued for `names` (and `ips`),
/// as PEM files in `dir`: `ca.pem`, `cert.pem` (the leaf), `key.pem`,
/// returned in that order, and `chain.pem` (leaf then CA, what a server
/// sends; see [`make_test_chain`]).
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
    std::fs::write(dir.join("chain.pem"), format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    paths
}

/// A certificate for `name` from a fresh [`make_test_ca`] in `dir`, as the
/// PEM files of its chain (leaf then CA) and its key.
pub fn make_test_chain(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (_, _, key) = make_test_ca(dir, &[name], &[]);
    (dir.join("chain.pem"), key)
}

/// The `[tls]` table of a gateway terminating TLS on a free loopback port
/// with the certificate files `cert` and `key` (for names under `domain`),
/// and its plain-HTTP listener off.
pub fn tls_files_table(domain: &str, cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = {domain:?}\ncertificates = \"files\"\n\
         [[tls.certificate]]\ncert = {:?}\nkey = {:?}\n\n[http]\nenabled = false\n",
        cert.display().to_string(),
        key.display().to_string(),
    )
}

/// The development CA root a gateway with state directory `state` uses.
pub fn dev_ca_root(state: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(state.join("dev-ca/root.pem")).expect("no dev CA root")
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

/// A load generator's TLS client: no resumption, no verification (it is
/// not under test, and would make the client the bottleneck), offering
/// `alpn`.
pub fn unverified_client_config(alpn: &[&str]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Accepts any certificate: a benchmark measures the servers.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects over TLS to `addr` asking for server name `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // As browsers and curl do: without it, the request written right after
    // the client's Finished waits for the server's delayed ACK (40 ms on
    // Linux) whenever Nagle holds it back, which measures the client.
    tcp.set_nodelay(true)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_the_leaf_then_its_ca() {
        let dir = crate::paths::ScratchDir::new("testkit-chain");
        let (chain, key) = make_test_chain(&dir.0, "echo.kit.test");
        let chain: Vec<_> = CertificateDer::pem_file_iter(&chain)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let ca = CertificateDer::from_pem_file(dir.0.join("ca.pem")).unwrap();
        let leaf = CertificateDer::from_pem_file(dir.0.join("cert.pem")).unwrap();
        assert_eq!(chain, [leaf, ca]);
        assert!(key.exists());
    }
}
