//! The gateway's `wasi:http` hooks: what `wasmtime-wasi-http` asks the
//! embedder. Outbound requests go through the app's policy
//! ([`super::outbound`]); wasmtime's default sender (which connects
//! wherever a guest asks) is not even compiled in. Errors of outbound
//! requests are logged at debug level (wasmtime's defaults warn on every
//! refused connection, which a guest could use to flood the gateway's log).

use wasmtime_wasi_http::p2::bindings::http::types as p2;
use wasmtime_wasi_http::p3::bindings::http::types as p3;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::outbound::Outbound;

/// Boxed future returned by [`WasiHttpHooks::send_request`].
type Sending = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

/// The hooks of one store: its app's outbound policy, log and budgets.
pub(crate) struct GatewayHooks {
    outbound: Outbound,
}

impl GatewayHooks {
    /// Hooks that send outbound requests as `outbound` allows.
    pub(crate) fn new(outbound: Outbound) -> Self {
        Self { outbound }
    }
}

impl WasiHttpHooks for GatewayHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_result: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sending {
        Box::new(self.outbound.clone().send(request, options))
    }

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> p2::ErrorCode {
        tracing::debug!("outbound http: {err}");
        p2::ErrorCode::HttpProtocolError
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> p2::ErrorCode {
        tracing::debug!("outbound http: connect: {err}");
        p2::ErrorCode::ConnectionRefused
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> p2::ErrorCode {
        tracing::debug!("outbound http: tls: {err}");
        p2::ErrorCode::TlsProtocolError
    }

    fn p3_error_from_hyper(&mut self, err: &hyper::Error) -> p3::ErrorCode {
        tracing::debug!("outbound http: {err}");
        p3::ErrorCode::HttpProtocolError
    }

    fn p3_error_from_connect(&mut self, err: &std::io::Error) -> p3::ErrorCode {
        tracing::debug!("outbound http: connect: {err}");
        p3::ErrorCode::ConnectionRefused
    }

    fn p3_error_from_tls(&mut self, err: &std::io::Error) -> p3::ErrorCode {
        tracing::debug!("outbound http: tls: {err}");
        p3::ErrorCode::TlsProtocolError
    }
}
