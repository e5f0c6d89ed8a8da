//! The answers the gateway gives in an app's place (a refused head, a
//! timeout, a failed guest), and the headers it adds to an app's answers.
//! Bodies are short plain text that say what happened and, where the
//! client can act, what to do; a guest's failure details go to the app's
//! log, never to the client.

use bytes::Bytes;
use http::header::{ALT_SVC, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::request::Rejection;
use super::{Body, Refusal};

/// How long a client may remember that an app speaks HTTP/3 (`ma` of
/// `Alt-Svc`, seconds): a day, as common servers advertise.
pub(crate) const ALT_SVC_MAX_AGE: u32 = 86_400;

/// Seconds a client is asked to wait before retrying a `503`.
const RETRY_AFTER_SECS: &str = "1";

/// A response with `status` and a plain-text body `text` (a newline is
/// added).
pub(crate) fn text(status: StatusCode, text: &str) -> Response<Body> {
    let body = Bytes::from(format!("{text}\n"));
    let length = body.len();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// A body holding `bytes`.
pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The answer to a request head the gateway refused.
pub(crate) fn rejection(rejection: &Rejection) -> Response<Body> {
    match rejection {
        Rejection::BadRequest(why) => text(StatusCode::BAD_REQUEST, &format!("bad request: {why}")),
        Rejection::Misdirected { host } => text(
            StatusCode::MISDIRECTED_REQUEST,
            &format!("{host} is not served on this connection: open a new connection for {host}"),
        ),
        Rejection::TooLarge { declared, limit } => text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the request body ({declared} bytes) is over this app's limit of {limit} bytes"
            ),
        ),
        Rejection::NotImplemented(why) => text(StatusCode::NOT_IMPLEMENTED, why),
    }
}

/// The answer to a request the origin did not serve.
pub(crate) fn refusal(refusal: &Refusal) -> Response<Body> {
    match refusal {
        Refusal::Busy(_) | Refusal::Gone => {
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the app is busy or restarting; try again",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            response
        }
        Refusal::Failed(_) | Refusal::GuestError(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the app failed while answering this request",
        ),
        Refusal::Expired => text(
            StatusCode::GATEWAY_TIMEOUT,
            "the app did not answer in time",
        ),
    }
}

/// The `Alt-Svc` value advertising HTTP/3 on UDP port `port`:
/// `h3=":443"; ma=86400`.
pub(crate) fn alt_svc(port: u16) -> HeaderValue {
    // Digits, quotes and ASCII: always a valid header value.
    HeaderValue::from_str(&format!("h3=\":{port}\"; ma={ALT_SVC_MAX_AGE}"))
        .unwrap_or_else(|_| HeaderValue::from_static("clear"))
}

/// Adds `value` as the response's `Alt-Svc`, unless the app set one.
pub(crate) fn add_alt_svc(response: &mut Response<Body>, value: &HeaderValue) {
    if !response.headers().contains_key(ALT_SVC) {
        response.headers_mut().insert(ALT_SVC, value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_svc_names_the_udp_port_and_keeps_the_apps_own() {
        assert_eq!(alt_svc(443), "h3=\":443\"; ma=86400");
        let mut response = text(StatusCode::OK, "hi");
        add_alt_svc(&mut response, &alt_svc(8443));
        assert_eq!(response.headers()[ALT_SVC], "h3=\":8443\"; ma=86400");
        let mut own = text(StatusCode::OK, "hi");
        own.headers_mut()
            .insert(ALT_SVC, HeaderValue::from_static("clear"));
        add_alt_svc(&mut own, &alt_svc(443));
        assert_eq!(own.headers()[ALT_SVC], "clear");
    }

    #[test]
    fn refusals_map_to_their_status() {
        assert_eq!(refusal(&Refusal::Expired).status(), 504);
        assert_eq!(refusal(&Refusal::Failed("trap".into())).status(), 500);
        let busy = refusal(&Refusal::Busy("full".into()));
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
        let misdirected = rejection(&Rejection::Misdirected {
            host: "b.example.org".into(),
        });
        assert_eq!(misdirected.status(), 421);
        assert_eq!(
            rejection(&Rejection::TooLarge {
                declared: 5,
                limit: 4
            })
            .status(),
            413
        );
    }
}
