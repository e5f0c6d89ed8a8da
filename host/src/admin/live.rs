//! The dashboard's live updates and its static files.
//!
//! `GET /live/gateway` and `GET /live/apps/NAME` are Server-Sent Events
//! streams (`text/event-stream`): a `snapshot` event with the whole last
//! hour of the series ([`super::timeline`]) as JSON columns, then a
//! `sample` event with each new point. A stream ends after
//! [`STREAM_LIFETIME`] and the browser's `EventSource` reconnects after
//! [`RECONNECT_MS`] (the `retry:` field), getting a fresh snapshot. Why
//! bounded: the session is checked once per request, so a stream that
//! never ended would keep feeding a browser whose session was logged out
//! or expired, and would hold one of the admin listener's connection slots
//! for ever.
//!
//! `GET /assets/…` serves the vendored charting library (uPlot, see
//! `assets/README.md`) and the dashboard's script, compiled into the
//! binary: no CDN, no build step.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};

use super::timeline::{Chart, Timeline};
use super::{Body, error, respond};

/// How long one live stream lasts before the browser reconnects.
pub(crate) const STREAM_LIFETIME: Duration = Duration::from_secs(60);
/// How long the browser waits before reconnecting (the `retry:` field).
pub(crate) const RECONNECT_MS: u64 = 1000;

/// The path of uPlot's script (versioned: cached for a year; the release
/// vendored in `assets/`).
pub(crate) const UPLOT_JS: &str = "/assets/uplot-1.6.32.min.js";
/// The path of uPlot's style sheet (versioned: cached for a year).
pub(crate) const UPLOT_CSS: &str = "/assets/uplot-1.6.32.min.css";
/// The path of the dashboard's own script.
pub(crate) const DASHBOARD_JS: &str = "/assets/dashboard.js";

/// A static file under `/assets/`, or `None`.
pub(crate) fn asset(path: &str) -> Option<Response<Body>> {
    let (content_type, body, immutable): (&str, &'static [u8], bool) = match path {
        UPLOT_JS => (
            "text/javascript; charset=utf-8",
            include_bytes!("assets/uPlot.iife.min.js"),
            true,
        ),
        UPLOT_CSS => (
            "text/css; charset=utf-8",
            include_bytes!("assets/uPlot.min.css"),
            true,
        ),
        DASHBOARD_JS => (
            "text/javascript; charset=utf-8",
            include_bytes!("assets/dashboard.js"),
            false,
        ),
        _ => return None,
    };
    let mut response = respond(StatusCode::OK, content_type, Bytes::from_static(body));
    if immutable {
        // Behind the session like every page, so private; the path names
        // the version, so it never changes.
        response.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("private, max-age=31536000, immutable"),
        );
    }
    Some(response)
}

/// What a live stream follows.
#[derive(Clone)]
pub(crate) enum Subject {
    /// The gateway's CPU and memory.
    Gateway,
    /// One app's traffic.
    App(String),
}

impl Subject {
    fn snapshot(&self, timeline: &Timeline) -> Chart {
        match self {
            Subject::Gateway => timeline.gateway_chart(),
            Subject::App(name) => timeline.app_chart(name),
        }
    }

    fn latest(&self, timeline: &Timeline) -> Option<Chart> {
        match self {
            Subject::Gateway => timeline.gateway_latest(),
            Subject::App(name) => timeline.app_latest(name),
        }
    }
}

/// The live stream of `subject`'s series (an app: one that runs).
pub(crate) fn stream(timeline: &Arc<Timeline>, subject: Subject) -> Response<Body> {
    let snapshot = subject.snapshot(timeline);
    let first = format!("retry: {RECONNECT_MS}\n{}", event("snapshot", &snapshot));
    let mut ticks = timeline.subscribe();
    ticks.mark_unchanged();
    let deadline = tokio::time::Instant::now() + STREAM_LIFETIME;
    let timeline = timeline.clone();
    let rest = futures::stream::unfold(Some((ticks, timeline, subject)), move |state| async move {
        let (mut ticks, timeline, subject) = state?;
        match tokio::time::timeout_at(deadline, ticks.changed()).await {
            Ok(Ok(())) => {}
            // The lifetime is over (the browser reconnects) or the
            // sampler stopped.
            _ => return None,
        }
        Some(match subject.latest(&timeline) {
            Some(point) => (event("sample", &point), Some((ticks, timeline, subject))),
            // The app was removed: say so, and end.
            None => (event("gone", &Chart::new()), None),
        })
    });
    let frames = futures::stream::once(async move { first })
        .chain(rest)
        .map(|text| Ok::<_, Infallible>(Frame::data(Bytes::from(text))));
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "text/event-stream")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// One server-sent event: its name and its JSON data on one line.
fn event(name: &str, data: &Chart) -> String {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    format!("event: {name}\ndata: {json}\n\n")
}
