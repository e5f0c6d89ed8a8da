//! Admission: whether a new connection may have a place in the counts,
//! and the record of the places it took until it is live.
//!
//! # Lifecycle of a connection's places
//!
//! A connection holds up to four places: a gateway-wide slot
//! ([`ConnTracker`]'s count), an app slot ([`AppAccount`]'s count, and with
//! its first connection one of the tracker's "apps holding" count), a
//! client slot (the app's count for the connection's [`client_key`]), and
//! an instance slot (the chosen instance's [`ShardLoad`]). It goes through
//! these states:
//!
//! - **Admitting** ([`admit`]): takes the gateway slot, checks the app's
//!   share of the gateway ([`Refused::GatewayShare`]), then takes the app
//!   slot and the client slot, in that order. A refusal at any step is
//!   counted and logged ([`AppAccount::refuse`]) and returns the
//!   [`Refused`] limit; the places taken so far are given back as the
//!   partial [`Admission`] drops (its `took_*` flags say which). Next:
//!   *admitted*, or nothing.
//! - **Admitted** ([`Admission`]): holds the gateway, app and client
//!   slots, but no instance yet. The caller (`apps::app::App::dispatch`)
//!   picks an instance: if none has room it drops the admission (every
//!   place is given back) and refuses the connection; otherwise it counts
//!   the connection on the instance ([`ShardLoad::acquire`]) and calls
//!   [`Admission::finish`]. Next: *live*, or nothing.
//! - **Live** ([`ActiveConn`], in an `Arc`): `finish` moves the three
//!   places into it (the admission's flags are cleared, so its drop gives
//!   back nothing), counts the connection as accepted, and registers it
//!   (weakly) in the tracker's table of live connections. Its holders are
//!   whatever keeps the connection alive: the reader and writer pumps, the
//!   guest's pending `handle` call, an HTTP connection's task. While live,
//!   the sweeper ([`ConnTracker::sweep`]) may close its transport at the
//!   idle timeout or the maximum lifetime, and a drain may close it
//!   ([`ActiveConn::close`]); closing happens once (the `closed` flag) and
//!   gives back nothing. Next: *released*.
//! - **Released**: when the last holder drops the `Arc`, [`ActiveConn`]'s
//!   `Drop` gives back every place at once: the instance slot (waking a
//!   draining instance when it was the last), the live-table entry, the
//!   gateway slot, the app slot (and the app's "holding" count with its
//!   last connection) and the client slot.
//!
//! Nothing else gives a place back, so a count can neither leak (every
//! place taken is owned by exactly one value, whose drop returns it) nor
//! be returned twice.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ConnTracker;
use super::account::{AppAccount, Refused};
use super::active::{ActiveConn, ShardLoad, release};
use super::client::client_key;
use crate::base::clock::coarse_now_ms;
use crate::base::conn::{Closer, ConnInfo};
use crate::base::locks::lock;

/// Admits a connection from `peer` against the gateway's and the app's
/// caps; the instance cap is checked by the caller, which then calls
/// [`Admission::finish`]. Dropping an unfinished admission gives back
/// what it took.
pub fn admit(
    tracker: &Arc<ConnTracker>,
    app: &Arc<AppAccount>,
    peer: IpAddr,
) -> Result<Admission, Refused> {
    let client = client_key(peer);
    let mut admission = Admission {
        tracker: tracker.clone(),
        app: app.clone(),
        client,
        took_global: false,
        took_app: false,
        took_ip: false,
    };
    let total = tracker.active.fetch_add(1, Ordering::Relaxed);
    admission.took_global = true;
    if total >= tracker.max_connections {
        return Err(app.refuse(Refused::GatewayFull, peer));
    }
    if !tracker.within_share(total, app.active()) {
        return Err(app.refuse(Refused::GatewayShare, peer));
    }
    let app_before = app.active.fetch_add(1, Ordering::Relaxed);
    if app_before >= app.max_connections {
        app.active.fetch_sub(1, Ordering::Relaxed);
        return Err(app.refuse(Refused::AppFull, peer));
    }
    admission.took_app = true;
    if app_before == 0 {
        tracker.apps_holding.fetch_add(1, Ordering::Relaxed);
    }
    {
        let mut per_ip = lock(&app.per_ip);
        let count = per_ip.entry(client).or_insert(0);
        if *count >= app.max_per_ip {
            drop(per_ip);
            return Err(app.refuse(Refused::PerIp, peer));
        }
        *count += 1;
    }
    admission.took_ip = true;
    Ok(admission)
}

impl ConnTracker {
    /// Whether an app holding `app_active` connections may take one more
    /// while `total` are taken gateway-wide: never beyond the cap minus the
    /// reserve, and into the reserve only below an equal share.
    fn within_share(&self, total: usize, app_active: usize) -> bool {
        if self.reserved == 0 {
            return true;
        }
        let unreserved = self.max_connections - self.reserved;
        if app_active >= unreserved {
            return false;
        }
        if total < unreserved {
            return true;
        }
        // Apps with connections, counting this one if it holds none yet.
        let holding = self.apps_holding.load(Ordering::Relaxed) + usize::from(app_active == 0);
        app_active < self.max_connections / holding.max(1)
    }
}

/// A connection admitted by the gateway and the app, not yet assigned to
/// an instance (the *admitted* state of the module's lifecycle).
pub struct Admission {
    tracker: Arc<ConnTracker>,
    app: Arc<AppAccount>,
    /// The client's key ([`client_key`]).
    client: IpAddr,
    took_global: bool,
    took_app: bool,
    took_ip: bool,
}

impl Admission {
    /// The app's accounting.
    pub fn app(&self) -> &Arc<AppAccount> {
        &self.app
    }

    /// Completes the admission on an instance whose active count is
    /// `instance_active` (already incremented by the caller); the returned
    /// connection record releases everything when dropped.
    pub fn finish(
        mut self,
        info: ConnInfo,
        instance_active: Arc<ShardLoad>,
        closer: Closer,
    ) -> Arc<ActiveConn> {
        let now = coarse_now_ms();
        self.took_global = false;
        self.took_app = false;
        self.took_ip = false;
        self.app.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ActiveConn {
            tracker: self.tracker.clone(),
            app: self.app.clone(),
            client: self.client,
            instance_active,
            accepted_ms: now,
            last_activity_ms: AtomicU64::new(now),
            info,
            closer,
            closed: std::sync::atomic::AtomicBool::new(false),
            receive_error: std::sync::OnceLock::new(),
        });
        self.tracker.register(&conn);
        conn
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        release(
            &self.tracker,
            &self.app,
            self.client,
            self.took_global,
            self.took_app,
            self.took_ip,
        );
    }
}
