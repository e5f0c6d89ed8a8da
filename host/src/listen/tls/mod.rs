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

//!
//! Files: [`prepare`] binds and loads everything fallible before serving
//! ([`PreparedTls`]); this file holds the running side ([`Https`]: apps
//! added and removed) and the server configurations; `handshake` accepts
//! connections and carries out [`super::route::route_hello`]'s decision.

pub(crate) mod handshake;
mod prepare;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::ServerConfig;
use rustls::server::{ProducesTickets, StoresServerSessions};

pub(crate) use prepare::prepare;

use crate::apps::app::App;
use crate::apps::route::Router;
use crate::base::locks::{read, write};
use crate::certs::{Certificates, crypto_provider};
use crate::config::AppConfig;
use crate::listen::accept::ClientSlots;
use crate::listen::quic::Quic;

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
        if app.is_http() {
            return self.http_config.clone();
        }
        let app = app.name();
        read(&self.app_configs)
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
            .chain(app.domains.iter().map(|d| d.to_string()))
            .collect()
    }

    /// Serves `app` over TLS: routes its custom domains (replacing the
    /// ones it had) and sets its ALPN protocols. Call it for an app added
    /// while the gateway runs, once the gateway checked who owns its domains
    /// ([`crate::base::names::NamePolicy`]), then
    /// [`prepare_certificates`](Self::prepare_certificates) once the router
    /// selects the app. Nothing changes when it fails.
    pub fn add_app(&self, app: &AppConfig) -> Result<()> {
        app.check_alpn()?;
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
        let mut configs = write(&self.ctx.app_configs);
        match config {
            None => configs.remove(app.name.as_str()),
            Some(config) => configs.insert(app.name.to_string(), config),
        };
        drop(configs);
        write(&self.served).insert(app.name.to_string(), self.names_of(app));
        Ok(())
    }

    /// Gets certificates for `app`'s names (orders them from ACME, issues
    /// them from the dev CA). Only once the router selects the app: a name
    /// that selects no running app gets no certificate, and an ACME
    /// renewal task started before the app routes would find its name
    /// unserved and stop for good.
    pub fn prepare_certificates(&self, app: &AppConfig) {
        for name in self.names_of(app) {
            self.ctx.certs.prepare(&name);
        }
    }

    /// Stops serving app `name` over TLS: its custom domains stop routing
    /// (so their certificates are no longer renewed, and no longer issued
    /// by the dev CA) and its ALPN configuration goes.
    pub fn remove_app(&self, name: &str) {
        self.ctx.router.set_custom_domains(name, &[]);
        write(&self.ctx.app_configs).remove(name);
        write(&self.served).remove(name);
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
        let served = read(&self.served);
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
