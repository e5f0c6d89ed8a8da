//! Per-app log and event records: what the app's guests printed, and what
//! happened to the app (instances started, trapped, replaced).
//!
//! Both are bounded rings, so a chatty or crash-looping guest costs a fixed
//! amount of host memory. Both are also forwarded to `tracing` (the
//! gateway's own log), each under a per-app rate: events at
//! [`TRACED_EVENTS_PER_SECOND`], guest lines at the app's
//! `limits.log_lines_per_second`; what is held back is counted and reported
//! as "N … dropped", and stays in the rings.

use crate::base::locks::lock;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Log lines kept per app; older lines are dropped first.
const LOG_LINES_KEPT: usize = 1000;
/// Events kept per app; older events are dropped first.
const EVENTS_KEPT: usize = 200;

/// Which output stream a guest wrote a line to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
    /// The gateway's access line of one HTTP request to an HTTP app
    /// (`crate::http::stats::access_line`), in the app's log.
    Access,
}

/// One line a guest printed.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// When the gateway received the line.
    pub at: SystemTime,
    /// Which instance (shard) of the app printed it.
    pub instance: u32,
    /// stdout or stderr.
    pub stream: Stream,
    /// The line, without its newline, decoded lossily as UTF-8.
    pub text: String,
}

/// Something that happened to an app, for operators.
#[derive(Debug, Clone)]
pub struct Event {
    /// When it happened.
    pub at: SystemTime,
    /// The instance concerned, when there is one.
    pub instance: Option<u32>,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of app events.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// An instance was created and is serving.
    InstanceStarted,
    /// An instance was idle (no connection, no pending guest work, no
    /// traffic) for the app's `hibernate_after_secs` and was dropped; the
    /// next connection wakes a fresh one.
    Hibernated {
        /// The idle time that made it hibernate, in seconds.
        idle_secs: u64,
    },
    /// A connection woke a hibernated instance: a fresh one serves.
    Woke {
        /// From the connection's arrival to the instance ready, in µs.
        wake_us: u64,
    },
    /// An instance trapped; its connections were closed.
    InstanceTrapped {
        /// The category (`cpu-budget`, `wall-clock`, `memory-limit`, `guest`).
        cause: &'static str,
        /// What happened, with the guest's wasm backtrace.
        reason: String,
        /// How many connections it was serving.
        connections: usize,
    },
    /// A connection of a `conn-handler-sync` app trapped its instance (one
    /// instance per connection): that connection was closed, no other.
    ConnectionTrapped {
        /// The category (`cpu-budget`, `wall-clock`, `memory-limit`, `guest`).
        cause: &'static str,
        /// What happened, with the guest's wasm backtrace.
        reason: String,
        /// The connection's id.
        connection: u64,
    },
    /// A request of a `wasi:http/proxy` app (one instance per request)
    /// trapped its instance: that request got `500`, no other.
    RequestTrapped {
        /// The category (`cpu-budget`, `wall-clock`, `memory-limit`, `guest`).
        cause: &'static str,
        /// What happened, with the guest's wasm backtrace.
        reason: String,
        /// The request: method and path.
        request: String,
    },
    /// Instantiation failed (the instance will be retried; for a
    /// `conn-handler-sync` app, the connection it was for is closed).
    InstanceFailed {
        /// Why.
        reason: String,
    },
    /// The instance is restarted only after this delay because it trapped
    /// soon after starting (crash-loop protection).
    Backoff {
        /// The delay.
        delay_ms: u64,
    },
    /// A connection was refused or closed by a limit.
    LimitHit {
        /// The limit, as named in the configuration.
        limit: &'static str,
        /// What happened to whom.
        detail: String,
    },
    /// A replaced or removed version still had connections when its drain
    /// deadline passed; they were closed.
    DrainDeadline {
        /// How many.
        closed: usize,
    },
    /// The app was removed; its connections drain.
    Removed,
    /// A persisted app could not be started (at the gateway's start, or on
    /// a rollback); the other apps serve.
    NotStarted {
        /// Why.
        reason: String,
    },
    /// A dormant app (lazy start: registered at a restart, not loaded)
    /// was loaded by its first connection and now serves.
    Loaded {
        /// From the first connection's arrival to the app serving, in ms.
        wait_ms: u64,
        /// Of that, the compile or compile-cache load, in ms.
        load_ms: u64,
        /// Whether the compiled component came from the compile cache.
        cache_hit: bool,
    },
    /// A new version of the app now takes new connections.
    Deployed {
        /// The version's number and component digest.
        version: String,
    },
    /// A reload of the configuration file added or changed this app: the
    /// version from the file now takes new connections.
    Reconfigured {
        /// `added` or `changed`.
        change: &'static str,
        /// The component's digest, short.
        component: String,
    },
    /// The gateway re-read its configuration file and applied it (a
    /// gateway event, see `Gateway::events`).
    Reloaded {
        /// What changed, and what needs a restart.
        summary: String,
    },
    /// The gateway refused to reload its configuration file, or stopped
    /// part-way; what it did not apply keeps serving as before.
    ReloadRefused {
        /// Why, with the file and line.
        reason: String,
    },
    /// A memory growth was refused at the app's limit.
    MemoryRefused {
        /// The size the guest asked for, in bytes.
        requested: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The guest tried to reach a destination its policy does not allow.
    OutboundDenied {
        /// What it tried (`TcpConnect 10.0.0.1:5432`, or a name lookup).
        target: String,
    },
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventKind::InstanceStarted => write!(f, "instance started"),
            EventKind::Hibernated { idle_secs } => write!(
                f,
                "hibernated after {idle_secs} s idle: instance dropped until the next connection"
            ),
            EventKind::Woke { wake_us } => {
                write!(f, "woke ({:.2} ms)", *wake_us as f64 / 1000.0)
            }
            EventKind::InstanceTrapped {
                cause,
                reason,
                connections,
            } => write!(
                f,
                "instance trapped ({cause}), closing {connections} connection(s): {reason}"
            ),
            EventKind::ConnectionTrapped {
                cause,
                reason,
                connection,
            } => write!(
                f,
                "connection {connection} trapped its instance ({cause}), closing that \
                 connection only: {reason}"
            ),
            EventKind::RequestTrapped {
                cause,
                reason,
                request,
            } => write!(
                f,
                "request {request} trapped its instance ({cause}), answered 500, no other \
                 request affected: {reason}"
            ),
            EventKind::InstanceFailed { reason } => write!(f, "instantiation failed: {reason}"),
            EventKind::Backoff { delay_ms } => {
                write!(f, "crash loop: restarting instance in {delay_ms} ms")
            }
            EventKind::LimitHit { limit, detail } => {
                write!(f, "limit {limit} hit: {detail}")
            }
            EventKind::DrainDeadline { closed } => write!(
                f,
                "drain deadline passed: closed {closed} connection(s) of a replaced version"
            ),
            EventKind::Loaded {
                wait_ms,
                load_ms,
                cache_hit,
            } => write!(
                f,
                "loaded on first use ({wait_ms} ms; component {} in {load_ms} ms)",
                match cache_hit {
                    true => "from the compile cache",
                    false => "compiled",
                }
            ),
            EventKind::Deployed { version } => write!(f, "deployed {version}"),
            EventKind::Reconfigured { change, component } => write!(
                f,
                "{change} by a reload of the configuration file (component {component})"
            ),
            EventKind::Reloaded { summary } => write!(f, "configuration reloaded: {summary}"),
            EventKind::ReloadRefused { reason } => write!(
                f,
                "configuration reload refused; what was not applied serves as before: {reason}"
            ),
            EventKind::Removed => write!(f, "removed; open connections drain"),
            EventKind::NotStarted { reason } => write!(f, "not started: {reason}"),
            EventKind::MemoryRefused { requested, limit } => write!(
                f,
                "limit memory_limit_mb hit: memory growth to {} MiB refused (limit {} MiB)",
                requested >> 20,
                limit >> 20
            ),
            EventKind::OutboundDenied { target } => write!(
                f,
                "outbound access denied: {target} (not in the app's `outbound` list)"
            ),
        }
    }
}

/// Events forwarded to `tracing` per second and app, so that a flood
/// (connections refused by the thousand, a guest hammering a denied
/// address) cannot flood the gateway's own log; the ring still keeps the
/// latest events and counts every one.
const TRACED_EVENTS_PER_SECOND: u32 = 20;

/// The log and events of one app.
pub struct AppLog {
    app: String,
    lines: Mutex<VecDeque<LogLine>>,
    events: Mutex<VecDeque<Event>>,
    /// (second, events traced in it, events suppressed in it).
    trace_budget: Mutex<(u64, u32, u64)>,
    events_total: std::sync::atomic::AtomicU64,
    /// Guest lines traced per second (`limits.log_lines_per_second`).
    line_rate: AtomicU32,
    /// The token bucket of traced guest lines (shared with the task that
    /// reports held-back lines once the guest goes quiet).
    line_budget: std::sync::Arc<Mutex<LineBudget>>,
    /// Guest lines not traced since the app started.
    lines_not_traced: AtomicU64,
    /// New lines, for followers (`sockgate logs -f`); a follower that
    /// falls behind by more than the channel holds skips lines.
    live: tokio::sync::broadcast::Sender<LogLine>,
}

impl AppLog {
    /// An empty log for the app `app`.
    pub fn new(app: &str) -> Self {
        Self {
            app: app.to_owned(),
            lines: Mutex::new(VecDeque::new()),
            events: Mutex::new(VecDeque::new()),
            trace_budget: Mutex::new((0, 0, 0)),
            events_total: std::sync::atomic::AtomicU64::new(0),
            line_rate: AtomicU32::new(crate::limits::AppLimits::default().log_lines_per_second),
            line_budget: std::sync::Arc::new(Mutex::new(LineBudget::new())),
            lines_not_traced: AtomicU64::new(0),
            live: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Sets how many guest lines per second go to the gateway's log (the
    /// app's `limits.log_lines_per_second`; a new version may change it).
    pub fn set_line_rate(&self, per_second: u32) {
        self.line_rate.store(per_second.max(1), Ordering::Relaxed);
    }

    /// Guest lines held back from the gateway's log so far (they are in the
    /// app's log).
    pub fn lines_not_traced(&self) -> u64 {
        self.lines_not_traced.load(Ordering::Relaxed)
    }

    /// Records a line a guest printed: always in the app's log, and in the
    /// gateway's log while the app is within its line rate.
    pub fn line(&self, instance: u32, stream: Stream, text: String) {
        if self.may_trace_line() {
            match stream {
                Stream::Stdout => {
                    tracing::info!(target: "sockgate::guest", app = %self.app, instance, "{text}")
                }
                Stream::Stderr => {
                    tracing::warn!(target: "sockgate::guest", app = %self.app, instance, "{text}")
                }
                Stream::Access => {
                    tracing::info!(target: "sockgate::access", app = %self.app, "{text}")
                }
            }
        }
        let line = LogLine {
            at: SystemTime::now(),
            instance,
            stream,
            text,
        };
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(line.clone());
        }
        push_bounded(&self.lines, line, LOG_LINES_KEPT);
    }

    /// Records the access line of one HTTP request: kept and followed
    /// like a guest's line (stream `access`), but outside the guest's line
    /// budget, and traced only at debug level (target `sockgate::access`):
    /// at thousands of requests per second, the gateway's own log would
    /// drown, and the guest's output with it.
    pub fn access(&self, text: String) {
        tracing::debug!(target: "sockgate::access", app = %self.app, "{text}");
        let line = LogLine {
            at: SystemTime::now(),
            instance: 0,
            stream: Stream::Access,
            text,
        };
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(line.clone());
        }
        push_bounded(&self.lines, line, LOG_LINES_KEPT);
    }

    /// Lines printed from now on.
    pub fn follow(&self) -> tokio::sync::broadcast::Receiver<LogLine> {
        self.live.subscribe()
    }

    /// Records an event.
    pub fn event(&self, instance: Option<u32>, kind: EventKind) {
        self.events_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.may_trace() {
            match &kind {
                EventKind::InstanceStarted
                | EventKind::Hibernated { .. }
                | EventKind::Woke { .. }
                | EventKind::Loaded { .. }
                | EventKind::Reloaded { .. }
                | EventKind::Reconfigured { .. } => {
                    tracing::info!(app = %self.app, instance, "{kind}")
                }
                _ => tracing::warn!(app = %self.app, instance, "{kind}"),
            }
        }
        let event = Event {
            at: SystemTime::now(),
            instance,
            kind,
        };
        push_bounded(&self.events, event, EVENTS_KEPT);
    }

    /// Whether another event may go to `tracing` this second; reports how
    /// many were suppressed in the previous second.
    fn may_trace(&self) -> bool {
        let second = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut budget = lock(&self.trace_budget);
        if budget.0 != second {
            if budget.2 > 0 {
                tracing::warn!(app = %self.app, "{} more events not logged", budget.2);
            }
            *budget = (second, 0, 0);
        }
        if budget.1 < TRACED_EVENTS_PER_SECOND {
            budget.1 += 1;
            true
        } else {
            budget.2 += 1;
            false
        }
    }

    /// Whether another guest line may go to `tracing` now. Lines held back
    /// are reported by a timer a second after the first of them (so a guest
    /// that keeps flooding, or goes quiet, has them reported about once a
    /// second); outside a tokio runtime, with the next line let through.
    fn may_trace_line(&self) -> bool {
        let rate = self.line_rate.load(Ordering::Relaxed);
        let mut budget = lock(&self.line_budget);
        if budget.take(Instant::now(), rate) {
            // A pending timer reports them, at most once a second.
            if !budget.report_scheduled {
                budget.report(&self.app, rate);
            }
            return true;
        }
        budget.dropped += 1;
        self.lines_not_traced.fetch_add(1, Ordering::Relaxed);
        if !budget.report_scheduled
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            budget.report_scheduled = true;
            let shared = self.line_budget.clone();
            let app = self.app.clone();
            runtime.spawn(async move {
                tokio::time::sleep(LINES_DROPPED_EVERY).await;
                let mut budget = lock(&shared);
                budget.report_scheduled = false;
                budget.report(&app, rate);
            });
        }
        false
    }

    /// How many events were recorded in total (the ring keeps the latest).
    pub fn events_total(&self) -> u64 {
        self.events_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The lines kept so far, oldest first.
    pub fn lines(&self) -> Vec<LogLine> {
        lock(&self.lines).iter().cloned().collect()
    }

    /// The events kept so far, oldest first.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).iter().cloned().collect()
    }
}

/// How long after the first held-back guest line the held-back lines are
/// reported (unless a line let through reports them first).
const LINES_DROPPED_EVERY: Duration = Duration::from_secs(1);

/// A token bucket of guest lines for the gateway's log: `rate` lines a
/// second, bursts of up to one second's worth.
struct LineBudget {
    tokens: f64,
    refilled: Instant,
    /// Lines held back since the last report.
    dropped: u64,
    /// A timer will report the lines held back.
    report_scheduled: bool,
}

impl LineBudget {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            tokens: f64::from(crate::limits::AppLimits::default().log_lines_per_second),
            refilled: now,
            dropped: 0,
            report_scheduled: false,
        }
    }

    /// Traces how many lines were held back since the last report, if any.
    fn report(&mut self, app: &str, rate: u32) {
        if self.dropped == 0 {
            return;
        }
        tracing::warn!(
            app = %app,
            "{} log lines dropped from the gateway's log (over limits.log_lines_per_second = \
             {rate}); the app's log keeps them: sockgate logs {app}",
            self.dropped
        );
        self.dropped = 0;
    }

    /// Takes one token at `now` if there is one, refilling at `rate`/s.
    fn take(&mut self, now: Instant, rate: u32) -> bool {
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn push_bounded<T>(ring: &Mutex<VecDeque<T>>, item: T, cap: usize) {
    let mut ring = lock(ring);
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_budget_allows_a_seconds_burst_then_the_rate() {
        let mut budget = LineBudget::new();
        let start = budget.refilled;
        let rate = 100;
        budget.tokens = 100.0;
        let burst = (0..150).filter(|_| budget.take(start, rate)).count();
        assert_eq!(burst, 100);
        // A tenth of a second later, ten more.
        let later = start + Duration::from_millis(100);
        let more = (0..50).filter(|_| budget.take(later, rate)).count();
        assert_eq!(more, 10);
        // Never more than a second's worth saved up.
        let much_later = later + Duration::from_secs(60);
        let saved = (0..500).filter(|_| budget.take(much_later, rate)).count();
        assert_eq!(saved, 100);
    }

    #[test]
    fn lines_over_the_rate_stay_in_the_apps_log_and_are_counted() {
        let log = AppLog::new("chatty");
        log.set_line_rate(10);
        for n in 0..1000 {
            log.line(0, Stream::Stdout, format!("line {n}"));
        }
        assert!(log.lines_not_traced() >= 980, "{}", log.lines_not_traced());
        let kept = log.lines();
        assert_eq!(kept.len(), LOG_LINES_KEPT);
        assert_eq!(kept.last().map(|l| l.text.as_str()), Some("line 999"));
    }
}
