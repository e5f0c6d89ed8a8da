//! The guest's timers (`action.set-timer`): one sleep for the instance,
//! set to the earliest deadline, however many timers are pending.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use tokio::time::{Duration, Instant, Sleep};

/// Most timers one instance may have pending. Threat: a guest setting
/// timers in a loop to grow the gateway's memory. Built for the fuzz
/// targets (feature `fuzzing`, never in the gateway) it is 1 024, so the
/// `event_actions` target reaches the limit with inputs that stay fast
/// (65 537 timers take about 50 ms under the fuzzer's instrumentation,
/// and inputs that reach the limit would fill its corpus); the code path
/// is the same.
pub(crate) const MAX_TIMERS: usize = if cfg!(feature = "fuzzing") {
    1_024
} else {
    65_536
};

/// Pending timers by deadline, and the one sleep that waits for the first.
pub(crate) struct Timers {
    by_token: HashMap<u64, Instant>,
    by_deadline: BTreeSet<(Instant, u64)>,
    sleep: Pin<Box<Sleep>>,
    /// The deadline `sleep` is set to, if any.
    armed: Option<Instant>,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            by_token: HashMap::new(),
            by_deadline: BTreeSet::new(),
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }
}

impl Timers {
    /// Sets (or moves) timer `token` to fire `after_ms` from now. Returns
    /// `false` when the instance has [`MAX_TIMERS`] pending already.
    pub(crate) fn set(&mut self, token: u64, after_ms: u32) -> bool {
        let deadline = Instant::now() + Duration::from_millis(u64::from(after_ms));
        match self.by_token.insert(token, deadline) {
            Some(old) => {
                self.by_deadline.remove(&(old, token));
            }
            None if self.by_token.len() > MAX_TIMERS => {
                self.by_token.remove(&token);
                return false;
            }
            None => {}
        }
        self.by_deadline.insert((deadline, token));
        true
    }

    /// Cancels timer `token`, if it is pending.
    pub(crate) fn cancel(&mut self, token: u64) {
        if let Some(deadline) = self.by_token.remove(&token) {
            self.by_deadline.remove(&(deadline, token));
        }
    }

    /// Pending timers.
    pub(crate) fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Moves the tokens of the timers that are due into `fired` (at most
    /// `max`), registering `cx` to be woken for the next one.
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>, fired: &mut Vec<u64>, max: usize) {
        loop {
            let Some(&(deadline, token)) = self.by_deadline.first() else {
                self.armed = None;
                return;
            };
            if deadline <= Instant::now() {
                if fired.len() >= max {
                    return;
                }
                self.by_deadline.pop_first();
                self.by_token.remove(&token);
                fired.push(token);
                continue;
            }
            if self.armed != Some(deadline) {
                self.sleep.as_mut().reset(deadline);
                self.armed = Some(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return;
            }
        }
    }
}
