//! Outbound sockets counted against the app's `limits.max_outbound_sockets`
//! and the gateway's descriptor budget ([`crate::tenant::guest_budget`]).
//!
//! wasmtime-wasi opens the OS socket when the guest creates the socket
//! resource (`create-tcp-socket`, `tcp-socket.create`, …) and keeps no
//! count. This replaces, in the linker, the functions that create sockets
//! and the destructors of the socket resources, for WASI 0.2 and 0.3, TCP
//! and UDP: a creation first takes a lease from the budgets (or fails with
//! `new-socket-limit` in WASI 0.2, `other("…")` naming the limit in WASI
//! 0.3, and an app event), the store keeps the lease by the socket's table
//! index, and the destructor gives it back.
//!
//! Where a descriptor outlives its socket resource, so does the lease: a
//! WASI 0.2 socket cannot be dropped before its streams (they are its
//! children in the table), but a WASI 0.3 TCP socket can, while the streams
//! of `send` and `receive` still hold the connection. Those calls are
//! replaced too: each passes on wasmtime-wasi's result future through one
//! that holds a clone of the lease until wasmtime-wasi resolves it, which
//! it does when its stream lets go of the descriptor.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::oneshot;
use wasmtime::component::{
    Access, FutureConsumer, FutureReader, Linker, Resource, ResourceType, Source, StreamReader,
};
use wasmtime::{AsContextMut as _, StoreContextMut};
use wasmtime_wasi::p2::bindings::sockets::network as p2_network;
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p3::bindings::sockets::types as p3;
use wasmtime_wasi::p3::bindings::sockets::types::{
    HostTcpSocket, HostTcpSocketWithStore, HostUdpSocket,
};
use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsCtxView, WasiSocketsView};

use super::host_state::HostState;
use crate::tenant::guest_budget::SocketLease;

/// The WASI 0.2 interfaces whose items are replaced (the version
/// wasmtime-wasi 48 defines; guests importing older 0.2 versions are
/// linked to it).
const P2_TCP_CREATE: &str = "wasi:sockets/tcp-create-socket@0.2.12";
const P2_UDP_CREATE: &str = "wasi:sockets/udp-create-socket@0.2.12";
const P2_TCP: &str = "wasi:sockets/tcp@0.2.12";
const P2_UDP: &str = "wasi:sockets/udp@0.2.12";
/// The WASI 0.3 interface whose items are replaced.
const P3_TYPES: &str = "wasi:sockets/types@0.3.0";

/// Replaces the WASI 0.2 socket constructors and destructors in `linker`
/// (which must already hold WASI 0.2) with counted ones.
pub(crate) fn add_p2_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let result = shadow_p2(linker)
        .map_err(anyhow::Error::from)
        .context("cannot install the counted WASI 0.2 sockets");
    linker.allow_shadowing(false);
    result
}

/// Replaces the WASI 0.3 socket constructors, destructors and TCP
/// `send`/`receive` in `linker` (which must already hold WASI 0.3) with
/// counted ones.
pub(crate) fn add_p3_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let result = shadow_p3(linker)
        .map_err(anyhow::Error::from)
        .context("cannot install the counted WASI 0.3 sockets");
    linker.allow_shadowing(false);
    result
}

fn sockets(state: &mut HostState) -> WasiSocketsCtxView<'_> {
    state.sockets()
}

fn shadow_p2(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(P2_TCP_CREATE)?.func_wrap(
        "create-tcp-socket",
        |mut store: StoreContextMut<'_, HostState>, (family,): (p2_network::IpAddressFamily,)| {
            let state = store.data_mut();
            let Ok(lease) = state.lease_socket("tcp") else {
                return Ok((Err(p2_network::ErrorCode::NewSocketLimit),));
            };
            let created = tcp_create_socket::Host::create_tcp_socket(&mut state.sockets(), family);
            match created {
                Ok(socket) => {
                    state.keep_socket(socket.rep(), lease);
                    Ok((Ok(socket),))
                }
                Err(err) => Ok((Err(err.downcast()?),)),
            }
        },
    )?;
    linker.instance(P2_UDP_CREATE)?.func_wrap_async(
        "create-udp-socket",
        |mut store: StoreContextMut<'_, HostState>, (family,): (p2_network::IpAddressFamily,)| {
            Box::new(async move {
                let state = store.data_mut();
                let Ok(lease) = state.lease_socket("udp") else {
                    return Ok((Err(p2_network::ErrorCode::NewSocketLimit),));
                };
                let created = {
                    let mut view = state.sockets();
                    udp_create_socket::Host::create_udp_socket(&mut view, family).await
                };
                match created {
                    Ok(socket) => {
                        state.keep_socket(socket.rep(), lease);
                        Ok((Ok(socket),))
                    }
                    Err(err) => Ok((Err(err.downcast()?),)),
                }
            })
        },
    )?;
    linker.instance(P2_TCP)?.resource(
        "tcp-socket",
        ResourceType::host::<wasmtime_wasi::p2::TcpSocket>(),
        |mut store, rep| drop_socket::<wasmtime_wasi::p2::TcpSocket>(store.data_mut(), rep),
    )?;
    linker.instance(P2_UDP)?.resource(
        "udp-socket",
        ResourceType::host::<wasmtime_wasi::p2::UdpSocket>(),
        |mut store, rep| drop_socket::<wasmtime_wasi::p2::UdpSocket>(store.data_mut(), rep),
    )?;
    Ok(())
}

fn shadow_p3(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut types = linker.instance(P3_TYPES)?;
    types.func_wrap(
        "[static]tcp-socket.create",
        |mut store: StoreContextMut<'_, HostState>, (family,): (p3::IpAddressFamily,)| {
            let state = store.data_mut();
            let lease = match state.lease_socket("tcp") {
                Ok(lease) => lease,
                Err(refusal) => return Ok((Err(p3::ErrorCode::Other(Some(refusal.to_string()))),)),
            };
            let created = HostTcpSocket::create(&mut state.sockets(), family);
            match created {
                Ok(socket) => {
                    state.keep_socket(socket.rep(), lease);
                    Ok((Ok(socket),))
                }
                Err(err) => Ok((Err(err.downcast()?),)),
            }
        },
    )?;
    types.func_wrap_async(
        "[static]udp-socket.create",
        |mut store: StoreContextMut<'_, HostState>, (family,): (p3::IpAddressFamily,)| {
            Box::new(async move {
                let state = store.data_mut();
                let lease = match state.lease_socket("udp") {
                    Ok(lease) => lease,
                    Err(refusal) => {
                        return Ok((Err(p3::ErrorCode::Other(Some(refusal.to_string()))),));
                    }
                };
                let created = {
                    let mut view = state.sockets();
                    HostUdpSocket::create(&mut view, family).await
                };
                match created {
                    Ok(socket) => {
                        state.keep_socket(socket.rep(), lease);
                        Ok((Ok(socket),))
                    }
                    Err(err) => Ok((Err(err.downcast()?),)),
                }
            })
        },
    )?;
    types.func_wrap(
        "[method]tcp-socket.send",
        |mut store: StoreContextMut<'_, HostState>,
         (socket, data): (Resource<p3::TcpSocket>, StreamReader<u8>)| {
            let lease = store.data().socket_lease(socket.rep());
            let result = <WasiSockets as HostTcpSocketWithStore<HostState>>::send(
                Access::<HostState, WasiSockets>::new(store.as_context_mut(), sockets),
                socket,
                data,
            )?;
            Ok((hold_until_resolved(store, result, lease)?,))
        },
    )?;
    types.func_wrap(
        "[method]tcp-socket.receive",
        |mut store: StoreContextMut<'_, HostState>, (socket,): (Resource<p3::TcpSocket>,)| {
            let lease = store.data().socket_lease(socket.rep());
            let (stream, result) = <WasiSockets as HostTcpSocketWithStore<HostState>>::receive(
                Access::<HostState, WasiSockets>::new(store.as_context_mut(), sockets),
                socket,
            )?;
            Ok(((stream, hold_until_resolved(store, result, lease)?),))
        },
    )?;
    types.resource(
        "tcp-socket",
        ResourceType::host::<p3::TcpSocket>(),
        |mut store, rep| drop_socket::<p3::TcpSocket>(store.data_mut(), rep),
    )?;
    types.resource(
        "udp-socket",
        ResourceType::host::<p3::UdpSocket>(),
        |mut store, rep| drop_socket::<p3::UdpSocket>(store.data_mut(), rep),
    )?;
    Ok(())
}

/// The destructor of a socket resource: deletes it from the table (which
/// closes the descriptor unless a stream still holds it) and lets its lease
/// go. A WASI 0.2 socket with live streams cannot be deleted: the guest
/// traps, and the lease stays with the socket.
fn drop_socket<T: Send + 'static>(state: &mut HostState, rep: u32) -> wasmtime::Result<()> {
    state
        .table()
        .delete(Resource::<T>::new_own(rep))
        .map_err(|err| {
            wasmtime::format_err!("failed to delete socket resource from table: {err}")
        })?;
    state.release_socket(rep);
    Ok(())
}

/// Passes on `theirs` (the result future of a WASI 0.3 TCP `send` or
/// `receive`, which wasmtime-wasi resolves once the stream lets go of the
/// socket's descriptor) through a future that holds `lease` until then.
fn hold_until_resolved(
    mut store: StoreContextMut<'_, HostState>,
    theirs: FutureReader<Result<(), p3::ErrorCode>>,
    lease: Option<Arc<SocketLease>>,
) -> wasmtime::Result<FutureReader<Result<(), p3::ErrorCode>>> {
    let Some(lease) = lease else {
        return Ok(theirs);
    };
    let (tx, rx) = oneshot::channel();
    theirs.pipe(
        &mut store,
        ReleaseOnResult {
            lease: Some(lease),
            result: Some(tx),
        },
    )?;
    FutureReader::new(&mut store, async move {
        // Without a result (the store is going away), the stream ended.
        Ok::<_, wasmtime::Error>(rx.await.unwrap_or(Err(p3::ErrorCode::ConnectionAborted)))
    })
}

/// Takes wasmtime-wasi's result of a stream, lets the lease go, and hands
/// the result on to the guest's future.
struct ReleaseOnResult {
    lease: Option<Arc<SocketLease>>,
    result: Option<oneshot::Sender<Result<(), p3::ErrorCode>>>,
}

impl<D> FutureConsumer<D> for ReleaseOnResult {
    type Item = Result<(), p3::ErrorCode>;

    fn poll_consume(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        store: StoreContextMut<'_, D>,
        mut source: Source<'_, Self::Item>,
        _finish: bool,
    ) -> std::task::Poll<wasmtime::Result<()>> {
        let mut value = None;
        source.read(store, &mut value)?;
        self.lease = None;
        if let (Some(result), Some(value)) = (self.result.take(), value) {
            let _ = result.send(value);
        }
        std::task::Poll::Ready(Ok(()))
    }
}
