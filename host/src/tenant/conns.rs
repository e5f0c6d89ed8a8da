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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::base::clock::coarse_now_ms;
use crate::base::conn::{Closer, ConnInfo, ReceiveError};
use crate::base::locks::lock;
use crate::tenant::logs::{AppLog, EventKind};

/// How often the sweeper looks at every connection: the precision of
/// idle timeouts and lifetimes.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// The default share of the gateway-wide cap kept for apps below an equal
/// share, in percent (`gateway.reserved_connections_percent`).
pub const DEFAULT_RESERVED_PERCENT: u8 = 20;
/// The default IPv6 prefix length that makes one client
/// (`gateway.client_ipv6_prefix`).
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The IPv6 prefix length per client for [`client_key`]; set once at start
/// from `gateway.client_ipv6_prefix` (a process serves one gateway).
static IPV6_PREFIX: AtomicU8 = AtomicU8::new(DEFAULT_IPV6_PREFIX);

/// Sets the IPv6 prefix length that makes one client, for every per-client
/// count of the process (connections, handshakes, QUIC). `len` is checked
/// by the configuration (32 to 128).
pub fn set_client_ipv6_prefix(len: u8) {
    IPV6_PREFIX.store(len.clamp(1, 128), Ordering::Relaxed);
}

/// The key per-client limits count under: an IPv4 address as it is (an
/// IPv4-mapped IPv6 address as its IPv4 address), an IPv6 address reduced
/// to its prefix (a /64 unless configured otherwise).
pub fn client_key(ip: IpAddr) -> IpAddr {
    client_key_with(ip, IPV6_PREFIX.load(Ordering::Relaxed))
}

fn client_key_with(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let mask = match prefix {
                    0 => 0,
                    p if p >= 128 => u128::MAX,
                    p => u128::MAX << (128 - u32::from(p)),
                };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        },
    }
}

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
}

/// One app's accounting.
pub struct AppAccount {
    log: Arc<AppLog>,
    max_connections: usize,
    max_per_ip: usize,
    idle_timeout_ms: u64,
    max_lifetime_ms: u64,
    /// Concurrent QUIC streams per QUIC connection, and the connection's
    /// receive window in KiB (applied once a QUIC connection is routed).
    quic_limits: (u32, u64),
    active: AtomicUsize,
    /// Connections by client ([`client_key`]).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Counters for operators and metrics.
    pub counters: AppCounters,
}

/// What happened to an app's connections so far.
#[derive(Default)]
pub struct AppCounters {
    /// Connections handed to an instance.
    pub accepted: AtomicU64,
    /// Refused: gateway-wide cap.
    pub refused_gateway_full: AtomicU64,
    /// Refused: the app holds its share of the gateway-wide cap.
    pub refused_gateway_share: AtomicU64,
    /// Refused: the app's cap.
    pub refused_app_full: AtomicU64,
    /// Refused: the per-IP cap.
    pub refused_per_ip: AtomicU64,
    /// Refused: every instance at its cap.
    pub refused_instances_full: AtomicU64,
    /// Closed by the idle timeout.
    pub closed_idle: AtomicU64,
    /// Closed at the maximum lifetime.
    pub closed_lifetime: AtomicU64,
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Instance traps, by cause: CPU budget, wall-clock budget, memory
    /// limit, anything else.
    pub traps: [AtomicU64; 4],
}

impl AppCounters {
    /// All refusals.
    pub fn refused(&self) -> u64 {
        [
            &self.refused_gateway_full,
            &self.refused_gateway_share,
            &self.refused_app_full,
            &self.refused_per_ip,
            &self.refused_instances_full,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Why a connection was refused, named as the limit is in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `gateway.max_connections`.
    #[error("gateway.max_connections")]
    GatewayFull,
    /// The app's share of `gateway.max_connections` (see
    /// `gateway.reserved_connections_percent`).
    #[error("gateway.reserved_connections_percent")]
    GatewayShare,
    /// The app's `limits.max_connections`.
    #[error("max_connections")]
    AppFull,
    /// The app's `limits.max_connections_per_ip`.
    #[error("max_connections_per_ip")]
    PerIp,
    /// Every instance at `limits.max_connections_per_instance`.
    #[error("max_connections_per_instance")]
    InstancesFull,
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
        let reserved = max_connections.saturating_mul(usize::from(reserved_percent.min(100))) / 100;
        Arc::new(Self {
            max_connections,
            reserved,
            apps_holding: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
        })
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

impl AppAccount {
    /// Accounting for one app with its limits.
    pub fn new(log: Arc<AppLog>, limits: &crate::limits::AppLimits) -> Arc<Self> {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
        Arc::new(Self {
            log,
            max_connections: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            idle_timeout_ms: ms(limits.idle_timeout()),
            max_lifetime_ms: ms(limits.max_connection_time()),
            quic_limits: (
                limits.quic_streams_per_connection,
                limits.quic_receive_window_kb,
            ),
            active: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            counters: AppCounters::default(),
        })
    }

    /// The app's QUIC limits: concurrent bidirectional streams per QUIC
    /// connection, and the connection's receive window in KiB.
    pub fn quic_limits(&self) -> (u32, u64) {
        self.quic_limits
    }

    /// Connections active in the app.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Records a refusal: counted, and an event naming the limit.
    pub fn refuse(&self, why: Refused, peer: IpAddr) -> Refused {
        let counter = match why {
            Refused::GatewayFull => &self.counters.refused_gateway_full,
            Refused::GatewayShare => &self.counters.refused_gateway_share,
            Refused::AppFull => &self.counters.refused_app_full,
            Refused::PerIp => &self.counters.refused_per_ip,
            Refused::InstancesFull => &self.counters.refused_instances_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let limit = match why {
            Refused::GatewayFull => "gateway.max_connections",
            Refused::GatewayShare => "gateway.reserved_connections_percent",
            Refused::AppFull => "max_connections",
            Refused::PerIp => "max_connections_per_ip",
            Refused::InstancesFull => "max_connections_per_instance",
        };
        self.log.event(
            None,
            EventKind::LimitHit {
                limit,
                detail: format!("refused a connection from {peer}"),
            },
        );
        why
    }
}

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
/// an instance.
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

fn release(
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

/// The connections assigned to one shard (instance) and not yet finished,
/// including those still queued for it; a draining instance waits on it.
#[derive(Default)]
pub struct ShardLoad {
    active: AtomicUsize,
    idle: tokio::sync::Notify,
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
            self.idle.notify_waiters();
        }
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

/// A live connection: held by everything that keeps it alive (its reader,
/// its writer, the pending `handle` call), it releases its place in every
/// count when the last holder is gone.
pub struct ActiveConn {
    tracker: Arc<ConnTracker>,
    app: Arc<AppAccount>,
    /// The client's key ([`client_key`]).
    client: IpAddr,
    instance_active: Arc<ShardLoad>,
    accepted_ms: u64,
    last_activity_ms: AtomicU64,
    info: ConnInfo,
    closer: Closer,
    closed: std::sync::atomic::AtomicBool,
    /// Why the client's bytes stopped early, once they did.
    receive_error: std::sync::OnceLock<ReceiveError>,
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

    fn touch(&self) {
        self.last_activity_ms
            .store(coarse_now_ms(), Ordering::Relaxed);
    }

    /// Which time limit the connection is past at `now_ms`, if any.
    fn expired(&self, now_ms: u64) -> Option<&'static str> {
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

    fn close_expired(&self, now_ms: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::AppLimits;
    use std::sync::atomic::AtomicBool;

    fn account(limits: AppLimits) -> Arc<AppAccount> {
        AppAccount::new(Arc::new(AppLog::new("test")), &limits)
    }

    fn info(id: u64) -> ConnInfo {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        ConnInfo {
            id,
            transport: crate::base::conn::Transport::Tcp,
            peer: addr,
            local: addr,
            server_name: None,
            alpn: None,
            quic: None,
        }
    }

    fn closer(flag: &Arc<AtomicBool>) -> Closer {
        let flag = flag.clone();
        Box::new(move || flag.store(true, Ordering::Relaxed))
    }

    #[test]
    fn caps_are_checked_in_order_and_released() {
        let tracker = ConnTracker::new(3);
        let app = account(AppLimits {
            max_connections: 2,
            max_connections_per_ip: 1,
            ..AppLimits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let shard = Arc::new(ShardLoad::default());
        let flag = Arc::new(AtomicBool::new(false));
        let first = admit(&tracker, &app, a)
            .unwrap()
            .finish(info(1), shard.clone(), closer(&flag));
        assert_eq!(admit(&tracker, &app, a).err(), Some(Refused::PerIp));
        let second =
            admit(&tracker, &app, b)
                .unwrap()
                .finish(info(2), shard.clone(), closer(&flag));
        assert_eq!(tracker.info(2, &app).map(|i| i.id), Some(2));
        assert!(tracker.info(2, &account(AppLimits::default())).is_none());
        assert_eq!(admit(&tracker, &app, c).err(), Some(Refused::AppFull));
        let other_app = account(AppLimits::default());
        let third = admit(&tracker, &other_app, c).unwrap();
        assert_eq!(
            admit(&tracker, &other_app, c).err(),
            Some(Refused::GatewayFull)
        );
        drop(third);
        assert_eq!(tracker.active(), 2);
        drop(first);
        assert_eq!(app.active(), 1);
        assert!(admit(&tracker, &app, a).is_ok());
        drop(second);
        assert_eq!(app.counters.refused(), 2);
        assert_eq!(other_app.counters.refused(), 1);
    }

    #[test]
    fn ipv6_clients_count_per_prefix_and_mapped_ipv4_as_ipv4() {
        let key = |ip: &str, prefix| client_key_with(ip.parse().unwrap(), prefix);
        assert_eq!(
            key("2001:db8:1:2:aaaa::1", 64),
            key("2001:db8:1:2:ffff::9", 64)
        );
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        assert_eq!(key("2001:db8:1:2::1", 48), key("2001:db8:1:3::1", 48));
        assert_ne!(key("2001:db8::1", 128), key("2001:db8::2", 128));
        assert_eq!(key("::ffff:10.0.0.1", 64), key("10.0.0.1", 64));
        assert_ne!(key("10.0.0.1", 64), key("10.0.0.2", 64));

        // One /64 is one client for the per-IP cap.
        let tracker = ConnTracker::new(100);
        let app = account(AppLimits {
            max_connections_per_ip: 2,
            ..AppLimits::default()
        });
        let a = admit(&tracker, &app, "2001:db8::1".parse().unwrap()).unwrap();
        let b = admit(&tracker, &app, "2001:db8::2".parse().unwrap()).unwrap();
        assert_eq!(
            admit(&tracker, &app, "2001:db8::ffff:3".parse().unwrap()).err(),
            Some(Refused::PerIp)
        );
        assert!(admit(&tracker, &app, "2001:db8:0:1::1".parse().unwrap()).is_ok());
        drop((a, b));
    }

    #[test]
    fn no_app_takes_the_whole_gateway() {
        let tracker = ConnTracker::with_reserve(10, 20);
        let greedy = account(AppLimits::default());
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        // Alone, an app gets 80 % of the slots and no more.
        let held: Vec<Admission> = (0..8)
            .map(|n| admit(&tracker, &greedy, ip(n)).unwrap())
            .collect();
        let held: Vec<Arc<ActiveConn>> = held
            .into_iter()
            .enumerate()
            .map(|(n, a)| {
                a.finish(
                    info(100 + n as u64),
                    Arc::new(ShardLoad::default()),
                    Box::new(|| {}),
                )
            })
            .collect();
        assert_eq!(
            admit(&tracker, &greedy, ip(9)).err(),
            Some(Refused::GatewayShare)
        );
        // Another app still gets the reserve.
        let other = account(AppLimits::default());
        let first = admit(&tracker, &other, ip(20)).unwrap();
        let second = admit(&tracker, &other, ip(21)).unwrap();
        assert_eq!(
            admit(&tracker, &other, ip(22)).err(),
            Some(Refused::GatewayFull)
        );
        drop((first, second, held));
        assert_eq!(tracker.active(), 0);
        assert_eq!(tracker.apps_holding.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_sweeper_closes_idle_and_old_connections() {
        let tracker = ConnTracker::new(10);
        let app = account(AppLimits {
            idle_timeout_secs: 1,
            max_connection_secs: 5,
            ..AppLimits::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let idle_flag = Arc::new(AtomicBool::new(false));
        let shard = Arc::new(ShardLoad::default());
        let conn = admit(&tracker, &app, ip)
            .unwrap()
            .finish(info(3), shard, closer(&idle_flag));
        let start = conn.accepted_ms;
        tracker.sweep(start + 999);
        assert!(!idle_flag.load(Ordering::Relaxed));
        tracker.sweep(start + 1000);
        assert!(idle_flag.load(Ordering::Relaxed));
        assert_eq!(app.counters.closed_idle.load(Ordering::Relaxed), 1);
        // Closed once only.
        tracker.sweep(start + 2000);
        assert_eq!(app.counters.closed_idle.load(Ordering::Relaxed), 1);
    }
}
