//! The QUIC handshake's TLS side: rustls through quinn, with the TLS
//! listener's certificates, and refusals that say what was wrong.
//!
//! quinn starts a TLS session before the ClientHello is seen, so the app
//! cannot be chosen first as the TLS listener does. Instead the certificate
//! resolver ([`QuicCertResolver`]) is where a connection is routed: it sees
//! the server name and the client's ALPN protocols, and refuses names that
//! select no app and clients that speak none of the app's protocols. rustls
//! reports every resolver refusal as `access_denied`; [`RoutedSession`]
//! turns that into the alert the refusal deserves (`unrecognized_name`,
//! `no_application_protocol`), with a reason the client's library shows.
//!
//! ALPN: rustls picks the first protocol of its configuration's list that
//! the client offers, and one configuration serves the whole endpoint. So
//! that one app's `alpn` list can never change what another app's clients
//! negotiate, [`RoutedSession`] holds the client's first handshake bytes
//! until its ClientHello is complete, reads the server name from it
//! ([`super::client_hello`]), and only then starts the TLS session, with a
//! configuration offering that app's protocols alone, in its own order.
//! Names that select no app get the endpoint's configuration (the union of
//! all apps' protocols), which the resolver then refuses.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, Result};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::crypto::{
    ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey, ServerConfig, Session,
    UnsupportedVersion,
};
use quinn::{ConnectionId, Side, TransportErrorCode};
use quinn_proto::TransportError;
use quinn_proto::transport_parameters::TransportParameters;
use rustls::AlertDescription;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::client_hello::{self, Hello as ClientHelloBytes, MAX_CLIENT_HELLO};
use crate::apps::route::Router;
use crate::base::locks::{lock, read, write};
use crate::base::names::normalize_name;
use crate::certs::{Certificates, crypto_provider};
use crate::listen::route::{Hello, Lookup, Refusal, Routing, route_hello};

/// The ALPN protocol an app that declares none accepts over QUIC, where
/// ALPN is mandatory (RFC 9001, section 8.1). Clients of such apps offer it.
pub(crate) const DEFAULT_ALPN: &str = "sockgate";

thread_local! {
    /// The resolver's refusal during the `read_handshake` call running on
    /// this thread: rustls calls the resolver synchronously from there.
    static REFUSAL: RefCell<Option<Refusal>> = const { RefCell::new(None) };
}

/// The ALPN protocols each app accepts over QUIC, kept in step with the
/// apps the gateway serves.
#[derive(Default)]
pub(super) struct AppProtocols {
    by_app: RwLock<HashMap<String, Vec<String>>>,
}

impl AppProtocols {
    /// Records the protocols of `app` (its `alpn`, or [`DEFAULT_ALPN`]).
    pub(super) fn set(&self, app: &str, alpn: &[String]) {
        let protocols = if alpn.is_empty() {
            vec![DEFAULT_ALPN.to_owned()]
        } else {
            alpn.to_vec()
        };
        write(&self.by_app).insert(app.to_owned(), protocols);
    }

    /// The protocols `app` accepts.
    pub(super) fn of(&self, app: &str) -> Vec<String> {
        read(&self.by_app)
            .get(app)
            .cloned()
            .unwrap_or_else(|| vec![DEFAULT_ALPN.to_owned()])
    }

    /// Every app's protocols, each once: what the endpoint offers. rustls
    /// picks the first of these the client offers, so the default comes
    /// first and then apps in name order, for a stable choice.
    fn union(&self) -> Vec<Vec<u8>> {
        let by_app = read(&self.by_app);
        let mut names: Vec<&String> = by_app.keys().collect();
        names.sort();
        let mut all = vec![DEFAULT_ALPN.as_bytes().to_vec()];
        for name in names {
            for protocol in &by_app[name] {
                if !all.iter().any(|p| p == protocol.as_bytes()) {
                    all.push(protocol.as_bytes().to_vec());
                }
            }
        }
        all
    }
}

/// The certificate resolver of the QUIC endpoint: routes by server name
/// and checks ALPN before handing out the certificate the TLS listener
/// would serve for that name.
struct QuicCertResolver {
    router: Arc<Router>,
    certs: Arc<Certificates>,
    protocols: Arc<AppProtocols>,
}

impl std::fmt::Debug for QuicCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuicCertResolver")
    }
}

impl QuicCertResolver {
    fn check(&self, hello: &ClientHello<'_>) -> Result<Arc<CertifiedKey>, Refusal> {
        check_hello(hello, self)
    }
}

/// The QUIC endpoint's decision on a ClientHello (as rustls parsed it):
/// its server name normalised, its ALPN protocols checked against the
/// app's, then [`route_hello`]; the certificate to show, or the refusal.
/// (Crate-visible for the fuzz target over it.)
pub(crate) fn check_hello<L: Lookup>(
    hello: &ClientHello<'_>,
    lookup: &L,
) -> Result<L::Certificate, Refusal> {
    let server_name = hello.server_name().map(normalize_name);
    let offered: Vec<&[u8]> = hello.alpn().map(|p| p.collect()).unwrap_or_default();
    let hello = Hello {
        server_name: server_name.as_deref(),
        // TLS-ALPN-01 validations come over TCP, never QUIC.
        acme_challenge: false,
        offered_alpn: Some(&offered),
    };
    match route_hello(hello, lookup) {
        Routing::Serve { certificate, .. } => Ok(certificate),
        Routing::Refuse(refusal) => Err(refusal),
        Routing::Challenge(name) => Err(Refusal::NoChallenge(name)),
    }
}

/// The QUIC endpoint's view of the routing table and certificates: a name
/// selects an app by name (its current version is looked up per stream),
/// and the client's ALPN protocols are checked here, where one
/// configuration serves every app.
impl Lookup for QuicCertResolver {
    type App = String;
    type Certificate = Arc<CertifiedKey>;

    fn app(&self, name: &str) -> Option<String> {
        self.router
            .app_name_for_server_name(name)
            .filter(|app| self.router.get(app).is_some())
    }

    fn app_name(&self, app: &String) -> String {
        app.clone()
    }

    fn protocols(&self, app: &String) -> Vec<String> {
        self.protocols.of(app)
    }

    fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.certificate_for(name)
    }

    fn challenge_under_way(&self, _name: &str) -> bool {
        false
    }
}

impl ResolvesServerCert for QuicCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.check(&hello) {
            Ok(cert) => Some(cert),
            Err(refusal) => {
                REFUSAL.with(|slot| *slot.borrow_mut() = Some(refusal));
                None
            }
        }
    }
}

/// The endpoint's crypto configuration: rebuilt when the set of ALPN
/// protocols changes (an app is deployed), swapped in for new handshakes;
/// and one configuration per app protocol list, made on first use.
pub(super) struct RoutedCrypto {
    resolver: Arc<QuicCertResolver>,
    protocols: Arc<AppProtocols>,
    current: RwLock<Arc<QuicServerConfig>>,
    /// The configuration offering exactly these protocols, in this order.
    per_app: Mutex<HashMap<Vec<String>, Arc<QuicServerConfig>>>,
}

impl RoutedCrypto {
    /// Crypto for an endpoint serving the apps in `router` with `certs`.
    pub(super) fn new(
        router: Arc<Router>,
        certs: Arc<Certificates>,
        protocols: Arc<AppProtocols>,
    ) -> Result<Arc<Self>> {
        let resolver = Arc::new(QuicCertResolver {
            router,
            certs,
            protocols: protocols.clone(),
        });
        let current = RwLock::new(build(&resolver, protocols.union())?);
        Ok(Arc::new(Self {
            resolver,
            protocols,
            current,
            per_app: Mutex::new(HashMap::new()),
        }))
    }

    /// Offers the current union of the apps' protocols to new handshakes,
    /// and forgets the per-app configurations (rebuilt on first use, so
    /// lists no app has any more do not accumulate).
    pub(super) fn refresh(&self) -> Result<()> {
        let config = build(&self.resolver, self.protocols.union())?;
        *write(&self.current) = config;
        lock(&self.per_app).clear();
        Ok(())
    }

    /// The configuration for a client asking for `server_name`: one that
    /// offers only the protocols of the app the name selects, or `None`
    /// when it selects no app.
    fn config_for(&self, server_name: &str) -> Option<Arc<QuicServerConfig>> {
        let name = normalize_name(server_name);
        let app = self.resolver.router.app_name_for_server_name(&name)?;
        let accepted = self.protocols.of(&app);
        let mut per_app = lock(&self.per_app);
        if let Some(config) = per_app.get(&accepted) {
            return Some(config.clone());
        }
        let alpn = accepted.iter().map(|p| p.as_bytes().to_vec()).collect();
        match build(&self.resolver, alpn) {
            Ok(config) => {
                per_app.insert(accepted, config.clone());
                Some(config)
            }
            Err(err) => {
                tracing::warn!("quic: cannot build the TLS configuration of `{app}`: {err:#}");
                None
            }
        }
    }

    fn current(&self) -> Arc<QuicServerConfig> {
        read(&self.current).clone()
    }
}

fn build(resolver: &Arc<QuicCertResolver>, alpn: Vec<Vec<u8>>) -> Result<Arc<QuicServerConfig>> {
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("QUIC TLS configuration")?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    tls.alpn_protocols = alpn;
    // No 0-RTT: early data could be replayed, and guests cannot tell.
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|err| anyhow::anyhow!("QUIC TLS configuration: {err}"))?;
    Ok(Arc::new(quic))
}

impl ServerConfig for RoutedCrypto {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.current().initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.current().retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn Session> {
        Box::new(RoutedSession {
            inner: self.current().start_session(version, params),
            pending: Some(PendingHello {
                crypto: self.clone(),
                version,
                params: *params,
                bytes: Vec::new(),
            }),
        })
    }
}

/// A rustls session started on the configuration of the app the client's
/// server name selects, whose resolver refusals become precise TLS alerts.
struct RoutedSession {
    inner: Box<dyn Session>,
    /// Until the ClientHello is complete: the bytes so far, and what is
    /// needed to start the app's session then.
    pending: Option<PendingHello>,
}

struct PendingHello {
    crypto: Arc<RoutedCrypto>,
    version: u32,
    params: TransportParameters,
    bytes: Vec<u8>,
}

impl RoutedSession {
    /// Feeds handshake bytes to the TLS session, turning a resolver
    /// refusal into its own alert.
    fn read_inner(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        REFUSAL.with(|slot| slot.borrow_mut().take());
        let result = self.inner.read_handshake(buf);
        let refusal = REFUSAL.with(|slot| slot.borrow_mut().take());
        match (result, refusal) {
            (Err(err), Some(refusal))
                if err.code
                    == TransportErrorCode::crypto(AlertDescription::AccessDenied.into()) =>
            {
                tracing::debug!("quic: refused a handshake: {}", refusal.reason());
                Err(TransportError {
                    code: TransportErrorCode::crypto(refusal.alert().into()),
                    frame: None,
                    reason: refusal.reason(),
                })
            }
            (result, _) => result,
        }
    }
}

impl Session for RoutedSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.inner.handshake_data()
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        self.inner.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let Some(pending) = &mut self.pending else {
            return self.read_inner(buf);
        };
        pending.bytes.extend_from_slice(buf);
        let found = client_hello::server_name(&pending.bytes);
        if found == ClientHelloBytes::Incomplete && pending.bytes.len() <= MAX_CLIENT_HELLO {
            // Nothing reached rustls yet: nothing to answer.
            return Ok(false);
        }
        let Some(pending) = self.pending.take() else {
            return Ok(false);
        };
        if let ClientHelloBytes::Complete(Some(name)) = found
            && let Some(config) = pending.crypto.config_for(&name)
        {
            // Nothing was fed to the endpoint-wide session: start over on
            // the app's own configuration (initial keys depend only on the
            // version and connection id, which are the same).
            self.inner = config.start_session(pending.version, &pending.params);
        }
        self.read_inner(&pending.bytes)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        self.inner.write_handshake(buf)
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.inner.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_offers_the_default_first_then_each_protocol_once() {
        let protocols = AppProtocols::default();
        protocols.set("web", &["h3".into(), "x-chat".into()]);
        protocols.set("chat", &["x-chat".into()]);
        protocols.set("echo", &[]);
        let union: Vec<String> = protocols
            .union()
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect();
        assert_eq!(union, ["sockgate", "x-chat", "h3"]);
        assert_eq!(protocols.of("echo"), ["sockgate"]);
        assert_eq!(protocols.of("web"), ["h3", "x-chat"]);
    }
}
