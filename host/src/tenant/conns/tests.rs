//! Admission, release and the sweeper, driven without sockets: explicit
//! peers, a closer that sets a flag, and the sweeper's clock as an
//! argument.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use super::client::client_key_with;
use super::*;
use crate::base::conn::{Closer, ConnInfo};
use crate::limits::AppLimits;
use crate::tenant::logs::AppLog;
use crate::tenant::memory::{GuestMemory, NoRoom};

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
    let second = admit(&tracker, &app, b)
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

#[test]
fn a_shard_is_quiet_only_without_connections_and_counts_from_the_last_one() {
    let shard = ShardLoad::default();
    shard.acquire();
    assert_eq!(shard.quiet_for(1_000_000), None);
    let released_at = crate::base::clock::coarse_now_ms();
    shard.release();
    let quiet = shard.quiet_for(released_at + 1500).unwrap();
    assert_eq!(quiet, std::time::Duration::from_millis(1500));
    // A clock read before the release never makes a negative time.
    assert_eq!(
        shard.quiet_for(0).unwrap_or_default(),
        std::time::Duration::ZERO
    );
}

#[tokio::test]
async fn memory_room_is_made_by_hibernating_idle_instances_or_refused() {
    let memory = GuestMemory::new(Some(100));
    let waking = Arc::new(ShardLoad::default());
    let idle = Arc::new(ShardLoad::default());
    memory.register(&idle);
    memory.register(&waking);
    assert!(memory.try_grow(80));
    idle.held(80);
    // The idle one is asked; it hibernates (its store dropped).
    let asked = {
        let idle = idle.clone();
        let memory_ref = &memory;
        let waiter = memory_ref.make_room(&*waking, 40);
        let hibernate = async {
            idle.hibernation_requested().await;
            idle.held_no_more(80, 80);
            memory_ref.release(80);
        };
        let (asked, ()) = tokio::join!(waiter, hibernate);
        asked
    };
    assert_eq!(asked, Ok(1));
    // Nothing idle left to hibernate: refused at once, with the figures.
    assert!(memory.try_grow(90));
    let refused = memory.make_room(&*waking, 40).await;
    assert_eq!(
        refused,
        Err(NoRoom {
            need: 40,
            used: 90,
            ceiling: 100
        })
    );
}
