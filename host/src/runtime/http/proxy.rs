//! Serving a `wasi:http/proxy` (WASI 0.2) app: an instance per request.
//!
//! A WASI 0.2 export cannot be called again while a call is in progress,
//! and a 0.2 guest keeps per-request state in its instance, so each request
//! gets a fresh instance from the per-connection engine's pooling allocator
//! (as each connection of a `conn-handler-sync` app does), in a task of its
//! own: [`start`] returns that task's future, which owns the store, and the
//! channel the response head arrives on. The guest sets the response with
//! `response-outparam.set` and may go on writing the body before `handle`
//! returns; the store is dropped when `handle` returns (the body's last
//! bytes are queued by then). A trap ends that request only.

use std::future::{Future, poll_fn};
use std::pin::pin;

use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

use super::service::View;

/// Where the response head of a WASI 0.2 request arrives: the guest's
/// response, or the error code it set instead. Closed without a value when
/// the guest trapped or returned without setting one.
pub(crate) type ResponseRx = oneshot::Receiver<Result<http::Response<WasiBody>, ErrorCode>>;

/// How the instance of one request ended.
pub(crate) enum ProxyEnd<E> {
    /// `handle` returned.
    Served,
    /// The instance could not be created (the instance pool is full:
    /// [`wasmtime::PoolConcurrencyLimitError`], or its start trapped).
    NotStarted(wasmtime::Error),
    /// The instance trapped: what the caller's `explain` made of the trap
    /// and the store's data (a refused memory growth, say), read before the
    /// store was dropped.
    Trapped(E),
}

/// Starts serving `request` on a fresh instance of `pre` in `store`
/// (created, bounded and supervised by the caller). Run the returned future
/// in a task of its own; `waited` is called whenever the guest's call is
/// suspended in the host (it waits for I/O: the supervisor's notion of an
/// activation ending), `explain` on a trap. The store is dropped when the
/// future ends, which closes the response channel if the guest never set
/// a response: wait for both.
pub(crate) fn start<T: Send + 'static, E: Send + 'static>(
    pre: ProxyPre<T>,
    mut store: Store<T>,
    view: View<T>,
    request: http::Request<WasiBody>,
    waited: impl Fn() + Send + Sync + 'static,
    explain: impl FnOnce(&wasmtime::Error, &T) -> E + Send + 'static,
) -> (
    impl Future<Output = ProxyEnd<E>> + Send + 'static,
    ResponseRx,
) {
    let (tx, rx) = oneshot::channel();
    let run = async move {
        let proxy = match pre.instantiate_async(&mut store).await {
            Ok(proxy) => proxy,
            Err(err) => return ProxyEnd::NotStarted(err),
        };
        let scheme = if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let resources = {
            let mut http = view(store.data_mut());
            http.new_incoming_request(scheme, request)
                .and_then(|req| Ok((req, http.new_response_outparam(tx)?)))
        };
        let (req, out) = match resources {
            Ok(pair) => pair,
            Err(err) => return ProxyEnd::NotStarted(err),
        };
        let result = {
            let call = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out);
            let mut call = pin!(call);
            poll_fn(|cx| {
                let polled = call.as_mut().poll(cx);
                if polled.is_pending() {
                    waited();
                }
                polled
            })
            .await
        };
        match result {
            Ok(()) => ProxyEnd::Served,
            Err(error) => ProxyEnd::Trapped(explain(&error, store.data())),
        }
    };
    (run, rx)
}
