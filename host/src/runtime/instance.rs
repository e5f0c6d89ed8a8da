//! One instance of an app: a task that owns the wasmtime `Store`, runs its
//! event loop (`run_concurrent`) and starts a `handle` call for every
//! connection sent to it, all concurrently on the same instance.
//!
//! Any trap poisons the whole store, so the instance is the failure domain:
//! [`run_instance`] returns, every stream of the store is dropped (closing
//! its connections), and the caller starts a fresh instance. Connections
//! still queued in the channel are not lost: the next instance takes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use thiserror::Error;
use tokio::sync::mpsc;
use wasmtime::Store;
use wasmtime::component::{Accessor, StreamReader};

use super::bindings::sockgate::gateway::types as wit;
use super::bindings::{ConnHandler, ConnHandlerPre};
use super::host_state::HostState;
use super::pump::{ClientReader, ClientWriter, ConnGuard};
use crate::conn::{ConnInfo, Connection, Transport};
use crate::logs::{AppLog, EventKind};

/// A connection assigned to an instance, with the guard that counts it as
/// active there.
pub struct Assigned {
    /// The connection.
    pub conn: Connection,
    /// Dropped when the connection is done.
    pub guard: ConnGuard,
}

/// Why an instance stopped serving.
#[derive(Debug, Error)]
pub enum InstanceError {
    /// The instance could not be created (e.g. its start function trapped).
    #[error("instantiation failed: {0:#}")]
    Instantiate(wasmtime::Error),
    /// The instance trapped while serving.
    #[error("{error:#}")]
    Trap {
        /// The trap.
        error: wasmtime::Error,
        /// Connections the instance was serving when it trapped.
        connections: usize,
    },
}

/// Creates instance `index` and serves connections from `rx` on it until
/// the channel closes (`Ok`) or the instance traps.
pub async fn run_instance(
    pre: &ConnHandlerPre<HostState>,
    log: &Arc<AppLog>,
    index: u32,
    rx: &mut mpsc::Receiver<Assigned>,
    active: &AtomicUsize,
) -> Result<(), InstanceError> {
    let mut store = Store::new(pre.engine(), HostState::new(log.clone(), index));
    let handler = pre
        .instantiate_async(&mut store)
        .await
        .map_err(InstanceError::Instantiate)?;
    log.event(Some(index), EventKind::InstanceStarted);

    let served = store
        .run_concurrent(async |accessor| -> wasmtime::Result<()> {
            let mut calls = FuturesUnordered::new();
            loop {
                tokio::select! {
                    Some(result) = calls.next() => result?,
                    assigned = rx.recv() => match assigned {
                        Some(assigned) => calls.push(serve(accessor, &handler, assigned)),
                        None => break,
                    },
                }
            }
            // Never drop a call in flight: that would poison the store.
            while let Some(result) = calls.next().await {
                result?;
            }
            Ok(())
        })
        .await;
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) | Err(error) => Err(InstanceError::Trap {
            // Read before the store (and so every connection) is dropped;
            // connections still queued are not lost and not counted.
            connections: active.load(Ordering::Relaxed).saturating_sub(rx.len()),
            error,
        }),
    }
}

/// Hands one connection to the guest: wraps the client's bytes as the `rx`
/// stream, calls `handle`, and pipes the returned stream to the client.
async fn serve(
    accessor: &Accessor<HostState>,
    handler: &ConnHandler,
    assigned: Assigned,
) -> wasmtime::Result<()> {
    let Assigned { conn, guard } = assigned;
    let info = wit_info(&conn.info);
    let reader = ClientReader::new(conn.reader, guard.clone());
    let rx = accessor.with(|mut store| StreamReader::new(&mut store, reader))?;
    let tx = handler
        .sockgate_gateway_handler()
        .call_handle(accessor, info, rx)
        .await?;
    let writer = ClientWriter::new(conn.writer, guard);
    accessor.with(|mut store| tx.pipe(&mut store, writer))?;
    Ok(())
}

/// The WIT view of a connection's info.
fn wit_info(info: &ConnInfo) -> wit::ConnInfo {
    wit::ConnInfo {
        id: info.id,
        transport: match info.transport {
            Transport::Tcp => wit::Transport::Tcp,
            Transport::Tls => wit::Transport::Tls,
            Transport::Quic => wit::Transport::Quic,
        },
        peer: info.peer.into(),
        local: info.local.into(),
        server_name: info.server_name.clone(),
        alpn: info.alpn.clone(),
        quic: info.quic.map(|q| wit::QuicStream {
            connection_id: q.connection_id,
            stream_id: q.stream_id,
        }),
    }
}
