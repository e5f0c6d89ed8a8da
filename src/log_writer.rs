//! The gateway's own log, written to stderr by a dedicated thread from a
//! bounded queue, so a slow log sink (a full pipe, a terminal scrolled
//! back, Docker's blocking log driver, a full disk) never blocks a runtime
//! worker: formatting an event only appends it to the queue. When the queue
//! is full the event is dropped and counted, and the writer reports how
//! many were lost once it catches up.
//!
//! Threat: guests and clients can make the gateway log (guest lines,
//! refusals); a synchronous write to a sink that stopped reading stalled
//! both runtime threads, so every app stopped answering.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of formatted events the queue holds at most (a few seconds of a
/// busy gateway's log); past it, new events are dropped.
const QUEUE_BYTES: usize = 4 << 20;
/// How long the process waits at exit for the queue to reach stderr.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(1);

/// A [`MakeWriter`] for `tracing_subscriber` that queues each formatted
/// event for the writer thread.
#[derive(Clone)]
pub struct LossyStderr {
    shared: Arc<Shared>,
}

/// Flushes what is queued (for at most [`FLUSH_AT_EXIT`]) when dropped.
pub struct FlushOnExit {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when an event is queued, and when the queue is empty.
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Events dropped since the writer last reported.
    dropped: u64,
    /// The writer thread is writing a batch it took.
    writing: bool,
}

impl LossyStderr {
    /// Starts the writer thread; keep the returned guard until exit.
    pub fn start() -> std::io::Result<(Self, FlushOnExit)> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("sockgate-log".to_owned())
            .spawn(move || writer.run(&mut std::io::stderr()))?;
        Ok((
            Self {
                shared: shared.clone(),
            },
            FlushOnExit { shared },
        ))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one formatted event, or counts it as dropped.
    fn push(&self, event: Vec<u8>) {
        let mut queue = self.lock();
        if queue.bytes + event.len() > QUEUE_BYTES {
            queue.dropped += 1;
            return;
        }
        queue.bytes += event.len();
        queue.events.push_back(event);
        drop(queue);
        self.changed.notify_all();
    }

    /// The writer thread: takes everything queued, writes it, forever.
    fn run(&self, out: &mut impl Write) {
        loop {
            let (events, dropped) = {
                let mut queue = self.lock();
                queue.writing = false;
                self.changed.notify_all();
                while queue.events.is_empty() && queue.dropped == 0 {
                    queue = self.changed.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                queue.writing = true;
                queue.bytes = 0;
                (
                    std::mem::take(&mut queue.events),
                    std::mem::take(&mut queue.dropped),
                )
            };
            // A failed write (stderr closed) loses the batch, like a full
            // queue would; the gateway goes on.
            for event in events {
                let _ = out.write_all(&event);
            }
            if dropped > 0 {
                let _ = writeln!(
                    out,
                    "sockgate: {dropped} log event(s) dropped: stderr is not keeping up"
                );
            }
            let _ = out.flush();
        }
    }

    /// Waits until everything queued was written, for at most `wait`.
    fn flush(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let mut queue = self.lock();
        while !queue.events.is_empty() || queue.writing {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            queue = self
                .changed
                .wait_timeout(queue, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl Drop for FlushOnExit {
    fn drop(&mut self) {
        self.shared.flush(FLUSH_AT_EXIT);
    }
}

/// One event being formatted; queued whole when dropped.
pub struct EventWriter {
    shared: Arc<Shared>,
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.shared.push(std::mem::take(&mut self.buf));
        }
    }
}

impl<'a> MakeWriter<'a> for LossyStderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            shared: self.shared.clone(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that accepts nothing until released: a pipe nobody reads.
    struct Stuck {
        release: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let (lock, cvar) = &*self.release;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cvar.wait(open).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_never_blocks_the_logger_and_losses_are_reported() {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut sink = Stuck {
            release: release.clone(),
            written: written.clone(),
        };
        let writer = shared.clone();
        std::thread::spawn(move || writer.run(&mut sink));
        let logger = LossyStderr {
            shared: shared.clone(),
        };
        let line = vec![b'x'; 1024];
        let started = Instant::now();
        // Far more than the queue holds, into a sink that takes nothing.
        for _ in 0..(QUEUE_BYTES / 1024) * 3 {
            let mut event = logger.make_writer();
            event.write_all(&line).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "logging blocked on a stuck sink"
        );
        assert!(shared.lock().dropped > 0, "nothing was dropped");
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        shared.flush(Duration::from_secs(10));
        let mut event = logger.make_writer();
        event.write_all(b"after\n").unwrap();
        drop(event);
        shared.flush(Duration::from_secs(10));
        let text = String::from_utf8_lossy(&written.lock().unwrap()).into_owned();
        assert!(text.contains("log event(s) dropped"), "no loss report");
        assert!(text.ends_with("after\n"), "the last event was not written");
    }
}
