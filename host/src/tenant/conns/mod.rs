//! Connection accounting and the one sweeper that enforces time limits.
//!
//! Every connection handed to an app is admitted against the gateway-wide
//! cap (with the app's share of it), the app's cap, the app's per-client
//! cap and an instance's cap, in that order; [`ActiveConn`] holds what it
//! took and gives it back when the connection is done.
//!
//! A "client" is an IPv4 address or an IPv6 prefix (a /64 by default,
//! [`client_key`]): one host usually owns a whole IPv6 /64, so counting
//! exact IPv6 addresses would give it 2^64 "clients".
//!
//! The gateway-wide cap is shared ([`ConnTracker::with_reserve`]): no app
//! may hold more than `100 - reserved_connections_percent` percent of it,
//! and the last `reserved_connections_percent` percent go only to apps
//! holding less than an equal share (the cap divided by the apps that hold
//! connections). Threat: one app (a flood aimed at it, or its own high
//! `max_connections` with no idle timeout) taking every gateway slot, so
//! that every other app is refused. A single task ([`ConnTracker::run_sweeper`]) walks
//! all live connections a few times a second and closes those past their
//! idle timeout or maximum lifetime — no timer per connection.
//!
//! The files follow a connection's place in the counts:
//!
//! - [`admission`]: [`admit`] takes the gateway's, the app's and the
//!   client's slots, or says which limit refused ([`Refused`]); the
//!   lifecycle of an [`Admission`] into an [`ActiveConn`] is documented
//!   there.
//! - [`active`]: [`ActiveConn`], the live connection's record that gives
//!   every count back when its last holder drops it, and [`ShardLoad`],
//!   an instance's count.
//! - [`account`]: [`AppAccount`], one app's limits, counts and counters.
//! - [`client`]: [`client_key`], what one client is (an IPv4 address, an
//!   IPv6 prefix).
//! - this file: [`ConnTracker`], the gateway-wide count, the table of live
//!   connections and the sweeper.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::base::clock::coarse_now_ms;
use crate::base::conn::{ConnInfo, ReceiveError};
use crate::base::locks::lock;
use crate::tenant::memory::GuestMemory;

pub mod account;
pub mod active;
pub mod admission;
pub mod client;
#[cfg(test)]
mod tests;

pub use account::{AppAccount, AppCounters, Refused};
pub use active::{ActiveConn, ShardLoad};
pub use admission::{Admission, admit};
pub use client::{DEFAULT_IPV6_PREFIX, client_key, set_client_ipv6_prefix};

/// How often the sweeper looks at every connection: the precision of
/// idle timeouts and lifetimes.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// The default share of the gateway-wide cap kept for apps below an equal
/// share, in percent (`gateway.reserved_connections_percent`).
pub const DEFAULT_RESERVED_PERCENT: u8 = 20;

/// Gateway-wide accounting.
pub struct ConnTracker {
    max_connections: usize,
    /// Slots at the top of the cap kept for apps below an equal share.
    reserved: usize,
    /// Apps (versions) holding at least one connection now.
    apps_holding: AtomicUsize,
    active: AtomicUsize,
    /// Live connections by id, for the sweeper and `connection.info`.
    live: Mutex<HashMap<u64, Weak<ActiveConn>>>,
    /// The guest memory of every instance, against the gateway's ceiling
    /// (handed to the runtime with the connections' account, as the other
    /// gateway-wide share every app draws on).
    memory: Arc<GuestMemory>,
}

impl ConnTracker {
    /// A tracker allowing `max_connections` at once over all apps, with the
    /// default reserve.
    pub fn new(max_connections: usize) -> Arc<Self> {
        Self::with_reserve(max_connections, DEFAULT_RESERVED_PERCENT)
    }

    /// A tracker allowing `max_connections` at once over all apps, keeping
    /// the top `reserved_percent` percent for apps below an equal share
    /// (see the module documentation).
    pub fn with_reserve(max_connections: usize, reserved_percent: u8) -> Arc<Self> {
        Self::with_memory(max_connections, reserved_percent, GuestMemory::new(None))
    }

    /// Like [`ConnTracker::with_reserve`], with the account of guest memory
    /// (and its ceiling) every instance draws on.
    pub fn with_memory(
        max_connections: usize,
        reserved_percent: u8,
        memory: Arc<GuestMemory>,
    ) -> Arc<Self> {
        let reserved = max_connections.saturating_mul(usize::from(reserved_percent.min(100))) / 100;
        Arc::new(Self {
            max_connections,
            reserved,
            apps_holding: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
            memory,
        })
    }

    /// The guest memory of every instance, against the gateway's ceiling.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// Connections active over all apps.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Closes connections past their limits, forever; spawn it once.
    pub async fn run_sweeper(self: Arc<Self>) {
        let mut interval = tokio::time::interval(SWEEP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            self.sweep(coarse_now_ms());
        }
    }

    /// One pass: closes every connection over its idle timeout or lifetime
    /// at time `now_ms` (on the coarse clock).
    pub fn sweep(&self, now_ms: u64) {
        let expired: Vec<Arc<ActiveConn>> = {
            let live = lock(&self.live);
            live.values()
                .filter_map(Weak::upgrade)
                .filter(|conn| conn.expired(now_ms).is_some())
                .collect()
        };
        for conn in expired {
            conn.close_expired(now_ms);
        }
    }

    /// The info of live connection `id`, if it belongs to `app`.
    pub fn info(&self, id: u64, app: &Arc<AppAccount>) -> Option<ConnInfo> {
        let conn = lock(&self.live).get(&id).and_then(Weak::upgrade)?;
        Arc::ptr_eq(&conn.app, app).then(|| conn.info.clone())
    }

    /// Why live connection `id` of `app` stopped receiving early, if it did.
    pub fn receive_error(&self, id: u64, app: &Arc<AppAccount>) -> Option<ReceiveError> {
        let conn = lock(&self.live).get(&id).and_then(Weak::upgrade)?;
        if !Arc::ptr_eq(&conn.app, app) {
            return None;
        }
        conn.receive_error().cloned()
    }

    fn register(&self, conn: &Arc<ActiveConn>) {
        lock(&self.live).insert(conn.info.id, Arc::downgrade(conn));
    }

    fn unregister(&self, id: u64) {
        lock(&self.live).remove(&id);
    }
}
