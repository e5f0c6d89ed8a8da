//! Per-app log and event records: what the app's guests printed, and what
//! happened to the app (instances started, trapped, replaced).
//!
//! Both are bounded rings, so a chatty or crash-looping guest costs a fixed
//! amount of host memory; everything is also forwarded to `tracing`.

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
        /// The trap, as wasmtime describes it (with the guest backtrace).
        reason: String,
        /// How many connections it was serving.
        connections: usize,
    },
    /// Instantiation failed (the instance will be retried).
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
    /// A connection was refused because every instance was at its cap.
    ConnectionRefused {
        /// The limit that was hit.
        limit: &'static str,
    },
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventKind::InstanceStarted => write!(f, "instance started"),
            EventKind::InstanceTrapped {
                reason,
                connections,
            } => write!(
                f,
                "instance trapped, closing {connections} connection(s): {reason}"
            ),
            EventKind::InstanceFailed { reason } => write!(f, "instantiation failed: {reason}"),
            EventKind::Backoff { delay_ms } => {
                write!(f, "crash loop: restarting instance in {delay_ms} ms")
            }
            EventKind::ConnectionRefused { limit } => {
                write!(f, "connection refused: {limit} reached")
            }
        }
    }
}

/// The log and events of one app.
pub struct AppLog {
    app: String,
    lines: Mutex<VecDeque<LogLine>>,
    events: Mutex<VecDeque<Event>>,
}

impl AppLog {
    /// An empty log for the app `app`.
    pub fn new(app: &str) -> Self {
        Self {
            app: app.to_owned(),
            lines: Mutex::new(VecDeque::new()),
            events: Mutex::new(VecDeque::new()),
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
        push_bounded(&self.lines, line, LOG_LINES_KEPT);
    }

    /// Records an event.
    pub fn event(&self, instance: Option<u32>, kind: EventKind) {
        match &kind {
            EventKind::InstanceStarted => {
                tracing::info!(app = %self.app, instance, "{kind}")
            }
            _ => tracing::warn!(app = %self.app, instance, "{kind}"),
        }
        let event = Event {
            at: SystemTime::now(),
            instance,
            kind,
        };
        push_bounded(&self.events, event, EVENTS_KEPT);
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a ring inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn push_bounded<T>(ring: &Mutex<VecDeque<T>>, item: T, cap: usize) {
    let mut ring = lock(ring);
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(item);
}
