//! Bodies between the protocol side ([`crate::http::Body`], errors boxed)
//! and `wasmtime-wasi-http` ([`WasiBody`], its own error type), and a
//! response body that holds its request's place in its instance until it
//! ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as WasiError, WasiBody};

use crate::http::body::BodyTooLarge;
use crate::http::{Body, BoxError};

/// A request body as `wasmtime-wasi-http` takes it: the gateway's cap
/// becomes the `HTTP-request-body-size` error the guest sees.
pub fn to_wasi(body: Body) -> WasiBody {
    body.map_err(to_wasi_error).boxed_unsync()
}

/// A guest's response body as the protocol side sends it.
pub fn from_wasi(body: WasiBody) -> Body {
    body.map_err(|err| Box::new(err) as BoxError).boxed_unsync()
}

/// The `wasi:http` error for an error of a request body.
pub fn to_wasi_error(err: BoxError) -> WasiError {
    if let Some(too_large) = err.downcast_ref::<BodyTooLarge>() {
        return WasiError::HttpRequestBodySize(Some(too_large.limit));
    }
    match err.downcast::<hyper::Error>() {
        Ok(hyper) => WasiError::Hyper(*hyper),
        Err(other) => WasiError::InternalError(Some(other.to_string())),
    }
}

/// A response body holding `guard` (its request's place in its instance's
/// count) until it ends or is dropped: an instance that drains waits for
/// the bodies it still produces.
pub struct Guarded<G> {
    inner: WasiBody,
    guard: Option<G>,
}

impl<G> Guarded<G> {
    /// `inner`, holding `guard`.
    pub fn new(inner: WasiBody, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<G: Unpin> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = WasiError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WasiError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::answer::full;
    use crate::http::body::Limited;

    #[tokio::test]
    async fn the_cap_reaches_the_guest_as_a_body_size_error() {
        let capped = Limited::new(full(Bytes::from_static(b"0123456789")), 4).boxed_unsync();
        match to_wasi(capped).collect().await {
            Err(WasiError::HttpRequestBodySize(Some(4))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
