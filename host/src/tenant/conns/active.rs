//! A live connection's record ([`ActiveConn`]): the places it holds in
//! every count (see the lifecycle in [`super::admission`]), its traffic
//! and activity time for the sweeper, and how to close it. And
//! [`ShardLoad`], the count of connections (or requests) one instance
//! serves, which a draining instance waits on.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::ConnTracker;
use super::account::AppAccount;
use crate::base::clock::coarse_now_ms;
use crate::base::conn::{Closer, ConnInfo, ReceiveError};
use crate::base::locks::lock;
use crate::tenant::logs::EventKind;
use crate::tenant::memory::{Hibernatable, IdleView};

/// The connections assigned to one shard (instance) and not yet finished,
/// including those still queued for it; a draining instance waits on it.
#[derive(Default)]
pub struct ShardLoad {
    active: AtomicUsize,
    idle: tokio::sync::Notify,
    /// When the count last fell to 0 (coarse clock, ms): how long the
    /// instance has been without a connection, for hibernation.
    quiet_since_ms: AtomicU64,
    /// Bytes of linear memory the shard's current instance holds (0 while
    /// it hibernates), for the gateway's memory ceiling.
    memory: AtomicUsize,
    /// What its last instance held when it was dropped: what a wake is
    /// assumed to need.
    last_memory: AtomicUsize,
    /// Asks the instance to hibernate now if it is quiet (the gateway's
    /// memory ceiling needs room: [`crate::tenant::memory`]).
    hibernate_now: tokio::sync::Notify,
}

impl ShardLoad {
    /// Connections currently assigned.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts one more connection.
    pub fn acquire(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one connection less, waking drainers when none is left.
    pub fn release(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.quiet_since_ms
                .store(coarse_now_ms(), Ordering::Relaxed);
            self.idle.notify_waiters();
        }
    }

    /// How long no connection has been assigned, at `now_ms` (coarse
    /// clock): `None` while one is. A shard that never had one counts from
    /// the clock's start; its instance's first check comes a whole
    /// `hibernate_after_secs` after it started anyway.
    pub fn quiet_for(&self, now_ms: u64) -> Option<std::time::Duration> {
        if self.active() > 0 {
            return None;
        }
        let since = self.quiet_since_ms.load(Ordering::Relaxed);
        Some(std::time::Duration::from_millis(
            now_ms.saturating_sub(since),
        ))
    }

    /// Counts `bytes` more held by the shard's instance.
    pub fn held(&self, bytes: usize) {
        self.memory.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The shard's instance gave back the `bytes` it held (its store was
    /// dropped); it would have needed `needed` (more, when a growth was
    /// refused at the gateway's ceiling): what its next start needs.
    pub fn held_no_more(&self, bytes: usize, needed: usize) {
        let before = self.memory.fetch_sub(bytes, Ordering::Relaxed);
        if before == bytes {
            self.last_memory.store(needed, Ordering::Relaxed);
        }
    }

    /// Bytes the shard's instance holds now.
    pub fn memory(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }

    /// Bytes the shard's last instance held when it was dropped (0 if none
    /// was): what starting the next one is assumed to need.
    pub fn last_memory(&self) -> usize {
        self.last_memory.load(Ordering::Relaxed)
    }

    /// Waits until [`Hibernatable::hibernate_now`] asks (once per ask).
    pub async fn hibernation_requested(&self) {
        self.hibernate_now.notified().await;
    }

    /// Waits until no connection is assigned.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The gateway's memory ceiling weighs instances by their shard's load.
impl Hibernatable for ShardLoad {
    fn idle_view(&self) -> IdleView {
        IdleView {
            idle: self.active() == 0,
            memory: self.memory(),
            quiet_since_ms: self.quiet_since_ms.load(Ordering::Relaxed),
        }
    }

    fn hibernate_now(&self) {
        self.hibernate_now.notify_one();
    }
}

/// A live connection: held by everything that keeps it alive (its reader,
/// its writer, the pending `handle` call), it releases its place in every
/// count when the last holder is gone (the *live* state of the lifecycle
/// in [`super::admission`]).
pub struct ActiveConn {
    pub(super) tracker: Arc<ConnTracker>,
    pub(super) app: Arc<AppAccount>,
    /// The client's key ([`client_key`]).
    pub(super) client: IpAddr,
    pub(super) instance_active: Arc<ShardLoad>,
    pub(super) accepted_ms: u64,
    pub(super) last_activity_ms: AtomicU64,
    pub(super) info: ConnInfo,
    pub(super) closer: Closer,
    pub(super) closed: std::sync::atomic::AtomicBool,
    /// Why the client's bytes stopped early, once they did.
    pub(super) receive_error: std::sync::OnceLock<ReceiveError>,
}

impl ActiveConn {
    /// Records `n` bytes received from the client.
    pub fn received(&self, n: usize) {
        self.touch();
        self.app
            .counters
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records `n` bytes sent to the client.
    pub fn sent(&self, n: usize) {
        self.touch();
        self.app
            .counters
            .bytes_out
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records why the client's bytes stopped before a clean end of
    /// stream; the first reason sticks.
    pub fn set_receive_error(&self, error: ReceiveError) {
        let _ = self.receive_error.set(error);
    }

    /// Why the client's bytes stopped early, if they did.
    pub fn receive_error(&self) -> Option<&ReceiveError> {
        self.receive_error.get()
    }

    /// Aborts the connection's transport in both directions, now (a
    /// replaced version's drain deadline passed).
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::Relaxed) {
            self.set_receive_error(ReceiveError::Aborted(
                "closed by the gateway: the drain after a redeploy ended".to_owned(),
            ));
            (self.closer)();
        }
    }

    /// Whether the gateway closed the connection itself (a limit, the end
    /// of a drain), so that a guest can be told why it ended.
    pub fn closed_by_gateway(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Aborts the transport in both directions because the guest asked
    /// to (the event world's `close`): no limit is recorded.
    pub fn abort(&self) {
        (self.closer)();
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(coarse_now_ms(), Ordering::Relaxed);
    }

    /// Which time limit the connection is past at `now_ms`, if any.
    pub(super) fn expired(&self, now_ms: u64) -> Option<&'static str> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        let lifetime = self.app.max_lifetime_ms;
        if lifetime > 0 && now_ms.saturating_sub(self.accepted_ms) >= lifetime {
            return Some("max_connection_secs");
        }
        let idle = self.app.idle_timeout_ms;
        let last = self.last_activity_ms.load(Ordering::Relaxed);
        if idle > 0 && now_ms.saturating_sub(last) >= idle {
            return Some("idle_timeout_secs");
        }
        None
    }

    pub(super) fn close_expired(&self, now_ms: u64) {
        let Some(limit) = self.expired(now_ms) else {
            return;
        };
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        let counter = if limit == "idle_timeout_secs" {
            &self.app.counters.closed_idle
        } else {
            &self.app.counters.closed_lifetime
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let age_s = now_ms.saturating_sub(self.accepted_ms) as f64 / 1000.0;
        self.app.log.event(
            None,
            EventKind::LimitHit {
                limit,
                detail: format!(
                    "closed the connection from {} after {age_s:.1} s",
                    self.info.peer.ip()
                ),
            },
        );
        self.set_receive_error(ReceiveError::Aborted(format!(
            "closed by the gateway: {limit} reached"
        )));
        (self.closer)();
    }
}

impl Drop for ActiveConn {
    fn drop(&mut self) {
        self.instance_active.release();
        self.tracker.unregister(self.info.id);
        release(&self.tracker, &self.app, self.client, true, true, true);
    }
}

pub(super) fn release(
    tracker: &ConnTracker,
    app: &AppAccount,
    client: IpAddr,
    global: bool,
    app_slot: bool,
    ip: bool,
) {
    if global {
        tracker.active.fetch_sub(1, Ordering::Relaxed);
    }
    if app_slot && app.active.fetch_sub(1, Ordering::Relaxed) == 1 {
        tracker.apps_holding.fetch_sub(1, Ordering::Relaxed);
    }
    if ip {
        let mut per_ip = lock(&app.per_ip);
        if let Some(count) = per_ip.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&client);
            }
        }
    }
}
