//! Body wrappers: the request body cap ([`Limited`]) and the response
//! body meter ([`Metered`]) that ends each exchange's record.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::{Body, BoxError};

/// The error a capped request body ends with once the client sent more
/// than the app's `http_max_body_kb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body is over this app's limit of {limit} bytes (limits.http_max_body_kb)")]
pub(crate) struct BodyTooLarge {
    /// The cap, in bytes.
    pub limit: u64,
}

/// A request body cut at `limit` bytes: past it, the next frame is a
/// [`BodyTooLarge`] error and nothing more is read from the client.
pub(crate) struct Limited<B> {
    inner: B,
    limit: u64,
    seen: u64,
    failed: bool,
}

impl<B> Limited<B> {
    /// `inner`, allowed `limit` bytes.
    pub(crate) fn new(inner: B, limit: u64) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            failed: false,
        }
    }
}

impl<B> HttpBody for Limited<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            self.seen = self.seen.saturating_add(data.len() as u64);
            if self.seen > self.limit {
                self.failed = true;
                let limit = self.limit;
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let left = self.limit.saturating_sub(self.seen).saturating_add(1);
        if hint.lower() > left {
            return SizeHint::with_exact(left);
        }
        if hint.upper().is_none_or(|upper| upper > left) {
            hint.set_upper(left);
        }
        hint
    }
}

/// What a finished response body reports: the bytes sent and, when it
/// did not end cleanly, why.
pub(crate) type OnEnd = Box<dyn FnOnce(u64, Option<String>) + Send>;

/// A response body that counts the bytes it yields and calls `on_end`
/// exactly once: when it ends, fails, or is dropped (read to its end or
/// not: the client went away, or the protocol never reads it, as for the
/// answer to `HEAD`).
pub(crate) struct Metered {
    inner: Body,
    bytes: u64,
    on_end: Option<OnEnd>,
}

impl Metered {
    /// Meters `inner`.
    pub(crate) fn new(inner: Body, on_end: OnEnd) -> Self {
        Self {
            inner,
            bytes: 0,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, note: Option<String>) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes, note);
        }
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes = self.bytes.saturating_add(data.len() as u64);
                }
                if self.inner.is_end_stream() {
                    self.end(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                self.end(Some(format!("response body failed: {err}")));
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                self.end(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // A body that ended has reported already (`end` runs once); one
        // with nothing left to send (an empty body, never polled) is
        // complete.
        let note =
            (!self.inner.is_end_stream()).then(|| "the response body was abandoned".to_owned());
        self.end(note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::locks::lock;
    use crate::http::answer::full;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn a_body_past_its_cap_fails_and_stops() {
        let body = Limited::new(full(Bytes::from_static(b"0123456789")), 4);
        let err = body.collect().await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<BodyTooLarge>(),
            Some(&BodyTooLarge { limit: 4 })
        );
        let body = Limited::new(full(Bytes::from_static(b"0123")), 4);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "0123");
    }

    #[tokio::test]
    async fn a_metered_body_reports_once_with_its_bytes() {
        type Seen = Arc<Mutex<Vec<(u64, Option<String>)>>>;
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let record = |seen: &Seen| -> OnEnd {
            let seen = seen.clone();
            Box::new(move |bytes, note| lock(&seen).push((bytes, note)))
        };
        let body = Metered::new(full(Bytes::from_static(b"hello")), record(&seen));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        let abandoned = Metered::new(full(Bytes::from_static(b"never read")), record(&seen));
        drop(abandoned);
        let seen = lock(&seen);
        assert_eq!(seen[0], (5, None));
        assert_eq!(seen[1].0, 0);
        assert!(seen[1].1.as_deref().unwrap().contains("abandoned"));
        assert_eq!(seen.len(), 2);
    }
}
