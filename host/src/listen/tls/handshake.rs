//! The TLS accept loop and one connection's handshake: the ClientHello is
//! read, [`route_hello`] decides, and this carries it out: an alert, an
//! ACME challenge answered, or the app's handshake and a [`Connection`].

use std::io;
use std::net::Shutdown;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::AlertDescription;
use rustls::server::{Acceptor, ClientHello};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use super::TlsContext;
use crate::apps::app::App;
use crate::base::conn::{ConnInfo, Connection, Transport, next_conn_id};
use crate::base::names::normalize_name;
use crate::listen::accept::{FIRST_BYTE_TIMEOUT, accept_loop, first_byte};
use crate::listen::route::{Hello, Lookup, Routing, route_hello};
use crate::listen::tcp::SharedTcp;

/// Accepts TLS connections forever; each handshake runs in its own task,
/// holding one of the client's handshake slots until it is done.
pub(super) async fn serve(listener: TcpListener, ctx: Arc<TlsContext>) {
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
    let routing = routing_of(&start.client_hello(), ctx);
    let (name, app) = match routing {
        Routing::Serve { name, app, .. } => (name, app),
        Routing::Refuse(refusal) => {
            send_alert(start.io, refusal.alert()).await;
            bail!("{}: refused", refusal.reason());
        }
        Routing::Challenge(name) => {
            let mut tls = start
                .into_stream(ctx.challenge_config.clone())
                .await
                .context("ACME challenge handshake")?;
            let _ = tls.shutdown().await;
            tracing::info!("tls: answered a tls-alpn-01 challenge for {name}");
            return Ok(None);
        }
    };
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
            server_name: Some(name.into()),
            alpn: alpn.map(Into::into),
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

/// Where a TLS ClientHello (as rustls parsed it from the client's first
/// bytes) goes: its server name normalised, an ACME TLS-ALPN-01
/// validation recognised, then [`route_hello`]. ALPN is left to the app's
/// own configuration. (Crate-visible for the fuzz target over it.)
pub(crate) fn routing_of<L: Lookup>(
    hello: &ClientHello<'_>,
    lookup: &L,
) -> Routing<L::App, L::Certificate> {
    let server_name = hello.server_name().map(normalize_name);
    let hello = Hello {
        server_name: server_name.as_deref(),
        acme_challenge: rustls_acme::is_tls_alpn_challenge(hello),
        // The app's own configuration negotiates ALPN.
        offered_alpn: None,
    };
    route_hello(hello, lookup)
}

/// Sends a fatal TLS alert in a plaintext record (what a server says before
/// any key is agreed) and closes the sending side.
async fn send_alert(mut io: SharedTcp, description: AlertDescription) {
    // ContentType alert (21), legacy version TLS 1.2, length 2, level fatal.
    let record = [21, 3, 3, 0, 2, 2, u8::from(description)];
    let result: io::Result<()> = async {
        io.write_all(&record).await?;
        io.shutdown().await
    }
    .await;
    if let Err(err) = result {
        tracing::debug!("tls: cannot send an alert: {err}");
    }
}

/// The TLS listener's view of the routing table and certificates. ALPN is
/// left to the app's configuration, so its protocols are not asked for.
impl Lookup for TlsContext {
    type App = Arc<App>;
    type Certificate = Arc<CertifiedKey>;

    fn app(&self, name: &str) -> Option<Arc<App>> {
        self.router.app_for_server_name(name)
    }

    fn app_name(&self, app: &Arc<App>) -> String {
        app.name().to_owned()
    }

    fn protocols(&self, _app: &Arc<App>) -> Vec<String> {
        Vec::new()
    }

    fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.certificate_for(name)
    }

    fn challenge_under_way(&self, name: &str) -> bool {
        self.certs.challenge_certificate(name).is_some()
    }
}
