//! Bodies between the protocol side ([`crate::http::Body`], errors boxed)
//! and `wasmtime-wasi-http` ([`WasiBody`], its own error type), and a
//! response body that holds its request's place in its instance until it
//! ends.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as WasiError, WasiBody};

use crate::http::body::BodyTooLarge;
use crate::http::{Body, BoxError};

/// A request body as `wasmtime-wasi-http` takes it: the gateway's cap
/// becomes the `HTTP-request-body-size` error the guest sees.
pub(crate) fn to_wasi(body: Body) -> WasiBody {
    body.map_err(to_wasi_error).boxed_unsync()
}

/// A guest's response body as the protocol side sends it.
pub(crate) fn from_wasi(body: WasiBody) -> Body {
    body.map_err(|err| Box::new(err) as BoxError).boxed_unsync()
}

/// The `wasi:http` error for an error of a request body.
pub(crate) fn to_wasi_error(err: BoxError) -> WasiError {
    if let Some(too_large) = err.downcast_ref::<BodyTooLarge>() {
        return WasiError::HttpRequestBodySize(Some(too_large.limit));
    }
    match err.downcast::<hyper::Error>() {
        Ok(hyper) => WasiError::Hyper(*hyper),
        Err(other) => WasiError::InternalError(Some(other.to_string())),
    }
}

/// How long the rest of a response body nobody reads any more is read on
/// for (see [`Guarded`]'s `Drop`): past it, the body is dropped as it is.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// A response body holding `guard` (its request's place in its instance's
/// count) until it ends: an instance that drains waits for the bodies it
/// still produces.
///
/// Dropped before its end (hyper drops a body once `content-length` bytes
/// are out, before the guest's stream has ended; a client may go away
/// mid-body), it is read to its end in a task of its own, for at most
/// [`DRAIN_LIMIT`]: with wasmtime 48, a guest stream whose host reader goes
/// away first leaves about nine entries in its store's table of tasks,
/// streams and futures (measured in `runtime/http/tests.rs`), and a
/// long-lived instance would trap with a full table after some 17 000
/// such requests.
pub(crate) struct Guarded<G: Send + 'static> {
    inner: Option<WasiBody>,
    guard: Option<G>,
}

impl<G: Send + 'static> Guarded<G> {
    /// `inner`, holding `guard`.
    pub(crate) fn new(inner: WasiBody, guard: G) -> Self {
        Self {
            inner: Some(inner),
            guard: Some(guard),
        }
    }
}

impl<G: Send + Unpin + 'static> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = WasiError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WasiError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Ended: nothing to drain.
            self.inner = None;
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl<G: Send + 'static> Drop for Guarded<G> {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        let guard = self.guard.take();
        // Usually the guest has already ended its stream: the end is there
        // to take without a task.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            match Pin::new(&mut inner).poll_frame(&mut cx) {
                Poll::Ready(None | Some(Err(_))) => return,
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Pending => break,
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _guard = guard;
            let drained = async { while let Some(Ok(_)) = inner.frame().await {} };
            let _ = tokio::time::timeout(DRAIN_LIMIT, drained).await;
        });
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
