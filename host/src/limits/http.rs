//! The bounds every HTTP request is held to, each with the threat it
//! bounds. An app sets them in its `[app.limits]` table (see
//! [`crate::limits::AppLimits`]); these are their HTTP-side values.
//!
//! Bounds set in code, not in the configuration:
//!
//! | bound | value | threat |
//! |---|---|---|
//! | HTTP/1.1 request head | [`HEADER_READ_TIMEOUT`] | slowloris: a head sent a byte at a time |
//! | HTTP/2 resets | [`MAX_PENDING_RESETS`] pending, [`MAX_LOCAL_RESETS`] caused | rapid reset (CVE-2023-44487) |

use std::time::Duration;

/// A client must send a whole HTTP/1.1 request head within this time after
/// the previous request (or the connection) began. Threat: slowloris, a
/// client holding a connection (and its buffer) by sending a head slowly.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 streams a client may open and reset before the gateway has
/// accepted them. Threat: "rapid reset", requests opened and cancelled at
/// once to make the server start work it never finishes.
pub const MAX_PENDING_RESETS: usize = 20;

/// HTTP/2 streams the gateway may reset because of client errors before it
/// closes the connection (hyper's default). Same threat as above.
pub const MAX_LOCAL_RESETS: usize = 1024;

/// The HTTP bounds of one app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request body bytes an app receives at most, in KiB. A request that
    /// declares more (`Content-Length`) gets `413` before the app sees it;
    /// one that sends more without declaring it has its body cut there
    /// (the guest's read fails). Threat: a client making a guest that
    /// buffers bodies run out of memory (or every guest spend its time
    /// reading) with one upload.
    pub max_body_kb: u64,
    /// Request head bytes (the request line or pseudo-headers and every
    /// header field) at most, in KiB: HTTP/1.1's read buffer, HTTP/2's
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, HTTP/3's
    /// `SETTINGS_MAX_FIELD_SECTION_SIZE`. Threat: memory held per request
    /// before any guest runs.
    pub max_header_kb: u32,
    /// Time from a request's head to its response's head, in
    /// milliseconds; past it the client gets `504 Gateway Timeout` (the
    /// guest's call goes on, and is bounded by its CPU budget). Threat:
    /// requests piling up behind a guest that never answers, each holding
    /// a stream and its buffers.
    pub request_timeout_ms: u64,
    /// Requests one HTTP/2 connection may have in flight at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`). HTTP/3 uses the app's
    /// `quic_streams_per_connection`. Threat: one client multiplexing
    /// thousands of requests over one connection, which the per-IP
    /// connection cap alone would never see.
    pub max_streams: u32,
}

/// Largest `http_max_body_kb`: 1 GiB.
pub const MAX_BODY_KB: u64 = 1 << 20;
/// Largest `http_max_header_kb`: 1 MiB.
pub const MAX_HEADER_KB: u32 = 1024;
/// Smallest `http_max_header_kb`: HTTP/1.1's buffer cannot be smaller than
/// 8 KiB (hyper's minimum), and browsers send heads of several KiB.
pub const MIN_HEADER_KB: u32 = 8;
/// Largest `http2_max_streams`.
pub const MAX_STREAMS: u32 = 1000;
/// Largest `http_request_timeout_ms`: an hour.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 3_600_000;

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_kb: 10 * 1024,
            max_header_kb: 64,
            request_timeout_ms: 30_000,
            max_streams: 100,
        }
    }
}

impl HttpLimits {
    /// The request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The body cap in bytes.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_kb.saturating_mul(1024)
    }

    /// The head cap in bytes.
    pub fn max_header_bytes(&self) -> usize {
        usize::try_from(self.max_header_kb)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024)
    }

    /// Checks each bound against its range; the error names the setting as
    /// `[app.limits]` spells it.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=MAX_BODY_KB).contains(&self.max_body_kb) {
            anyhow::bail!("limits.http_max_body_kb must be between 1 and {MAX_BODY_KB}");
        }
        if !(MIN_HEADER_KB..=MAX_HEADER_KB).contains(&self.max_header_kb) {
            anyhow::bail!(
                "limits.http_max_header_kb must be between {MIN_HEADER_KB} and {MAX_HEADER_KB}"
            );
        }
        if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(&self.request_timeout_ms) {
            anyhow::bail!(
                "limits.http_request_timeout_ms must be between 1 and {MAX_REQUEST_TIMEOUT_MS}"
            );
        }
        if !(1..=MAX_STREAMS).contains(&self.max_streams) {
            anyhow::bail!("limits.http2_max_streams must be between 1 and {MAX_STREAMS}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_named() {
        HttpLimits::default().validate().unwrap();
        let err = |limits: HttpLimits| limits.validate().unwrap_err().to_string();
        let small_head = HttpLimits {
            max_header_kb: 4,
            ..HttpLimits::default()
        };
        assert!(err(small_head).contains("http_max_header_kb"));
        let no_time = HttpLimits {
            request_timeout_ms: 0,
            ..HttpLimits::default()
        };
        assert!(err(no_time).contains("http_request_timeout_ms"));
        let streams = HttpLimits {
            max_streams: 5000,
            ..HttpLimits::default()
        };
        assert!(err(streams).contains("http2_max_streams"));
        assert_eq!(HttpLimits::default().max_header_bytes(), 64 * 1024);
    }
}
