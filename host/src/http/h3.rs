//! HTTP/3 over one QUIC connection (ALPN `h3`), served by the `h3` crate
//! over quinn (`h3-quinn`).
//!
//! HTTP/3 needs the whole QUIC connection, not one stream: each side opens
//! three unidirectional streams (control and the QPACK encoder and decoder
//! streams), and each request is a bidirectional stream. The QUIC listener
//! hands an `h3` connection to [`serve`] right after its handshake; the
//! QUIC transport parameters allow the client those three unidirectional
//! streams, and the app's `quic_streams_per_connection` bounds the
//! requests in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use h3::error::{Code, ConnectionError};
use h3::server::RequestStream;
use http::header::DATE;
use http::{HeaderValue, Method, Version};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;

use super::{BoxError, Front};

/// The ALPN protocol of HTTP/3.
pub(crate) const ALPN_H3: &str = "h3";

/// Serves the requests of one QUIC connection through `front` until the
/// client closes it, it fails, or `shutdown` resolves: then the gateway
/// sends `GOAWAY`, takes no new requests, and lets those in flight finish.
pub(crate) async fn serve(
    conn: quinn::Connection,
    front: Arc<Front>,
    record: Arc<crate::tenant::conns::ActiveConn>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let limits = *front.limits();
    let mut h3 = h3::server::builder()
        .max_field_section_size(limits.max_header_bytes() as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await?;
    tokio::pin!(shutdown);
    let mut closing = false;
    loop {
        let accepted = tokio::select! {
            accepted = h3.accept() => accepted,
            () = &mut shutdown, if !closing => {
                closing = true;
                h3.shutdown(0).await?;
                continue;
            }
        };
        match accepted {
            Ok(Some(resolver)) => {
                // A request is activity: the idle timeout does not close a
                // connection that keeps asking.
                record.received(0);
                let front = front.clone();
                tokio::spawn(async move {
                    match resolver.resolve_request().await {
                        Ok((request, stream)) => {
                            if let Err(err) = exchange(&front, request, stream).await {
                                tracing::debug!("h3: {}: request ended: {err}", front.conn().peer);
                            }
                        }
                        Err(err) => {
                            tracing::debug!("h3: {}: bad request: {err}", front.conn().peer);
                        }
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(err) if closed_cleanly(&err) => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
}

/// Whether a connection ended the way connections end (the client closed
/// it, or it idled out), not by a protocol error on the gateway's side.
fn closed_cleanly(err: &ConnectionError) -> bool {
    err.is_h3_no_error() || !matches!(err, ConnectionError::Local { .. })
}

/// One request: its body is read as the origin reads it, the response
/// is sent as the origin produces it.
async fn exchange(
    front: &Front,
    request: http::Request<()>,
    stream: RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) -> Result<(), BoxError> {
    let (mut send, recv) = stream.split();
    let head = request.method() == Method::HEAD;
    let mut request = request.map(|()| {
        RecvBody {
            stream: recv,
            data_done: false,
            ended: false,
            reading: false,
        }
        .boxed_unsync()
    });
    *request.version_mut() = Version::HTTP_3;
    let response = front.serve(request).await;
    let (mut parts, mut body) = response.into_parts();
    if !parts.headers.contains_key(DATE)
        && let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
    {
        parts.headers.insert(DATE, date);
    }
    send.send_response(http::Response::from_parts(parts, ()))
        .await?;
    if !head {
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(err) => {
                    send.stop_stream(Code::H3_INTERNAL_ERROR);
                    return Err(err);
                }
            };
            match frame.into_data() {
                Ok(data) => send.send_data(data).await?,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.send_trailers(trailers).await?;
                        return Ok(());
                    }
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

/// A request body read from the request's stream: data frames, then the
/// trailers if the client sent any.
///
/// Dropped before the client's side of the stream ended (an origin that
/// answers without reading the whole request, as most `GET` handlers do),
/// it asks the client to stop sending with `H3_NO_ERROR`, as RFC 9114
/// §4.1.2 says, and the client keeps the response. quinn's own drop would
/// send code 0, which h3 clients report as a failed request ("Remote
/// reset: 0x0") when it reaches them before they finish the request.
struct RecvBody {
    stream: RequestStream<h3_quinn::RecvStream, Bytes>,
    data_done: bool,
    /// The client's side of the stream ended, or failed: nothing to stop.
    ended: bool,
    /// A read is in flight: h3-quinn holds the QUIC stream inside its read
    /// future until the read completes, and cannot stop it meanwhile.
    reading: bool,
}

impl RecvBody {
    /// Polls the next frame, keeping [`Self::ended`] and
    /// [`Self::reading`] true to the stream's state.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.poll_stream(cx);
        self.reading = polled.is_pending();
        if let Poll::Ready(None | Some(Err(_))) = polled {
            self.ended = true;
        }
        polled
    }

    fn poll_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match self.stream.poll_recv_data(cx) {
                Poll::Ready(Ok(Some(mut data))) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Poll::Ready(Ok(None)) => self.data_done = true,
                Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.stream.poll_recv_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(err)) => Poll::Ready(Some(Err(err.into()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl HttpBody for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.poll_next(cx)
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if self.reading {
            // Collect the read in flight if it is done: that gives the
            // stream back. If it is not, the stream goes with the read
            // future and quinn stops it with code 0: the origin dropped a
            // body it was still reading, which is rare.
            let mut cx = Context::from_waker(Waker::noop());
            if self.poll_next(&mut cx).is_pending() || self.ended {
                return;
            }
        }
        self.stream.stop_sending(Code::H3_NO_ERROR);
    }
}
