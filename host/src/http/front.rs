//! The request pipeline of one connection: normalise, cap, serve with a
//! deadline, answer, meter (see the module documentation of
//! [`crate::http`]).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::body::{Limited, Metered};
use super::request::{self, Rejection};
use super::{Body, ConnMeta, Exchange, HttpLimits, Origin, Protocol, Refusal, answer};

/// When a request's deadline passes: set by the front in each request's
/// extensions, so an origin can stop work nobody waits for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(pub Instant);

/// What every request of one connection shares: the origin that serves
/// them, the app's HTTP limits, the connection's facts, and the `Alt-Svc`
/// value to advertise (when the app is served over HTTP/3).
pub(crate) struct Front {
    origin: Arc<dyn Origin>,
    limits: HttpLimits,
    conn: ConnMeta,
    alt_svc: Option<HeaderValue>,
}

impl Front {
    /// The pipeline for a connection `conn` to `origin`, held to `limits`;
    /// `alt_svc` is added to HTTP/1.1 and HTTP/2 answers that lack one.
    pub(crate) fn new(
        origin: Arc<dyn Origin>,
        limits: HttpLimits,
        conn: ConnMeta,
        alt_svc: Option<HeaderValue>,
    ) -> Arc<Self> {
        Arc::new(Self {
            origin,
            limits,
            conn,
            alt_svc,
        })
    }

    /// The limits requests are held to.
    pub(crate) fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    /// The connection's facts.
    pub(crate) fn conn(&self) -> &ConnMeta {
        &self.conn
    }

    /// Serves one request of the connection and returns what to send back:
    /// the app's response, or the gateway's answer in its place. Never
    /// fails: every failure is an answer (see [`answer`]).
    pub(crate) async fn serve(&self, request: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        let protocol = match request.version() {
            Version::HTTP_2 => Protocol::Http2,
            Version::HTTP_3 => Protocol::Http3,
            _ => self.conn.protocol,
        };
        let (mut parts, body) = request.into_parts();
        let record = Record {
            origin: self.origin.clone(),
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            protocol,
            peer: self.conn.peer,
            started,
        };
        let conn = ConnMeta {
            protocol,
            ..self.conn.clone()
        };
        let origin = &self.origin;
        let prepared = request::prepare(
            &mut parts,
            &conn,
            &|host| origin.serves_host(host),
            self.limits.max_body_bytes(),
        );
        if let Err(rejection) = prepared {
            let note = rejection_note(&rejection);
            return record.finish(answer::rejection(&rejection), Some(note));
        }
        let timeout = self.limits.request_timeout();
        parts.extensions.insert(Deadline(started + timeout));
        let body = Limited::new(body, self.limits.max_body_bytes()).boxed_unsync();
        let served =
            tokio::time::timeout(timeout, self.origin.serve(Request::from_parts(parts, body)))
                .await;
        let (mut response, note) = match served {
            Ok(Ok(response)) => (response, None),
            Ok(Err(refusal)) => {
                let note = refusal_note(&refusal);
                (answer::refusal(&refusal), Some(note))
            }
            Err(_) => (
                answer::refusal(&Refusal::Expired),
                Some(expired_note(timeout)),
            ),
        };
        if protocol != Protocol::Http3
            && let Some(alt_svc) = &self.alt_svc
        {
            answer::add_alt_svc(&mut response, alt_svc);
        }
        record.finish(response, note)
    }
}

/// What the access record of a request needs until its body ends.
struct Record {
    origin: Arc<dyn Origin>,
    method: Method,
    path: String,
    protocol: Protocol,
    peer: std::net::SocketAddr,
    started: Instant,
}

impl Record {
    /// Wraps `response`'s body so that its end reports the exchange, with
    /// `note` saying why the gateway answered (if it did).
    fn finish(self, response: Response<Body>, note: Option<String>) -> Response<Body> {
        let status = response.status().as_u16();
        let head = self.method == Method::HEAD;
        response.map(move |body| {
            let on_end = Box::new(move |bytes, body_note: Option<String>| {
                // The answer to HEAD has a body nobody reads.
                let body_note = body_note.filter(|_| !head);
                let exchange = Exchange {
                    method: self.method,
                    path: self.path,
                    status,
                    bytes,
                    duration: self.started.elapsed(),
                    protocol: self.protocol,
                    peer: self.peer,
                    note: note.or(body_note),
                };
                self.origin.record(&exchange);
            });
            Metered::new(body, on_end).boxed_unsync()
        })
    }
}

fn rejection_note(rejection: &Rejection) -> String {
    match rejection {
        Rejection::BadRequest(why) => format!("refused: {why}"),
        Rejection::Misdirected { host } => {
            format!("misdirected: {host} selects another app than this connection's name")
        }
        Rejection::TooLarge { declared, limit } => format!(
            "refused: a {declared}-byte body is over limits.http_max_body_kb ({limit} bytes)"
        ),
        Rejection::NotImplemented(why) => format!("refused: {why}"),
    }
}

fn refusal_note(refusal: &Refusal) -> String {
    match refusal {
        Refusal::Busy(why) => format!("busy: {why}"),
        Refusal::Gone => "the app was removed".to_owned(),
        Refusal::Failed(why) => format!("failed: {why}"),
        Refusal::GuestError(why) => format!("the guest answered with an error: {why}"),
        Refusal::Expired => "the guest answered past the deadline".to_owned(),
    }
}

fn expired_note(timeout: Duration) -> String {
    format!(
        "no response within {} ms (limits.http_request_timeout_ms)",
        timeout.as_millis()
    )
}
