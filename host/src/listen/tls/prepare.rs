//! Everything fallible before TLS serves: certificate files read, the
//! dev CA or the ACME account readied, the TLS, plain-HTTP and QUIC sockets
//! bound ([`PreparedTls`]); then [`PreparedTls::start`] puts them to work.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use tokio::net::TcpListener;

use super::{
    Configs, Https, MAX_PENDING_HANDSHAKES, PENDING_HANDSHAKES_PER_CLIENT, SESSION_CACHE_SIZE,
    TlsContext,
};
use crate::apps::route::Router;
use crate::certs::acme::PreparedAcme;
use crate::certs::dev_ca::DevCa;
use crate::certs::files::StaticCerts;
use crate::certs::store::StateDir;
use crate::certs::{CertSource, Certificates};
use crate::config::tls::{ACME_TLS_ALPN, dev_ca_subtrees};
use crate::config::{AppConfig, Config, TlsSettings};
use crate::listen::accept::ClientSlots;
use crate::listen::http;
use crate::listen::quic::PreparedQuic;

/// The TLS side of the gateway, bound and with its certificates loaded but
/// not serving yet: made before the apps start, so that a bad certificate
/// file or a busy port refuses the whole start.
pub(crate) struct PreparedTls {
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
pub(crate) async fn prepare(config: &Config) -> Result<Option<PreparedTls>> {
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
            Some(
                PreparedAcme::new(&settings.acme, &state)
                    .context("tls.acme")?
                    .in_cluster(config.cluster.is_some()),
            ),
        ),
        CertSource::Files => (None, None),
    };
    let tls = crate::listen::tcp::bind(settings.listen)
        .await
        .context("tls.listen")?;
    let quic = crate::listen::quic::prepare(
        config.quic.as_ref(),
        tls.local_addr()?,
        settings.handshake_timeout_ms,
    )?;
    let http_settings = config.http.clone().unwrap_or_default();
    let http = if http_settings.enabled {
        Some(
            crate::listen::tcp::bind(http_settings.listen)
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
    pub(crate) fn ports(&self) -> Vec<u16> {
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
    pub(crate) fn start(self, router: &Arc<Router>, apps: &[AppConfig]) -> Result<Arc<Https>> {
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
            https.prepare_certificates(app);
        }
        tokio::spawn(super::handshake::serve(self.tls, ctx));
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
