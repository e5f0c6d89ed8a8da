//! The QUIC accept loop and one connection's life: admission (handshake
//! permit, stateless retry, connection counts), the handshake with its
//! deadline, then each bidirectional stream handed to the app as a
//! [`Connection`] — or, for an HTTP app on ALPN `h3`, the whole connection
//! to its HTTP/3 side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use quinn::{Endpoint, Incoming, VarInt};

use super::budget::ConnectionSlot;
use super::{MAX_PENDING_HANDSHAKES, QuicContext, connection_codes, stream};
use crate::base::conn::{ConnInfo, Connection, QuicStream, Transport, next_conn_id};
use crate::config::RetryPolicy;

/// Accepts QUIC connections until the endpoint closes.
pub(super) async fn serve(endpoint: Endpoint, ctx: Arc<QuicContext>) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = ctx.pending.clone().try_acquire_owned() else {
            ctx.counters.refused.fetch_add(1, Ordering::Relaxed);
            incoming.ignore();
            continue;
        };
        let in_progress = MAX_PENDING_HANDSHAKES - ctx.pending.available_permits();
        let retry = match ctx.settings.retry {
            RetryPolicy::Always => true,
            RetryPolicy::Auto => in_progress > ctx.settings.retry_above,
            RetryPolicy::Never => false,
        };
        if retry && !incoming.remote_address_validated() && incoming.may_retry() {
            ctx.counters.retries.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = incoming.retry() {
                tracing::debug!("quic: cannot send a retry: {err}");
            }
            continue;
        }
        let peer = incoming.remote_address();
        let Some(slot) = ConnectionSlot::take(&ctx, crate::tenant::conns::client_key(peer.ip()))
        else {
            ctx.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("quic: {peer}: at the connection limit; refused");
            incoming.refuse();
            continue;
        };
        tokio::spawn(serve_connection(ctx.clone(), incoming, permit, slot));
    }
}

/// Completes the handshake of one client, then hands each of its
/// bidirectional streams to the app its server name selects.
pub(super) async fn serve_connection(
    ctx: Arc<QuicContext>,
    incoming: Incoming,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut slot: ConnectionSlot,
) {
    let peer = incoming.remote_address();
    let local_ip = incoming.local_ip();
    let handshake = async { incoming.accept()?.await };
    let conn = match tokio::time::timeout(ctx.handshake_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            ctx.counters
                .failed_handshakes
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("quic: {peer}: handshake failed: {err}");
            return;
        }
        Err(_) => {
            ctx.counters
                .failed_handshakes
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "quic: {peer}: no handshake within {:?}; dropped",
                ctx.handshake_timeout
            );
            return;
        }
    };
    drop(permit);
    ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
    let Some((server_name, alpn)) = handshake_data(&conn) else {
        conn.close(VarInt::from_u32(0), b"no handshake data");
        return;
    };
    let Some(app_name) = ctx.router.app_name_for_server_name(&server_name) else {
        close(&conn, connection_codes::APP_GONE, "the app is gone");
        return;
    };
    if !ctx.protocols.of(&app_name).contains(&alpn) {
        close(
            &conn,
            connection_codes::ALPN_NOT_ACCEPTED,
            &format!(
                "app `{app_name}` does not speak `{alpn}`: offer only {}",
                ctx.protocols.of(&app_name).join(", ")
            ),
        );
        return;
    }
    if let Some(app) = ctx.router.get(&app_name) {
        let (streams, window_kb) = app.account().quic_limits();
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(streams));
        let window = slot.grow_window(window_kb.saturating_mul(1024));
        conn.set_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX));
    }
    let quic_id = next_conn_id();
    let local = SocketAddr::new(local_ip.unwrap_or(ctx.local.ip()), ctx.local.port());
    // Shared by the descriptions of every stream of the connection.
    let (server_name, alpn): (Arc<str>, Arc<str>) = (server_name.into(), alpn.into());
    if *alpn == *crate::http::h3::ALPN_H3
        && let Some(app) = ctx.router.get(&app_name).filter(|app| app.is_http())
    {
        // HTTP/3: the app's HTTP side takes the whole connection (its
        // control and QPACK streams, a request per bidirectional stream),
        // counted as one connection of the app. The slot is held until
        // the connection is closed.
        let closing = conn.clone();
        let info = ConnInfo {
            id: quic_id,
            transport: Transport::Quic,
            peer,
            local,
            server_name: Some(server_name),
            alpn: Some(alpn),
            quic: None,
        };
        let closer: crate::base::conn::Closer = Box::new(move || {
            closing.close(VarInt::from_u32(0), b"closed by the gateway");
        });
        let held = conn.clone();
        if app.dispatch_h3(conn, info, closer).is_err() {
            close(
                &held,
                connection_codes::REFUSED,
                "refused at the app's connection limits",
            );
        }
        held.closed().await;
        drop(slot);
        return;
    }
    // Made once: a stream of its own is accepted only to close the
    // connection for it.
    let uni = conn.accept_uni();
    tokio::pin!(uni);
    loop {
        let (send, recv) = tokio::select! {
            biased;
            accepted = conn.accept_bi() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!("quic: {peer}: connection ended: {err}");
                    return;
                }
            },
            uni = &mut uni => {
                if uni.is_ok() {
                    close(
                        &conn,
                        connection_codes::UNI_STREAM_REFUSED,
                        "unidirectional streams are not served (only HTTP/3 uses them)",
                    );
                }
                return;
            }
        };
        // The current version of the app: a deploy switches new streams
        // of existing connections too.
        let Some(app) = ctx.router.get(&app_name) else {
            close(&conn, connection_codes::APP_GONE, "the app was removed");
            return;
        };
        let stream_id = u64::from(send.id());
        let (reader, writer, closer) = stream::split(send, recv);
        let stream = Connection {
            info: ConnInfo {
                id: next_conn_id(),
                transport: Transport::Quic,
                peer,
                local,
                server_name: Some(server_name.clone()),
                alpn: Some(alpn.clone()),
                quic: Some(QuicStream {
                    connection_id: quic_id,
                    stream_id,
                }),
            },
            reader: Box::pin(reader),
            writer: Box::pin(writer),
            closer,
        };
        ctx.counters.streams.fetch_add(1, Ordering::Relaxed);
        // A refused stream is dropped, which resets it with
        // `stream_codes::REFUSED`; the app counted it.
        let _ = app.dispatch(stream);
    }
}

/// The server name and ALPN protocol the handshake settled on.
fn handshake_data(conn: &quinn::Connection) -> Option<(String, String)> {
    let data = conn
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    let name = crate::base::names::normalize_name(data.server_name.as_deref()?);
    let alpn = String::from_utf8_lossy(data.protocol.as_deref()?).into_owned();
    Some((name, alpn))
}

fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    tracing::debug!("quic: {}: closing: {reason}", conn.remote_address());
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}
