//! Per-app log and event records: what the app's guests printed, and what
//! happened to the app (instances started, trapped, replaced).
//!
//! Both are bounded rings, so a chatty or crash-looping guest costs a fixed
//! amount of host memory; everything is also forwarded to `tracing`.

use crate::locks::lock;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

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
    /// A new version of the app now takes new connections.
    Deployed {
        /// The version's number and component digest.
        version: String,
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
            EventKind::Deployed { version } => write!(f, "deployed {version}"),
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
            live: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Records a line a guest printed.
    pub fn line(&self, instance: u32, stream: Stream, text: String) {
        match stream {
            Stream::Stdout => {
                tracing::info!(target: "sockgate::guest", app = %self.app, instance, "{text}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "sockgate::guest", app = %self.app, instance, "{text}")
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
                EventKind::InstanceStarted => {
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

fn push_bounded<T>(ring: &Mutex<VecDeque<T>>, item: T, cap: usize) {
    let mut ring = lock(ring);
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(item);
}
