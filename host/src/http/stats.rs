//! What an app's HTTP requests add up to: the access line of each
//! exchange, and the counters and duration histogram of `/metrics`
//! (`sockgate_http_requests_total{app,protocol,code}`,
//! `sockgate_http_request_duration_seconds{app}`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use super::{Exchange, Protocol};
use crate::base::histogram::Histogram;
use crate::base::locks::lock;

/// Upper bounds of the duration histogram's buckets, in seconds: from a
/// cached answer (1 ms) to the default request timeout (30 s).
pub(crate) const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// The metric of request counts.
pub(crate) const REQUESTS_METRIC: &str = "sockgate_http_requests_total";
/// The metric of request durations.
pub(crate) const DURATION_METRIC: &str = "sockgate_http_request_duration_seconds";

/// One app's HTTP counters. Shared by the app's versions, so a deploy does
/// not reset them.
pub struct HttpStats {
    /// Requests by protocol and status code (a handful of keys per app).
    requests: Mutex<BTreeMap<(Protocol, u16), u64>>,
    /// Request durations.
    durations: Histogram<{ BUCKETS.len() }>,
}

impl Default for HttpStats {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            durations: Histogram::new(&BUCKETS),
        }
    }
}

impl HttpStats {
    /// Counts one finished exchange.
    pub fn record(&self, exchange: &Exchange) {
        *lock(&self.requests)
            .entry((exchange.protocol, exchange.status))
            .or_default() += 1;
        self.durations.record(exchange.duration);
    }

    /// Requests served so far, over every protocol and status.
    pub fn total(&self) -> u64 {
        lock(&self.requests).values().sum()
    }

    /// Requests so far by protocol (`h1`, `h2`, `h3`).
    pub fn by_protocol(&self) -> [(Protocol, u64); 3] {
        let requests = lock(&self.requests);
        Protocol::ALL.map(|protocol| {
            let count = requests
                .iter()
                .filter(|((p, _), _)| *p == protocol)
                .map(|(_, n)| n)
                .sum();
            (protocol, count)
        })
    }

    /// The rows of [`REQUESTS_METRIC`] for app `app`: labels and value.
    pub fn request_rows(&self, app: &str) -> Vec<(String, u64)> {
        lock(&self.requests)
            .iter()
            .map(|((protocol, code), count)| {
                (
                    format!(
                        "app=\"{app}\",protocol=\"{}\",code=\"{code}\"",
                        protocol.as_str()
                    ),
                    *count,
                )
            })
            .collect()
    }

    /// The lines of the [`DURATION_METRIC`] histogram for app `app`
    /// (buckets, sum, count), without its `# HELP`/`# TYPE` header.
    pub fn duration_lines(&self, app: &str) -> String {
        self.durations.lines(DURATION_METRIC, app)
    }
}

/// The access line of one exchange, as the app's log shows it:
/// `GET /path 200 1234B 3.2ms h2 203.0.113.7:51234`, then the note, if
/// any, after ` - `.
pub(crate) fn access_line(exchange: &Exchange) -> String {
    let ms = exchange.duration.as_secs_f64() * 1000.0;
    let mut line = format!(
        "{} {} {} {}B {ms:.1}ms {} {}",
        exchange.method,
        exchange.path,
        exchange.status,
        exchange.bytes,
        exchange.protocol.as_str(),
        exchange.peer,
    );
    if let Some(note) = &exchange.note {
        let _ = write!(line, " - {note}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn exchange(protocol: Protocol, status: u16, ms: u64) -> Exchange {
        Exchange {
            method: http::Method::GET,
            path: "/a?b".into(),
            status,
            bytes: 12,
            duration: Duration::from_millis(ms),
            protocol,
            peer: "203.0.113.7:5".parse().unwrap(),
            note: None,
        }
    }

    #[test]
    fn requests_are_counted_by_protocol_and_code() {
        let stats = HttpStats::default();
        stats.record(&exchange(Protocol::Http2, 200, 3));
        stats.record(&exchange(Protocol::Http2, 200, 40));
        stats.record(&exchange(Protocol::Http3, 504, 31_000));
        assert_eq!(stats.total(), 3);
        assert_eq!(
            stats.request_rows("api"),
            [
                ("app=\"api\",protocol=\"h2\",code=\"200\"".to_owned(), 2),
                ("app=\"api\",protocol=\"h3\",code=\"504\"".to_owned(), 1),
            ]
        );
        assert_eq!(stats.by_protocol()[1], (Protocol::Http2, 2));
        let lines = stats.duration_lines("api");
        assert!(lines.contains(&format!(
            "{DURATION_METRIC}_bucket{{app=\"api\",le=\"0.005\"}} 1"
        )));
        assert!(lines.contains(&format!(
            "{DURATION_METRIC}_bucket{{app=\"api\",le=\"30\"}} 2"
        )));
        assert!(lines.contains(&format!(
            "{DURATION_METRIC}_bucket{{app=\"api\",le=\"+Inf\"}} 3"
        )));
        assert!(lines.contains(&format!("{DURATION_METRIC}_count{{app=\"api\"}} 3")));
    }

    #[test]
    fn the_access_line_says_what_happened() {
        let mut timed_out = exchange(Protocol::Http1, 504, 30_000);
        timed_out.note = Some("no response within 30000 ms".into());
        assert_eq!(
            access_line(&timed_out),
            "GET /a?b 504 12B 30000.0ms h1 203.0.113.7:5 - no response within 30000 ms"
        );
    }
}
