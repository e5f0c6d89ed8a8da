//! The TLS listener: terminates TLS (1.2 and 1.3, rustls) on one address
//! for every app, and routes each connection by its server name (SNI):
//! `<app>.<domain>` for every base domain, plus each app's custom domains.
//!
//! The ClientHello is read before any certificate is chosen, so a client
//! asking for a name that selects no app (or for no name) gets an
//! `unrecognized_name` alert and never sees a certificate. Each handshake
//! has a deadline, its first byte a shorter one, and the handshakes in
//! progress are capped, with a share per client ([`super::accept`]).
//! Apps may declare the ALPN protocols they speak; the negotiated one and
//! the server name reach the guest in its connection info.
//!
//! ```toml
//! [tls]
//! listen = "0.0.0.0:443"              # default
//! domain = "example.org"              # or domains = ["example.org", ...]
//! certificates = "acme"               # "acme" (default), "dev-ca" or "files"
//! allowed_domains = ["*.customer.com"] # custom domains deploys may claim
//!                                     # outside the base domains
//!
//! [tls.acme]                          # see certs::acme::AcmeSettings
//! directory = "letsencrypt-staging"
//!
//! [[tls.certificate]]                 # static files, see certs::files
//! cert = "wildcard.pem"
//! key = "wildcard.key"
//!
//! [[app]]
//! name = "chat"                       # served at chat.example.org
//! domains = ["chat.acme.com"]         # and at these names
//! alpn = ["x-chat", "http/1.1"]       # protocols it speaks, preferred first
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::ServerConfig;
use rustls::server::{Acceptor, ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use crate::apps::app::App;
use crate::apps::route::Router;
use crate::base::conn::{ConnInfo, Connection, Transport, next_conn_id};
use crate::base::names::{check_dns_name, normalize_name};
use crate::certs::acme::PreparedAcme;
use crate::certs::dev_ca::DevCa;
use crate::certs::files::StaticCerts;
use crate::certs::store::StateDir;
use crate::certs::{CertSource, Certificates, crypto_provider};
use crate::config::tls::{ACME_TLS_ALPN, dev_ca_subtrees};
use crate::config::{AppConfig, Config, TlsSettings};
use crate::listen::accept::{ClientSlots, FIRST_BYTE_TIMEOUT, accept_loop, first_byte};
use crate::listen::http;
use crate::listen::quic::{PreparedQuic, Quic};
use crate::listen::tcp::SharedTcp;

/// Handshakes in progress at once, over all clients. Bounds the memory and
/// CPU that clients which connect and then stall (or flood) can tie up;
/// beyond it new connections are closed at once.
const MAX_PENDING_HANDSHAKES: usize = 4096;
/// Handshakes one client (an IPv4 address, an IPv6 /64) may have in
/// progress at once. Threat: one client holding every handshake slot (it
/// took 4,200 idle connections), so that TLS is down for everyone.
const PENDING_HANDSHAKES_PER_CLIENT: usize = 64;
/// TLS sessions remembered for resumption by session id (TLS 1.2).
const SESSION_CACHE_SIZE: usize = 4096;
/// TLS alert descriptions (RFC 8446, section 6).
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_UNRECOGNIZED_NAME: u8 = 112;

/// The TLS side of the gateway, bound and with its certificates loaded but
/// not serving yet: made before the apps start, so that a bad certificate
/// file or a busy port refuses the whole start.
pub struct PreparedTls {
    settings: TlsSettings,
    tls: TcpListener,
    http: Option<TcpListener>,
    list_apps: bool,
    files: Arc<StaticCerts>,
    dev_ca: Option<Arc<DevCa>>,
    acme: Option<PreparedAcme>,
    quic: Option<PreparedQuic>,
}

/// Prepares TLS if the configuration has a `[tls]` section.
pub async fn prepare(config: &Config) -> Result<Option<PreparedTls>> {
    let Some(settings) = &config.tls else {
        return Ok(None);
    };
    let state = StateDir::new(config.state_dir());
    let files = Arc::new(StaticCerts::load(&settings.files).context("tls.certificate")?);
    let (dev_ca, acme) = match settings.certificates {
        CertSource::DevCa => (
            Some(Arc::new(
                DevCa::load_or_create(&state, Some(&dev_ca_subtrees(config)))
                    .context("tls: development CA")?,
            )),
            None,
        ),
        CertSource::Acme => (
            None,
            Some(PreparedAcme::new(&settings.acme, &state).context("tls.acme")?),
        ),
        CertSource::Files => (None, None),
    };
    let tls = super::tcp::bind(settings.listen)
        .await
        .context("tls.listen")?;
    let quic = super::quic::prepare(
        config.quic.as_ref(),
        tls.local_addr()?,
        settings.handshake_timeout_ms,
    )?;
    let http_settings = config.http.clone().unwrap_or_default();
    let http = if http_settings.enabled {
        Some(
            super::tcp::bind(http_settings.listen)
                .await
                .context("http.listen")?,
        )
    } else {
        None
    };
    Ok(Some(PreparedTls {
        settings: settings.clone(),
        tls,
        http,
        list_apps: http_settings.list_apps,
        files,
        dev_ca,
        acme,
        quic,
    }))
}

impl PreparedTls {
    /// The ports of the TLS, plain-HTTP and QUIC listeners.
    pub fn ports(&self) -> Vec<u16> {
        [Some(&self.tls), self.http.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.port())
            .chain(self.quic.as_ref().and_then(PreparedQuic::port))
            .collect()
    }

    /// Starts serving TLS (and plain HTTP) for the apps in `router`,
    /// configured as `apps` say. Must be called within a tokio runtime.
    pub fn start(self, router: &Arc<Router>, apps: &[AppConfig]) -> Result<Arc<Https>> {
        router.set_domains(&self.settings.domains);
        let acme = self.acme.map(|acme| acme.start(router.clone()));
        let certs = Certificates::new(
            router.clone(),
            self.settings.certificates,
            self.files.clone(),
            acme,
            self.dev_ca,
        );
        let ticketer =
            rustls::crypto::ring::Ticketer::new().context("cannot set up TLS session tickets")?;
        let sessions: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let base = Configs {
            certs: certs.clone(),
            ticketer,
            sessions,
        };
        let ctx = Arc::new(TlsContext {
            router: router.clone(),
            default_config: base.build(Vec::new())?,
            challenge_config: base.build(vec![ACME_TLS_ALPN.as_bytes().to_vec()])?,
            http_config: base.build(
                crate::http::server::TLS_ALPN
                    .iter()
                    .map(|p| p.as_bytes().to_vec())
                    .collect(),
            )?,
            app_configs: RwLock::new(HashMap::new()),
            base,
            certs: certs.clone(),
            handshake_timeout: Duration::from_millis(self.settings.handshake_timeout_ms),
            pending: ClientSlots::new(MAX_PENDING_HANDSHAKES, PENDING_HANDSHAKES_PER_CLIENT),
        });
        let quic = match self.quic {
            Some(quic) => Some(quic.start(router, certs.clone())?),
            None => None,
        };
        let tls_addr = self.tls.local_addr()?;
        let http_addr = match &self.http {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let https = Arc::new(Https {
            ctx: ctx.clone(),
            tls_addr,
            http_addr,
            domains: router.domains(),
            served: RwLock::new(BTreeMap::new()),
            quic,
        });
        for app in apps {
            https.add_app(app)?;
        }
        tokio::spawn(serve(self.tls, ctx));
        if let Some(listener) = self.http {
            tokio::spawn(http::serve(
                listener,
                http::HttpContext::new(router.clone(), certs, tls_addr.port(), self.list_apps),
            ));
        }
        if !self.settings.files.is_empty() {
            tokio::spawn(self.files.watch());
        }
        Ok(https)
    }
}

/// Builds the server configurations, which differ only in ALPN and share
/// the certificate resolver, session cache and ticket keys (so sessions
/// resume across apps' configurations).
struct Configs {
    certs: Arc<Certificates>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl Configs {
    fn build(&self, alpn: Vec<Vec<u8>>) -> Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS server configuration")?
            .with_no_client_auth()
            .with_cert_resolver(self.certs.clone());
        config.alpn_protocols = alpn;
        config.ticketer = self.ticketer.clone();
        config.session_storage = self.sessions.clone();
        Ok(Arc::new(config))
    }
}

/// What the accept loop and the handshakes share.
struct TlsContext {
    router: Arc<Router>,
    certs: Arc<Certificates>,
    base: Configs,
    /// For apps without ALPN protocols.
    default_config: Arc<ServerConfig>,
    /// For TLS-ALPN-01 validation connections.
    challenge_config: Arc<ServerConfig>,
    /// For HTTP apps (`wasi:http`): ALPN `h2` and `http/1.1`.
    http_config: Arc<ServerConfig>,
    /// For apps with ALPN protocols, by app name.
    app_configs: RwLock<HashMap<String, Arc<ServerConfig>>>,
    handshake_timeout: Duration,
    /// Handshakes in progress, shared out per client.
    pending: Arc<ClientSlots>,
}

impl TlsContext {
    fn config_for(&self, app: &App) -> Arc<ServerConfig> {
        if app.http().is_some() {
            return self.http_config.clone();
        }
        let app = app.name();
        self.app_configs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
            .cloned()
            .unwrap_or_else(|| self.default_config.clone())
    }
}

/// The running TLS side: what `sockgate serve` prints, and the way to add
/// apps that appear while the gateway runs.
pub struct Https {
    ctx: Arc<TlsContext>,
    tls_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    domains: Vec<String>,
    /// The names each app is served at, for the start-up report.
    served: RwLock<BTreeMap<String, Vec<String>>>,
    /// The QUIC endpoint, serving the same names with the same
    /// certificates (`[quic]`, on by default).
    quic: Option<Arc<Quic>>,
}

impl Https {
    /// The address the TLS listener is bound to.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    /// The address the plain-HTTP listener is bound to, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The QUIC endpoint, when QUIC is enabled.
    pub fn quic(&self) -> Option<&Arc<Quic>> {
        self.quic.as_ref()
    }

    /// The certificate resolver.
    pub fn certificates(&self) -> &Arc<Certificates> {
        &self.ctx.certs
    }

    /// The names app `app` is served at: `<app>.<domain>` for every base
    /// domain, then its custom domains.
    pub fn names_of(&self, app: &AppConfig) -> Vec<String> {
        self.domains
            .iter()
            .map(|domain| format!("{}.{domain}", app.name))
            .chain(app.domains.iter().map(|d| normalize_name(d)))
            .collect()
    }

    /// Serves `app` over TLS: routes its custom domains (replacing the
    /// ones it had), sets its ALPN protocols, and gets certificates for its
    /// names (ordering them from ACME). Call it for an app added while the
    /// gateway runs, once the gateway checked who owns its domains
    /// ([`crate::base::names::NamePolicy`]). Nothing changes when it fails.
    pub fn add_app(&self, app: &AppConfig) -> Result<()> {
        app.check_alpn()?;
        for domain in &app.domains {
            check_dns_name(domain).with_context(|| format!("app `{}`: domains", app.name))?;
        }
        let config = if app.alpn.is_empty() {
            None
        } else {
            let alpn = app.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            Some(self.ctx.base.build(alpn)?)
        };
        if let Some(quic) = &self.quic {
            quic.add_app(app)?;
        }
        self.ctx.router.set_custom_domains(&app.name, &app.domains);
        let mut configs = self
            .ctx
            .app_configs
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match config {
            None => configs.remove(&app.name),
            Some(config) => configs.insert(app.name.clone(), config),
        };
        drop(configs);
        let names = self.names_of(app);
        for name in &names {
            self.ctx.certs.prepare(name);
        }
        self.served
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(app.name.clone(), names);
        Ok(())
    }

    /// Stops serving app `name` over TLS: its custom domains stop routing
    /// (so their certificates are no longer renewed, and no longer issued
    /// by the dev CA) and its ALPN configuration goes.
    pub fn remove_app(&self, name: &str) {
        self.ctx.router.set_custom_domains(name, &[]);
        self.ctx
            .app_configs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.served
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// What `sockgate serve` prints at start: the listeners, where the
    /// certificates come from, and the URL of each app. Tests parse the
    /// starts `tls listening on ADDR` and `http listening on ADDR`.
    pub fn describe(&self) -> Vec<String> {
        let certs = &self.ctx.certs;
        let source = match (certs.acme(), certs.dev_ca()) {
            (Some(acme), _) => format!(
                "certificates: acme from {} via {}, kept in {}",
                acme.directory_url(),
                acme.challenge().as_str(),
                acme.dir().display()
            ),
            (None, Some(dev_ca)) => format!(
                "certificates: dev CA; clients trust {} (`sockgate dev-ca` prints it)",
                dev_ca.root_path().display()
            ),
            (None, None) => "certificates: files".to_owned(),
        };
        let mut lines = vec![format!("tls listening on {}  ({source})", self.tls_addr)];
        let port = match self.tls_addr.port() {
            443 => String::new(),
            port => format!(":{port}"),
        };
        let served = self.served.read().unwrap_or_else(|p| p.into_inner());
        for (app, names) in served.iter() {
            let urls: Vec<String> = names
                .iter()
                .map(|n| format!("https://{n}{port}/"))
                .collect();
            lines.push(format!("app {app} at {}", urls.join(" ")));
        }
        if let Some(quic) = &self.quic {
            lines.push(quic.describe());
        }
        if let Some(http) = self.http_addr {
            lines.push(format!(
                "http listening on {http}  (redirects to https; answers ACME HTTP-01 challenges)"
            ));
        }
        lines
    }
}

/// Accepts TLS connections forever; each handshake runs in its own task,
/// holding one of the client's handshake slots until it is done.
async fn serve(listener: TcpListener, ctx: Arc<TlsContext>) {
    accept_loop(&listener, "tls", |stream, peer| {
        let slot = match ctx.pending.take(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!("tls: {peer}: no handshake slot ({why:?}); closed");
                return;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let first_byte_within = FIRST_BYTE_TIMEOUT.min(ctx.handshake_timeout);
            let outcome = tokio::time::timeout(ctx.handshake_timeout, async {
                first_byte(&stream, first_byte_within).await?;
                handshake(&ctx, stream).await
            })
            .await;
            drop(slot);
            match outcome {
                Ok(Ok(Some((app, conn)))) => {
                    // A refused connection is dropped, which closes it; the
                    // app counted it.
                    let _ = app.dispatch(conn);
                }
                Ok(Ok(None)) => {}
                Ok(Err(err)) => tracing::debug!("tls: {peer}: {err:#}"),
                Err(_) => tracing::debug!(
                    "tls: {peer}: no handshake within {:?}; closed",
                    ctx.handshake_timeout
                ),
            }
        });
    })
    .await
}

/// Runs the handshake of one connection. `Ok(None)`: the connection was
/// not for an app (an ACME validation) and is done.
async fn handshake(ctx: &TlsContext, stream: TcpStream) -> Result<Option<(Arc<App>, Connection)>> {
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    stream.set_nodelay(true)?;
    let stream = Arc::new(stream);
    let start = LazyConfigAcceptor::new(Acceptor::default(), SharedTcp(stream.clone()))
        .await
        .context("no valid ClientHello")?;
    let (server_name, challenge) = {
        let hello = start.client_hello();
        (
            hello.server_name().map(normalize_name),
            rustls_acme::is_tls_alpn_challenge(&hello),
        )
    };
    if challenge {
        let name = server_name.unwrap_or_default();
        if ctx.certs.challenge_certificate(&name).is_none() {
            send_alert(start.io, ALERT_UNRECOGNIZED_NAME).await;
            bail!("ACME challenge connection for `{name}`, which has no challenge under way");
        }
        let mut tls = start
            .into_stream(ctx.challenge_config.clone())
            .await
            .context("ACME challenge handshake")?;
        let _ = tls.shutdown().await;
        tracing::info!("tls: answered a tls-alpn-01 challenge for {name}");
        return Ok(None);
    }
    let Some(name) = server_name else {
        send_alert(start.io, ALERT_UNRECOGNIZED_NAME).await;
        bail!("no server name (SNI): refused");
    };
    let Some(app) = ctx.router.app_for_server_name(&name) else {
        send_alert(start.io, ALERT_UNRECOGNIZED_NAME).await;
        bail!("server name `{name}` selects no app: refused");
    };
    if ctx.certs.certificate_for(&name).is_none() {
        send_alert(start.io, ALERT_INTERNAL_ERROR).await;
        bail!("no certificate for `{name}` yet: refused");
    }
    let tls = start
        .into_stream(ctx.config_for(&app))
        .await
        .with_context(|| format!("handshake for `{name}`"))?;
    let alpn = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let (reader, writer) = tokio::io::split(tls);
    let closer_stream = stream;
    let conn = Connection {
        info: ConnInfo {
            id: next_conn_id(),
            transport: Transport::Tls,
            peer,
            local,
            server_name: Some(name),
            alpn,
            quic: None,
        },
        reader: Box::pin(reader),
        writer: Box::pin(writer),
        closer: Box::new(move || {
            let _ = socket2::SockRef::from(&*closer_stream).shutdown(Shutdown::Both);
        }),
    };
    Ok(Some((app, conn)))
}

/// Sends a fatal TLS alert in a plaintext record (what a server says before
/// any key is agreed) and closes the sending side.
async fn send_alert(mut io: SharedTcp, description: u8) {
    // ContentType alert (21), legacy version TLS 1.2, length 2, level fatal.
    let record = [21, 3, 3, 0, 2, 2, description];
    let result: io::Result<()> = async {
        io.write_all(&record).await?;
        io.shutdown().await
    }
    .await;
    if let Err(err) = result {
        tracing::debug!("tls: cannot send an alert: {err}");
    }
}
